"""BDD100K detection (1280x720): val (10,000 images) as a VLTDet target, train (70,000) as a real-to-real source.

Registered: ``bdd100k_det_val``, ``bdd100k_det_train``. Labels: ``bdd100k/labels/det_20/det_<split>.json`` (2020
release) or ``bdd100k/labels/bdd100k_labels_images_<split>.json`` (2018 release); images
``bdd100k/images/100k/<split>/*.jpg``. Classes
mapped by :data:`~vlt.data.instance_boxes.BDD100K_DET_TO_THING` (traffic lights / signs and "other" classes dropped).
"""
import json
import os
from functools import partial

from detectron2.structures import BoxMode

from ..instance_boxes import BDD100K_DET_TO_THING, category_from_name
from .det_common import README, datasets_root, register_det_dataset, require_dir

__all__ = ["load_bdd100k_det", "bdd100k_annotations"]

SECTION = "Detection: BDD100K"
LABEL_FILES = ("labels/det_20/det_{split}.json", "labels/bdd100k_labels_images_{split}.json")
HEIGHT, WIDTH = 720, 1280  # every BDD100K image


def bdd100k_annotations(labels: list) -> list:
    """Detectron2 annotations of one BDD100K frame's ``labels`` (entries without ``box2d`` are skipped)."""
    annotations = []
    for label in labels or ():
        category = category_from_name(label.get("category", ""), BDD100K_DET_TO_THING)
        box = label.get("box2d")
        if category is None or box is None:
            continue
        annotations.append({
            "bbox": [float(box["x1"]), float(box["y1"]), float(box["x2"]), float(box["y2"])],
            "bbox_mode": BoxMode.XYXY_ABS, "category_id": category, "iscrowd": 0,
        })
    return annotations


def load_bdd100k_det(split: str = "val") -> list:
    root = os.path.join(datasets_root(), "bdd100k")
    image_dir = require_dir(os.path.join(root, "images", "100k", split), f"bdd100k_det_{split}", SECTION)
    candidates = [os.path.join(root, f.format(split=split)) for f in LABEL_FILES]
    label_file = next((f for f in candidates if os.path.isfile(f)), None)
    if label_file is None:
        raise FileNotFoundError(f"bdd100k_det_{split}: none of {candidates} exists (see {README}, '{SECTION}')")
    with open(label_file) as f:
        frames = json.load(f)
    return [
        {
            "file_name": os.path.join(image_dir, frame["name"]), "height": HEIGHT, "width": WIDTH,
            "image_id": os.path.splitext(frame["name"])[0], "annotations": bdd100k_annotations(frame.get("labels")),
        }
        for frame in frames
    ]


for _split in ("train", "val"):
    register_det_dataset(f"bdd100k_det_{_split}", partial(load_bdd100k_det, _split), dataset_folder="bdd100k")
