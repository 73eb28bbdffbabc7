"""VLT demo benchmark: procedurally rendered street scenes in the Cityscapes layout (data/demo_generator.py).

Build it with ``python tools/generate_demo_data.py --root datasets/vlt_demo`` (seconds). Layout::

    vlt_demo/leftImg8bit/{train,val}/<domain>/<domain>_<seq>_<frame>_leftImg8bit.png
    vlt_demo/gtFine/{train,val}/<domain>/<domain>_<seq>_<frame>_gtFine_{labelIds,labelTrainIds,instanceIds}.png

Names: ``vlt_demo_source_{train,val}`` (flat-colour source domain) and ``vlt_demo_{fog,night,rain,shift}_val``
(the source val scenes under four domain shifts; same labels). Root: $DETECTRON2_DATASETS/vlt_demo.
"""
import os

from ..demo_generator import DEMO_TARGET_DOMAINS
from .common import datasets_root, list_image_label_pairs, register_sem_seg

__all__ = ["DEMO_DATASETS", "load_vlt_demo", "register_vlt_demo"]

SECTION = "VLT demo benchmark"
TEST_RESOLUTIONS = {"rein": "native", "robustnet": "native", "vltseg_synthetic": "native", "vltseg_real": "native",
                    "native": "native"}
# name -> (split, domain)
DEMO_DATASETS = {
    "vlt_demo_source_train": ("train", "source"),
    "vlt_demo_source_val": ("val", "source"),
    **{f"vlt_demo_{domain}_val": ("val", domain) for domain in DEMO_TARGET_DOMAINS},
}


def load_vlt_demo(split: str, domain: str, root: str = ""):
    """Dataset dicts of one split / domain of the demo benchmark (default root $DETECTRON2_DATASETS/vlt_demo)."""
    root = root or os.path.join(datasets_root(), "vlt_demo")
    return list_image_label_pairs(
        root, f"vlt_demo_{domain}_{split}", SECTION,
        os.path.join(root, "leftImg8bit", split, domain), "_leftImg8bit.png",
        os.path.join(root, "gtFine", split, domain), "_gtFine_labelTrainIds.png",
        prepare_hint=f"run: python tools/generate_demo_data.py --root {root}",
    )


def register_vlt_demo():
    """Register vlt_demo_source_{train,val} and vlt_demo_{fog,night,rain,shift}_val."""
    for name, (split, domain) in DEMO_DATASETS.items():
        register_sem_seg(
            name, lambda split=split, domain=domain: load_vlt_demo(split, domain), TEST_RESOLUTIONS,
            domain=domain, submission_format="cityscapes", dataset_folder="vlt_demo",
        )
