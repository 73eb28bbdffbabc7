"""Synthetic detection sources of VLTDet: UrbanSyn, Synscapes (8 thing classes) and Sim10k (car only).

Registered: ``urbansyn_det_train``, ``synscapes_det_train``, ``sim10k_car_train``.

- UrbanSyn: ``urbansyn/rgb/rgb_<n>.png`` with ``urbansyn/panoptic/panoptic_<n>.png``, read as Cityscapes-encoded
  instance ids (``label_id * 1000 + k``); all 7,539 images train.
- Synscapes: ``synscapes/img/rgb/<n>.png`` (1440x720) with ``img/class/<n>.png`` (Cityscapes label ids) and
  ``img/instance/<n>.png`` (instance = R + 256 G + 256² B); all 25,000 images train.
- Sim10k: Pascal VOC layout ``sim10k/VOC2012/JPEGImages/<n>.jpg`` + ``Annotations/<n>.xml``, the 10,000 images of
  ``ImageSets/Main/trainval.txt`` (every XML when the list is absent); "car" boxes only.
"""
import glob
import os
import xml.etree.ElementTree as ET
from typing import List, Tuple

import numpy as np
from detectron2.structures import BoxMode
from PIL import Image

from ..instance_boxes import CITYSCAPES_LABEL_ID_TO_THING, SIM10K_TO_CAR, instances_from_label_and_instance_maps
from .det_common import README, datasets_root, load_label_files, register_det_dataset, require_dir

__all__ = ["load_urbansyn_det", "load_synscapes_det", "load_sim10k_car", "sim10k_annotations"]


def load_urbansyn_det() -> list:
    root = os.path.join(datasets_root(), "urbansyn")
    rgb_dir = require_dir(os.path.join(root, "rgb"), "urbansyn_det_train", "Detection: UrbanSyn")
    panoptic_dir = require_dir(os.path.join(root, "panoptic"), "urbansyn_det_train", "Detection: UrbanSyn")
    images = sorted(glob.glob(os.path.join(rgb_dir, "rgb_*.png")))
    if not images:
        raise FileNotFoundError(
            f"urbansyn_det_train: no rgb_*.png in '{rgb_dir}' (see {README}, 'Detection: UrbanSyn')"
        )
    items = []
    for image in images:
        number = os.path.basename(image)[len("rgb_"):]
        ids = os.path.join(panoptic_dir, "panoptic_" + number)
        if not os.path.isfile(ids):
            raise FileNotFoundError(f"urbansyn_det_train: labels '{ids}' of '{image}' not found")
        items.append((image, (ids,)))
    return load_label_files(items)


def synscapes_annotations(files: Tuple[str, str], with_masks: bool) -> Tuple[int, int, List[dict]]:
    """(height, width, annotations) from a Synscapes class PNG and RGB-encoded instance PNG."""
    with Image.open(files[0]) as img:
        labels = np.asarray(img)
    with Image.open(files[1]) as img:
        rgb = np.asarray(img.convert("RGB")).astype(np.int64)
    instances = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    annotations = instances_from_label_and_instance_maps(labels, instances, CITYSCAPES_LABEL_ID_TO_THING, with_masks)
    return labels.shape[0], labels.shape[1], annotations


def load_synscapes_det() -> list:
    img = require_dir(os.path.join(datasets_root(), "synscapes", "img"), "synscapes_det_train", "Detection: Synscapes")
    images = sorted(glob.glob(os.path.join(img, "rgb", "*.png")), key=lambda p: int(os.path.basename(p)[:-4]))
    if not images:
        raise FileNotFoundError(f"synscapes_det_train: no images in '{img}/rgb' (see {README}, 'Detection: Synscapes')")
    items = [
        (p, (os.path.join(img, "class", os.path.basename(p)), os.path.join(img, "instance", os.path.basename(p))))
        for p in images
    ]
    return load_label_files(items, read_annotations=synscapes_annotations)


def sim10k_annotations(xml_file: str) -> Tuple[int, int, List[dict]]:
    """(height, width, car annotations) of one Sim10k VOC XML (VOC's 1-based corners -> pixel edges)."""
    tree = ET.parse(xml_file)
    size = tree.find("size")
    height, width = int(size.find("height").text), int(size.find("width").text)
    annotations = []
    for obj in tree.findall("object"):
        category = SIM10K_TO_CAR.get(obj.find("name").text.strip().lower())
        if category is None:
            continue
        box = obj.find("bndbox")
        x0, y0, x1, y1 = (float(box.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
        annotations.append({
            "bbox": [x0 - 1.0, y0 - 1.0, x1, y1], "bbox_mode": BoxMode.XYXY_ABS, "category_id": category, "iscrowd": 0
        })
    return height, width, annotations


def load_sim10k_car() -> list:
    voc = require_dir(os.path.join(datasets_root(), "sim10k", "VOC2012"), "sim10k_car_train", "Detection: Sim10k")
    split_file = os.path.join(voc, "ImageSets", "Main", "trainval.txt")
    if os.path.isfile(split_file):
        with open(split_file) as f:
            stems = [line.strip() for line in f if line.strip()]
    else:
        stems = sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(voc, "Annotations", "*.xml")))
    if not stems:
        raise FileNotFoundError(
            f"sim10k_car_train: no annotations in '{voc}/Annotations' (see {README}, 'Detection: Sim10k')"
        )
    items = [
        (os.path.join(voc, "JPEGImages", stem + ".jpg"), (os.path.join(voc, "Annotations", stem + ".xml"),))
        for stem in stems
    ]
    return load_label_files(items, read_annotations=_sim10k_label_file, with_masks=False)


def _sim10k_label_file(files: Tuple[str], with_masks: bool) -> Tuple[int, int, List[dict]]:
    return sim10k_annotations(files[0])


register_det_dataset("urbansyn_det_train", load_urbansyn_det, dataset_folder="urbansyn")
register_det_dataset("synscapes_det_train", load_synscapes_det, dataset_folder="synscapes")
register_det_dataset("sim10k_car_train", load_sim10k_car, car_only=True, dataset_folder="sim10k")
