"""Shared pieces of VLTDet's detection datasets: root folder, registration, loaders of instance-label layouts.

Registration reads no file: :func:`register_det_dataset` puts a loader in Detectron2's ``DatasetCatalog`` that
runs when the dataset is first used, and fails then with the missing path and the README section to read.
Dataset dicts are Detectron2's standard ones: ``file_name, height, width, image_id, annotations`` with
``XYXY_ABS`` boxes and ``category_id`` in the dataset's ``thing_classes`` (VLTDet's eight Cityscapes things, or
``["car"]`` for the Sim10k benchmark).
"""
import glob
import hashlib
import json
import logging
import os
import pickle
import time
from multiprocessing import Pool
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tqdm
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image

from ...utils.atomic_io import atomic_write
from ...utils.errors import OutputError
from ..instance_boxes import (
    CAR_CLASSES,
    CITYSCAPES_LABEL_ID_TO_THING,
    THING_CLASSES,
    THING_COLORS,
    instances_from_cityscapes_ids,
    restrict_to_classes,
)
from .common import datasets_root
from .common import require_dir as _require_dir

README = "datasets/README_detection.md"  # its "Detection: ..." sections

__all__ = [
    "DET_DATASETS", "README", "datasets_root", "register_det_dataset", "require_dir", "load_label_files",
    "read_cityscapes_ids", "annotations_from_cityscapes_ids_file", "cityscapes_style_pairs", "car_only",
    "load_coco_by_name", "DETECTION_EVALUATOR_TYPES", "is_detection_dataset", "label_cache_dir",
]

logger = logging.getLogger(__name__)

# Names registered by register_det_dataset, in order (for tools/check_datasets.py and docs).
DET_DATASETS: List[str] = []
# Car index in THING_CLASSES -> 0: the Sim10k -> Cityscapes benchmark evaluates the car class only.
CAR_FROM_THINGS = {THING_CLASSES.index("car"): 0}


# Metadata evaluator_type of VLT's detection datasets: COCO AP, or COCO AP + Pascal VOC AP50 (Diverse Weather).
DETECTION_EVALUATOR_TYPES = ("coco", "pascal_voc")


def is_detection_dataset(name: str) -> bool:
    """Whether the registered dataset ``name`` is a box-detection set (scored by vlt.evaluation.det_evaluation)."""
    return MetadataCatalog.get(name).get("evaluator_type", None) in DETECTION_EVALUATOR_TYPES


def register_det_dataset(
    name: str,
    loader: Callable[[], List[dict]],
    car_only: bool = False,
    classes: Optional[Sequence[str]] = None,
    colors: Optional[Sequence[Tuple[int, int, int]]] = None,
    evaluator_type: str = "coco",
    **metadata,
) -> None:
    """Register a detection dataset (lazy ``loader``) with the VLTDet class set (or ``classes`` / ``colors``, e.g.
    the Diverse Weather set's) and COCO evaluation (``evaluator_type`` "pascal_voc": COCO + VOC AP50); ``metadata``
    adds e.g. ``dataset_folder`` (its folder under the datasets root, as the segmentation datasets)."""
    if evaluator_type not in DETECTION_EVALUATOR_TYPES:
        raise ValueError(f"{name}: evaluator_type must be one of {DETECTION_EVALUATOR_TYPES}, got {evaluator_type!r}")
    if classes is None:
        classes, colors = (CAR_CLASSES, [THING_COLORS[THING_CLASSES.index("car")]]) if car_only else (
            THING_CLASSES, THING_COLORS
        )
    DatasetCatalog.register(name, loader)
    DET_DATASETS.append(name)
    MetadataCatalog.get(name).set(
        thing_classes=list(classes), thing_colors=list(colors), evaluator_type=evaluator_type, **metadata
    )


def require_dir(path: str, dataset: str, section: str, what: str = "folder") -> str:
    """``path`` if it is a folder; else FileNotFoundError naming the dataset, the path and the section of
    datasets/README_detection.md."""
    return _require_dir(path, dataset, section, what, readme=README)


