"""SYNTHIA-RAND-CITYSCAPES (Ros et al. 2016): 9,400 synthetic images at 1280x760.

Layout (the official SYNTHIA-RAND-CITYSCAPES archive)::

    synthia/RAND_CITYSCAPES/RGB/<7 digits>.png
    synthia/RAND_CITYSCAPES/GT/LABELS/<7 digits>.png                  official ids (16-bit, 3 channels)
    synthia/RAND_CITYSCAPES/GT/LABELS/<7 digits>_labelTrainIds.png    written by ``datasets/prepare_synthia.py``

Labels are converted to the 19 Cityscapes train ids (terrain, truck and train never occur). Models trained on it
can also report the 16- and 13-class means of the target domains (``TEST.MIOU_CLASS_SUBSETS "['synthia16',
'synthia13']"``; the 16 classes are ``vlt.data.cityscapes_classes.SYNTHIA_16_TRAIN_IDS``).
"""
import os

from ..cityscapes_classes import SYNTHIA_16_TRAIN_IDS
from .common import datasets_root, list_image_label_pairs, register_sem_seg

__all__ = ["load_synthia", "register_synthia"]

SECTION = "SYNTHIA-RAND-CITYSCAPES"
TEST_RESOLUTIONS = {"rein": "native", "robustnet": "native", "native": "native"}


def load_synthia(root: str = ""):
    """Dataset dicts of all SYNTHIA-RAND-CITYSCAPES images under ``root`` (default $DETECTRON2_DATASETS/synthia)."""
    root = os.path.join(root or os.path.join(datasets_root(), "synthia"), "RAND_CITYSCAPES")
    return list_image_label_pairs(
        root, "synthia_train", SECTION, os.path.join(root, "RGB"), ".png", os.path.join(root, "GT", "LABELS"),
        "_labelTrainIds.png", size=(760, 1280), prepare_hint="run: python datasets/prepare_synthia.py",
    )


def register_synthia():
    """Register synthia_train (19 train ids; 16-class protocol via metadata miou_16_train_ids)."""
    register_sem_seg("synthia_train", load_synthia, TEST_RESOLUTIONS, miou_16_train_ids=list(SYNTHIA_16_TRAIN_IDS),
                     dataset_folder="synthia")
