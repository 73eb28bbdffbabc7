"""Detection annotations from instance labels, and each dataset's mapping to VLTDet's class set.

VLTDet's classes are the eight Cityscapes "thing" classes (VLT's own synthetic-to-real detection benchmark, see
datasets/README_detection.md). Every source and target dataset maps its own labels to them with one table below.

Instance labels come in three shapes, all reduced to a per-pixel (label id, instance id) pair:

- Cityscapes ``*_instanceIds.png`` (also ACDC, the VLT demo benchmark): ``label_id * 1000 + k`` for an instance
  of a thing class, a plain ``label_id`` (< 1000) for a crowd / group region ("car group");
- Cityscapes ``*_polygons.json``: polygons drawn back to front, rasterized in order into the same id map (what
  cityscapesScripts' ``json2instanceImg`` does), so an object is the part that stays visible;
- a class map + a separate instance map (Synscapes: instance = R + 256·G + 256²·B; 0 = no instance).

Boxes are in Detectron2's ``XYXY_ABS`` mode on pixel edges: an instance covering pixel columns ``x0..x1`` gets
``x0, x1 + 1`` (its full area; Cityscapes' polygon bounds follow the same convention).
"""
import json
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
from detectron2.structures import BoxMode
from PIL import Image, ImageDraw
from pycocotools import mask as mask_util
from scipy import ndimage

from .cityscapes_classes import IGNORE_LABEL, LABELS

__all__ = [
    "THING_CLASSES",
    "THING_COLORS",
    "CAR_CLASSES",
    "CITYSCAPES_LABEL_ID_TO_THING",
    "CITYSCAPES_NAME_TO_LABEL_ID",
    "BDD100K_DET_TO_THING",
    "SIM10K_TO_CAR",
    "category_from_name",
    "instances_from_cityscapes_ids",
    "instances_from_label_and_instance_maps",
    "cityscapes_polygons_to_instance_ids",
    "instances_from_cityscapes_polygons",
    "restrict_to_classes",
]

# VLTDet's class set: the Cityscapes "thing" classes evaluated by the Cityscapes instance benchmark (instances and a
# train id; caravan and trailer have instances but no train id), in label-id order, with Cityscapes' colours.
_THINGS = [label for label in LABELS if label.has_instances and label.train_id != IGNORE_LABEL]
THING_CLASSES = [label.name for label in _THINGS]
THING_COLORS = [tuple(label.color) for label in _THINGS]
# Sim10k -> Cityscapes: the car class only (the classic benchmark reports AP50 on car).
CAR_CLASSES = ["car"]

# Cityscapes label ids (also Synscapes, UrbanSyn, ACDC, which use Cityscapes' label definition) -> thing index.
# Caravan (29) and trailer (30) are not mapped: ignored, as in Cityscapes' instance evaluation.
CITYSCAPES_LABEL_ID_TO_THING: Dict[int, int] = {label.id: index for index, label in enumerate(_THINGS)}
# Cityscapes polygon labels with instances -> label id (a "<class>group" label is a crowd region of that class).
CITYSCAPES_NAME_TO_LABEL_ID: Dict[str, int] = {label.name: label.id for label in LABELS if label.has_instances}
# BDD100K detection categories -> thing index: the 2020 labels (det_20: "pedestrian", "motorcycle", ...) and the
# 2018 labels ("person", "motor", "bike"). "traffic light", "traffic sign", "other person", "other vehicle" and
# "trailer" are not Cityscapes thing classes: not mapped.
BDD100K_DET_TO_THING: Dict[str, int] = {
    "pedestrian": 0, "person": 0, "rider": 1, "car": 2, "truck": 3, "bus": 4, "train": 5,
    "motorcycle": 6, "motor": 6, "bicycle": 7, "bike": 7,
}
# Sim10k (Pascal VOC XML) object names -> index in CAR_CLASSES. Its "motorbike" and "person" boxes are not used.
SIM10K_TO_CAR: Dict[str, int] = {"car": 0}


def category_from_name(name: str, table: Mapping[str, int]) -> Optional[int]:
    """The category index of a dataset's label ``name`` in ``table`` (case and spaces ignored), or None."""
    return table.get(name.strip().lower())