def car_only(dicts: List[dict]) -> List[dict]:
    """The same images with only their car boxes (category 0 of ``CAR_CLASSES``)."""
    return [{**d, "annotations": restrict_to_classes(d["annotations"], CAR_FROM_THINGS)} for d in dicts]


# ------------------------------------------------------------------------------------ instance-label layouts
def read_cityscapes_ids(ids_file: str) -> np.ndarray:
    """A Cityscapes-encoded instance id PNG as [H, W] int array (single channel expected)."""
    with Image.open(ids_file) as img:
        ids = np.asarray(img)
    if ids.ndim != 2:
        raise ValueError(f"{ids_file}: expected a single-channel Cityscapes instance id PNG, got shape {ids.shape}")
    return ids


def annotations_from_cityscapes_ids_file(files: Tuple[str, ...], with_masks: bool) -> Tuple[int, int, List[dict]]:
    """(height, width, annotations) of one ``*_instanceIds.png`` (``files`` = (ids file,))."""
    ids = read_cityscapes_ids(files[0])
    return ids.shape[0], ids.shape[1], instances_from_cityscapes_ids(ids, CITYSCAPES_LABEL_ID_TO_THING, with_masks)


def _load_one(args) -> dict:
    image_file, label_files, read_annotations, with_masks = args
    height, width, annotations = read_annotations(label_files, with_masks)
    return {"file_name": image_file, "height": int(height), "width": int(width), "annotations": annotations}


def label_cache_dir() -> str:
    """Folder of the label caches: $VLT_CACHE_DIR, else ~/.cache/vlt (read at call time)."""
    return os.path.expanduser(os.getenv("VLT_CACHE_DIR", os.path.join("~", ".cache", "vlt")))


