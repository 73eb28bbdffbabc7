"""ACDC (fog / night / rain / snow) as VLTDet targets and real-to-real source, from ACDC's COCO-format detection labels.

Registered: ``acdc_det_<condition>_{train,val}`` for each condition and ``acdc_det_{train,val}`` (all four). Labels:
``acdc/gt_detection/<condition>/instancesonly_<condition>_<split>_gt_detection.json`` (``gt_detection_trainval.zip``),
image paths in them relative to ``acdc/rgb_anon/``; categories mapped by their Cityscapes names.
"""
import os
from functools import partial

from ..instance_boxes import CITYSCAPES_LABEL_ID_TO_THING, CITYSCAPES_NAME_TO_LABEL_ID
from .det_common import datasets_root, load_coco_by_name, register_det_dataset

__all__ = ["ACDC_CONDITIONS", "load_acdc_det"]

SECTION = "Detection: ACDC"
ACDC_CONDITIONS = ("fog", "night", "rain", "snow")
NAME_TO_THING = {
    name: CITYSCAPES_LABEL_ID_TO_THING[label] for name, label in CITYSCAPES_NAME_TO_LABEL_ID.items()
    if label in CITYSCAPES_LABEL_ID_TO_THING
}


def load_acdc_det(condition: str, split: str = "val") -> list:
    root = os.path.join(datasets_root(), "acdc")
    json_file = os.path.join(root, "gt_detection", condition, f"instancesonly_{condition}_{split}_gt_detection.json")
    dicts = load_coco_by_name(json_file, os.path.join(root, "rgb_anon"), NAME_TO_THING, f"acdc_det_{condition}_{split}",
                              SECTION)
    for d in dicts:
        d["image_id"] = f"{condition}/{d['image_id']}"  # ids are unique per condition file only
    return dicts


def _load_all(split: str) -> list:
    return [d for condition in ACDC_CONDITIONS for d in load_acdc_det(condition, split)]


for _split in ("train", "val"):
    for _condition in ACDC_CONDITIONS:
        register_det_dataset(
            f"acdc_det_{_condition}_{_split}", partial(load_acdc_det, _condition, _split), condition=_condition,
            dataset_folder="acdc",
        )
    register_det_dataset(f"acdc_det_{_split}", partial(_load_all, _split), dataset_folder="acdc")
