"""Cityscapes and Foggy Cityscapes as VLTDet detection targets (boxes from gtFine ``*_instanceIds.png``).

Registered: ``cityscapes_det_train``, ``cityscapes_det_val`` (8 thing classes), ``cityscapes_car_val`` (car only, the
Sim10k -> Cityscapes benchmark), ``foggy_cityscapes_det_val`` (Foggy Cityscapes, fog density beta = 0.02 as the
usual domain-adaptive detection benchmark, labels of Cityscapes val).
"""
import os
from functools import partial

from .det_common import (
    car_only,
    cityscapes_style_pairs,
    datasets_root,
    load_label_files,
    register_det_dataset,
    require_dir,
)

__all__ = ["load_cityscapes_det", "load_foggy_cityscapes_det"]

SECTION = "Detection: Cityscapes / Foggy Cityscapes"
FOGGY_BETA = "0.02"


def load_cityscapes_det(split: str, with_masks: bool = True) -> list:
    """``cityscapes/leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with
    ``cityscapes/gtFine/<split>/<city>/*_gtFine_instanceIds.png``."""
    root = os.path.join(datasets_root(), "cityscapes")
    image_dir = require_dir(os.path.join(root, "leftImg8bit", split), f"cityscapes_det_{split}", SECTION)
    gt_dir = require_dir(os.path.join(root, "gtFine", split), f"cityscapes_det_{split}", SECTION)
    pairs = cityscapes_style_pairs(image_dir, gt_dir, "_leftImg8bit.png", "_gtFine_instanceIds.png")
    return load_label_files(pairs, with_masks=with_masks, image_suffix="_leftImg8bit.png")


def load_foggy_cityscapes_det(split: str, beta: str = FOGGY_BETA, with_masks: bool = True) -> list:
    """``foggy_cityscapes/leftImg8bit_foggy/<split>/<city>/*_leftImg8bit_foggy_beta_<beta>.png`` with the labels of
    ``cityscapes/gtFine/<split>``."""
    name = f"foggy_cityscapes_det_{split}"
    foggy_dir = os.path.join(datasets_root(), "foggy_cityscapes", "leftImg8bit_foggy", split)
    image_dir = require_dir(foggy_dir, name, SECTION)
    gt_dir = require_dir(os.path.join(datasets_root(), "cityscapes", "gtFine", split), name, SECTION)
    suffix = f"_leftImg8bit_foggy_beta_{beta}.png"
    pairs = cityscapes_style_pairs(image_dir, gt_dir, suffix, "_gtFine_instanceIds.png")
    return load_label_files(pairs, with_masks=with_masks, image_suffix=suffix)


def _load_car_val() -> list:
    return car_only(load_cityscapes_det("val", with_masks=False))


for _split in ("train", "val"):
    register_det_dataset(f"cityscapes_det_{_split}", partial(load_cityscapes_det, _split), dataset_folder="cityscapes")
register_det_dataset(
    "foggy_cityscapes_det_val", partial(load_foggy_cityscapes_det, "val"), dataset_folder="foggy_cityscapes"
)
register_det_dataset("cityscapes_car_val", _load_car_val, car_only=True, dataset_folder="cityscapes")
