"""GTA5 (Richter et al. 2016, "Playing for Data"): 24,966 synthetic images (mostly 1914x1052), Cityscapes label ids.

Layout (the ten official image / label archives unpacked into one folder)::

    gta5/images/<5 digits>.png
    gta5/labels/<5 digits>.png                  official label ids (palette PNG)
    gta5/labels/<5 digits>_labelTrainIds.png    train ids, written by ``python datasets/prepare_gta5.py``

``gta5_train`` holds all 24,966 images, as Rein and VLTSeg train on.
"""
import os

from .common import datasets_root, list_image_label_pairs, register_sem_seg

__all__ = ["load_gta5", "register_gta5"]

SECTION = "GTA5"
TEST_RESOLUTIONS = {"rein": "native", "robustnet": "native", "native": "native"}


def load_gta5(root: str = ""):
    """Dataset dicts of all GTA5 images under ``root`` (default $DETECTRON2_DATASETS/gta5)."""
    root = root or os.path.join(datasets_root(), "gta5")
    return list_image_label_pairs(
        root, "gta5_train", SECTION, os.path.join(root, "images"), ".png", os.path.join(root, "labels"),
        "_labelTrainIds.png", prepare_hint="run: python datasets/prepare_gta5.py",
    )


def register_gta5():
    """Register gta5_train."""
    register_sem_seg("gta5_train", load_gta5, TEST_RESOLUTIONS)
