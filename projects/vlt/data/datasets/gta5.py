"""GTA5 (Richter et al. 2016, "Playing for Data"): 24,966 synthetic images (mostly 1914x1052), Cityscapes label ids.

Layout (the ten official image / label archives unpacked into one folder)::

    gta5/images/<5 digits>.png
    gta5/labels/<5 digits>.png                  official label ids (palette PNG)
    gta5/labels/<5 digits>_labelTrainIds.png    train ids, written by ``python datasets/prepare_gta5.py``
    gta5/gtav_split_{train,val}.txt             optional: RobustNet's split lists (one "<n>.png" per line)

``gta5_train`` holds all 24,966 images, as Rein and VLTSeg train on. ``gta5_robustnet_{train,val}`` are the
subsets of RobustNet's split lists (FAMix trains on them; copy them from its release, datasets/gta5_list/).
"""
import os

from .common import datasets_root, list_image_label_pairs, register_sem_seg, select_split_list

__all__ = ["load_gta5", "register_gta5"]

SECTION = "GTA5"
TEST_RESOLUTIONS = {"rein": "native", "robustnet": "native", "vltseg_synthetic": "native", "vltseg_real": "native",
                    "native": "native"}


def load_gta5(root: str = "", split_list: str = "", dataset_name: str = "gta5_train"):
    """Dataset dicts of the GTA5 images under ``root`` (default $DETECTRON2_DATASETS/gta5): all of them, or those
    named in ``root/<split_list>``; errors name ``dataset_name``."""
    root = root or os.path.join(datasets_root(), "gta5")
    dicts = list_image_label_pairs(
        root, dataset_name, SECTION, os.path.join(root, "images"), ".png", os.path.join(root, "labels"),
        "_labelTrainIds.png", prepare_hint="run: python datasets/prepare_gta5.py",
    )
    if not split_list:
        return dicts
    return select_split_list(dicts, os.path.join(root, split_list), dataset_name, SECTION,
                             os.path.join(root, "images"), f"RobustNet's / FAMix's datasets/gta5_list/{split_list}")


def register_gta5():
    """Register gta5_train (all images) and gta5_robustnet_{train,val} (RobustNet split lists)."""
    register_sem_seg("gta5_train", load_gta5, TEST_RESOLUTIONS, dataset_folder="gta5")
    for split in ("train", "val"):
        name = f"gta5_robustnet_{split}"
        register_sem_seg(name, lambda split=split, name=name: load_gta5("", f"gtav_split_{split}.txt", name),
                         TEST_RESOLUTIONS, dataset_folder="gta5")