def _cache_path(args: Sequence[tuple], image_suffix: str) -> str:
    """Cache file of one load: keyed by the reader, its options, and the path, size and mtime of every label
    file (a changed, added or removed file gives another key, so a stale cache is never read)."""
    digest = hashlib.sha256()
    reader = args[0][2] if args else None
    digest.update(f"{getattr(reader, '__module__', '')}.{getattr(reader, '__qualname__', '')}|{image_suffix}".encode())
    for image, label_files, _, with_masks in args:
        digest.update(f"|{image}|{int(with_masks)}".encode())
        for path in label_files:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"Label file '{path}' of image '{image}' not found (see {README})")
            stat = os.stat(path)
            digest.update(f"|{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return os.path.join(label_cache_dir(), "det_labels", digest.hexdigest()[:32] + ".pkl")


def load_label_files(
    items: Sequence[Tuple[str, Tuple[str, ...]]],
    read_annotations: Callable[[Tuple[str, ...], bool], Tuple[int, int, List[dict]]] = (
        annotations_from_cityscapes_ids_file
    ),
    with_masks: bool = True,
    workers: int = 0,
    image_suffix: str = "",
    cache: bool = True,
) -> List[dict]:
    """Dataset dicts from (image file, label files) items; ``image_id`` = image file name without
    ``image_suffix`` (e.g. "_leftImg8bit.png"; default: without its extension).

    ``read_annotations(label_files, with_masks) -> (height, width, annotations)`` reads one image's labels (a
    module-level function: large datasets are read by a process pool, ``workers`` 0 = up to 8 processes for
    more than 64 images), with a progress bar. The result is cached (``cache``) in :func:`label_cache_dir` under a
    key of every label file's path, size and modification time, so the next start reads one file instead of
    thousands; changing any label file makes a new key.
    """
    args = [(image, tuple(files), read_annotations, with_masks) for image, files in items]
    cache_file = _cache_path(args, image_suffix) if cache else None
    if cache_file and os.path.isfile(cache_file):
        try:
            with open(cache_file, "rb") as f:
                dicts = pickle.load(f)
            logger.info(f"{len(dicts)} images' labels read from the cache {cache_file}")
            return dicts
        except (OSError, EOFError, pickle.UnpicklingError) as e:
            logger.warning(f"Label cache {cache_file} unreadable ({e}): reading the label files again")
    if workers == 0:
        workers = min(8, os.cpu_count() or 1) if len(args) > 64 else 1
    start = time.perf_counter()
    progress = dict(total=len(args), desc="Reading label files", unit="image", disable=len(args) < 100,
                    mininterval=2.0)
    if workers > 1:
        with Pool(workers) as pool:
            dicts = list(tqdm.tqdm(pool.imap(_load_one, args, chunksize=16), **progress))
    else:
        dicts = [_load_one(a) for a in tqdm.tqdm(args, **progress)]
    for d in dicts:
        name = os.path.basename(d["file_name"])
        d["image_id"] = name[: -len(image_suffix)] if image_suffix and name.endswith(image_suffix) else (
            os.path.splitext(name)[0]
        )
    seconds = time.perf_counter() - start
    if cache_file:
        try:  # atomic: a concurrent reader sees the whole file or none
            with atomic_write(cache_file, "wb") as f:
                pickle.dump(dicts, f, protocol=pickle.HIGHEST_PROTOCOL)
            logger.info(f"Read the labels of {len(dicts)} images in {seconds:.1f} s; cached to {cache_file}")
        except OutputError as e:  # the labels are read; only the next start is slower (set VLT_CACHE_DIR)
            logger.warning(f"Read the labels of {len(dicts)} images in {seconds:.1f} s; not cached: {e}")
    return dicts


def cityscapes_style_pairs(
    image_dir: str, gt_dir: str, image_suffix: str, ids_suffix: str, city: str = "*"
) -> List[Tuple[str, Tuple[str]]]:
    """(image, instance ids) pairs of a Cityscapes layout: ``<image_dir>/<city>/<stem><image_suffix>`` and
    ``<gt_dir>/<city>/<stem><ids_suffix>`` (every city, or the one named); a missing label file is an error."""
    images = sorted(glob.glob(os.path.join(image_dir, city, "*" + image_suffix)))
    if not images:
        raise FileNotFoundError(f"No '*{image_suffix}' images under '{image_dir}/<city>/' (see {README})")
    pairs = []
    for image in images:
        city = os.path.basename(os.path.dirname(image))
        stem = os.path.basename(image)[: -len(image_suffix)]
        ids = os.path.join(gt_dir, city, stem + ids_suffix)
        if not os.path.isfile(ids):
            raise FileNotFoundError(f"Instance labels '{ids}' of image '{image}' not found (see {README})")
        pairs.append((image, (ids,)))
    return pairs



def load_coco_by_name(
    json_file: str, image_root: str, name_to_category: Mapping[str, int], dataset: str, section: str
) -> List[dict]:
    """Dataset dicts from a COCO instances JSON whose categories are mapped by *name* (e.g. ACDC's
    ``instancesonly_*_gt_detection.json`` with Cityscapes names); unmapped categories are dropped."""
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"{dataset}: annotation file '{json_file}' not found (see {README}, '{section}')")
    with open(json_file) as f:
        coco = json.load(f)
    categories = {c["id"]: name_to_category.get(c["name"].strip().lower()) for c in coco["categories"]}
    by_image: dict = {img["id"]: [] for img in coco["images"]}
    for a in coco["annotations"]:
        category = categories.get(a["category_id"])
        if category is None:
            continue
        annotation = {
            "bbox": list(map(float, a["bbox"])), "bbox_mode": BoxMode.XYWH_ABS, "category_id": category,
            "iscrowd": int(a.get("iscrowd", 0)),
        }
        if a.get("segmentation"):
            annotation["segmentation"] = a["segmentation"]
        by_image[a["image_id"]].append(annotation)
    dicts = [
        {
            "file_name": os.path.join(image_root, img["file_name"]), "height": int(img["height"]),
            "width": int(img["width"]), "image_id": img["id"], "annotations": by_image[img["id"]],
        }
        for img in coco["images"]
    ]
    if dicts and not os.path.isfile(dicts[0]["file_name"]):
        raise FileNotFoundError(
            f"{dataset}: image '{dicts[0]['file_name']}' of '{json_file}' not found (see {README}, '{section}')"
        )
    return dicts
