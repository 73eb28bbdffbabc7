"""The VLT demo benchmark (data/demo_generator.py) as a detection benchmark: boxes and masks of its thing classes
from the generated ``*_gtFine_instanceIds.png`` (Cityscapes encoding).

Registered: ``vlt_demo_det_source_{train,val}`` (source domain) and ``vlt_demo_det_<domain>_val`` for each shifted
target domain (the source val scenes re-rendered; same boxes). Build the data with
``python tools/generate_demo_data.py --root datasets/vlt_demo``.
"""
import os
from functools import partial

from ..demo_generator import DEMO_TARGET_DOMAINS
from .det_common import cityscapes_style_pairs, datasets_root, load_label_files, register_det_dataset, require_dir

__all__ = ["DEMO_DET_DATASETS", "load_vlt_demo_det"]

SECTION = "VLT demo benchmark"
# name -> (split, domain)
DEMO_DET_DATASETS = {
    "vlt_demo_det_source_train": ("train", "source"),
    "vlt_demo_det_source_val": ("val", "source"),
    **{f"vlt_demo_det_{domain}_val": ("val", domain) for domain in DEMO_TARGET_DOMAINS},
}


def load_vlt_demo_det(split: str, domain: str, root: str = "") -> list:
    """Dataset dicts (boxes + RLE masks) of one split / domain under ``root`` ($DETECTRON2_DATASETS/vlt_demo)."""
    root = root or os.path.join(datasets_root(), "vlt_demo")
    name = f"vlt_demo_det_{domain}_{split}"
    hint = f"run: python tools/generate_demo_data.py --root {root}"
    image_dir = require_dir(os.path.join(root, "leftImg8bit", split), name, SECTION, f"image folder ({hint})")
    gt_dir = require_dir(os.path.join(root, "gtFine", split), name, SECTION, f"label folder ({hint})")
    pairs = cityscapes_style_pairs(image_dir, gt_dir, "_leftImg8bit.png", "_gtFine_instanceIds.png", city=domain)
    return load_label_files(pairs, with_masks=True, workers=1, image_suffix="_leftImg8bit.png")


for _name, (_split, _domain) in DEMO_DET_DATASETS.items():
    register_det_dataset(_name, partial(load_vlt_demo_det, _split, _domain), domain=_domain, dataset_folder="vlt_demo")
