"""SYNTHIA-RAND-CITYSCAPES (Ros et al. 2016): 9,400 synthetic images at 1280x760.

Layout (the official SYNTHIA-RAND-CITYSCAPES archive)::

    synthia/RAND_CITYSCAPES/RGB/<7 digits>.png
    synthia/RAND_CITYSCAPES/GT/LABELS/<7 digits>.png                  official ids (16-bit, 3 channels)
    synthia/RAND_CITYSCAPES/GT/LABELS/<7 digits>_labelTrainIds.png    written by ``datasets/prepare_synthia.py``
    synthia/RAND_CITYSCAPES/synthia_split_{train,val}.txt             optional: RobustNet's split lists

Labels are converted to the 19 Cityscapes train ids (terrain, truck and train never occur). Models trained on it
can also report the 16- and 13-class means of the target domains (``TEST.MIOU_CLASS_SUBSETS "['synthia16',
'synthia13']"``; the 16 classes are ``vlt.data.cityscapes_classes.SYNTHIA_16_TRAIN_IDS``).

``synthia_train`` holds all 9,400 images. ``synthia_robustnet_{train,val}`` are the 6,580 / 2,820 images of
RobustNet's split lists (split_data/synthia_split_{train,val}.txt of its release), which RobustNet and FAMix train
and validate on.
"""
import os

from .common import datasets_root, list_image_label_pairs, register_sem_seg, select_split_list

__all__ = ["load_synthia", "register_synthia"]

SECTION = "SYNTHIA-RAND-CITYSCAPES"
TEST_RESOLUTIONS = {"rein": "native", "robustnet": "native", "vltseg_synthetic": "native", "vltseg_real": "native",
                    "native": "native"}


def load_synthia(root: str = "", split_list: str = ""):
    """Dataset dicts of the SYNTHIA-RAND-CITYSCAPES images under ``root`` (default $DETECTRON2_DATASETS/synthia):
    all of them, or those named in ``root/RAND_CITYSCAPES/<split_list>``."""
    root = os.path.join(root or os.path.join(datasets_root(), "synthia"), "RAND_CITYSCAPES")
    image_dir = os.path.join(root, "RGB")
    dicts = list_image_label_pairs(
        root, "synthia_train", SECTION, image_dir, ".png", os.path.join(root, "GT", "LABELS"),
        "_labelTrainIds.png", size=(760, 1280), prepare_hint="run: python datasets/prepare_synthia.py",
    )
    if not split_list:
        return dicts
    return select_split_list(dicts, os.path.join(root, split_list), "SYNTHIA", SECTION, image_dir,
                             f"RobustNet's split_data/{split_list}")


def register_synthia():
    """Register synthia_train (all images) and synthia_robustnet_{train,val} (RobustNet split lists); 19 train ids
    (the 16- / 13-class means of the targets come from TEST.MIOU_CLASS_SUBSETS)."""
    for name, loader in (
        ("synthia_train", load_synthia),
        ("synthia_robustnet_train", lambda: load_synthia(split_list="synthia_split_train.txt")),
        ("synthia_robustnet_val", lambda: load_synthia(split_list="synthia_split_val.txt")),
    ):
        register_sem_seg(name, loader, TEST_RESOLUTIONS, dataset_folder="synthia")