def _rle(mask: np.ndarray) -> dict:
    """COCO RLE of a boolean [H, W] mask, JSON-ready (counts as str)."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def instances_from_label_and_instance_maps(
    label_ids: np.ndarray,
    instance_ids: np.ndarray,
    label_to_category: Mapping[int, int],
    with_masks: bool = False,
    min_area: int = 1,
) -> List[dict]:
    """Detectron2 annotations, one per (label id, instance id) segment of a mapped label.

    Args:
        label_ids: [H, W] integer class map (the dataset's own label ids).
        instance_ids: [H, W] integer instance map; 0 = no instance: such pixels of a mapped class form one crowd
            region per class (``iscrowd`` 1; COCO evaluation ignores detections on it).
        label_to_category: dataset label id -> VLTDet category index; other labels are ignored.
        with_masks: also add ``segmentation`` (COCO RLE of the segment).
        min_area: segments with fewer pixels are dropped.

    Returns:
        [{"bbox": [x0, y0, x1, y1], "bbox_mode": XYXY_ABS, "category_id", "iscrowd", ("segmentation")}],
        ordered by (label id, instance id).
    """
    if label_ids.shape != instance_ids.shape or label_ids.ndim != 2:
        raise ValueError(
            f"label and instance maps must be [H, W] of one shape, got {label_ids.shape} and {instance_ids.shape}"
        )
    lut = np.full(int(max(label_to_category, default=0)) + 1, -1, dtype=np.int64)
    for label, category in label_to_category.items():
        lut[label] = category
    labels = label_ids.astype(np.int64)
    in_table = (labels >= 0) & (labels < lut.size)
    categories = np.where(in_table, lut[np.clip(labels, 0, lut.size - 1)], -1)  # [H, W]
    keep = categories >= 0
    if not keep.any():
        return []
    # One key per (label, instance) segment; segment index + 1 per pixel, 0 = not a mapped thing.
    num_instance_ids = int(instance_ids.max()) + 1
    keys = labels * num_instance_ids + instance_ids.astype(np.int64)
    unique_keys, inverse = np.unique(keys[keep], return_inverse=True)
    segment_map = np.zeros(labels.shape, dtype=np.int32)
    segment_map[keep] = inverse.astype(np.int32) + 1
    areas = np.bincount(inverse, minlength=len(unique_keys))
    slices = ndimage.find_objects(segment_map, max_label=len(unique_keys))
    segment_labels, segment_instances = np.divmod(unique_keys, num_instance_ids)
    annotations = []
    for index, ((y, x), area) in enumerate(zip(slices, areas)):
        if area < min_area:
            continue
        annotation = {
            "bbox": [float(x.start), float(y.start), float(x.stop), float(y.stop)],
            "bbox_mode": BoxMode.XYXY_ABS,
            "category_id": int(lut[segment_labels[index]]),
            "iscrowd": int(segment_instances[index] == 0),
        }
        if with_masks:
            mask = np.zeros(labels.shape, dtype=bool)
            mask[y, x] = segment_map[y, x] == index + 1
            annotation["segmentation"] = _rle(mask)
        annotations.append(annotation)
    return annotations


def instances_from_cityscapes_ids(
    ids: np.ndarray,
    label_to_category: Mapping[int, int] = CITYSCAPES_LABEL_ID_TO_THING,
    with_masks: bool = False,
    min_area: int = 1,
) -> List[dict]:
    """Annotations from a Cityscapes-encoded instance id map (``label_id * 1000 + k``; < 1000: crowd region)."""
    ids = ids.astype(np.int64)
    is_instance = ids >= 1000
    labels = np.where(is_instance, ids // 1000, ids)
    instances = np.where(is_instance, ids, 0)
    return instances_from_label_and_instance_maps(labels, instances, label_to_category, with_masks, min_area)


def cityscapes_polygons_to_instance_ids(polygons: Mapping) -> np.ndarray:
    """Rasterize a Cityscapes ``*_polygons.json`` (dict) into a Cityscapes-encoded instance id map [H, W].

    Objects are drawn in file order (back to front) with PIL, as cityscapesScripts' ``json2instanceImg``, so later
    objects occlude earlier ones and the map equals the released ``*_instanceIds.png`` for thing classes. Things get
    ``label_id * 1000 + k`` (k counted per label from 0), "<class>group" objects their label id (crowd), every
    other object 0 (only thing classes matter here; use cityscapesScripts for full label maps).
    """
    canvas = Image.new("I", (int(polygons["imgWidth"]), int(polygons["imgHeight"])), 0)
    draw = ImageDraw.Draw(canvas)
    counts: Dict[int, int] = {}
    for obj in polygons["objects"]:
        if obj.get("deleted"):
            continue
        name = obj["label"]
        group = name.endswith("group")
        label = CITYSCAPES_NAME_TO_LABEL_ID.get(name[: -len("group")] if group else name)
        if label is None:
            value = 0
        elif group:
            value = label
        else:
            value = label * 1000 + counts.get(label, 0)
            counts[label] = counts.get(label, 0) + 1
        points = [tuple(p) for p in obj["polygon"]]
        if len(points) >= 3:
            draw.polygon(points, fill=int(value))
    return np.asarray(canvas, dtype=np.int32)


def instances_from_cityscapes_polygons(
    polygons_file: str,
    label_to_category: Mapping[int, int] = CITYSCAPES_LABEL_ID_TO_THING,
    with_masks: bool = False,
    min_area: int = 1,
) -> List[dict]:
    """Annotations from a Cityscapes ``*_polygons.json`` file (visible parts, see
    :func:`cityscapes_polygons_to_instance_ids`)."""
    with open(polygons_file) as f:
        try:
            polygons = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{polygons_file}: not a Cityscapes polygons JSON ({e})") from e
    return instances_from_cityscapes_ids(
        cityscapes_polygons_to_instance_ids(polygons), label_to_category, with_masks, min_area
    )


def restrict_to_classes(annotations: Sequence[dict], keep: Mapping[int, int]) -> List[dict]:
    """Keep annotations whose ``category_id`` is in ``keep`` and renumber them (e.g. thing classes -> car only)."""
    return [{**a, "category_id": keep[a["category_id"]]} for a in annotations if a["category_id"] in keep]
