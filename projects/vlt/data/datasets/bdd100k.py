"""BDD100K semantic segmentation (Yu et al. 2020): the 10k subset, 7,000 train / 1,000 val at 1280x720.

Layout (the official bdd100k_images_10k.zip and bdd100k_sem_seg_labels_trainval.zip)::

    bdd100k/images/10k/{train,val}/<name>.jpg
    bdd100k/labels/sem_seg/masks/{train,val}/<name>.png     already in Cityscapes train ids (255 = ignore)
"""
import os

from .common import datasets_root, list_image_label_pairs, register_sem_seg

__all__ = ["load_bdd100k_sem_seg", "register_bdd100k"]

SECTION = "BDD100K"
# VLTSeg reimpl.: keep-ratio resize into 1024x512 after synthetic training (test/synth2bdd100k.py: 910x512), into
# 2048x1024 after real training (test/real2bdd100k.py: 1820x1024).
TEST_RESOLUTIONS = {"rein": "fit_1280x720", "robustnet": "native", "vltseg_synthetic": "fit_1024x512",
                    "vltseg_real": "fit_2048x1024", "native": "native"}


def load_bdd100k_sem_seg(split: str, root: str = ""):
    """Dataset dicts of a BDD100K semantic-segmentation split (default root $DETECTRON2_DATASETS/bdd100k)."""
    root = root or os.path.join(datasets_root(), "bdd100k")
    return list_image_label_pairs(
        root, f"bdd100k_sem_seg_{split}", SECTION, os.path.join(root, "images", "10k", split), ".jpg",
        os.path.join(root, "labels", "sem_seg", "masks", split), ".png", size=(720, 1280),
    )


def register_bdd100k():
    """Register bdd100k_sem_seg_{train,val}."""
    for split in ("train", "val"):
        register_sem_seg(f"bdd100k_sem_seg_{split}", lambda split=split: load_bdd100k_sem_seg(split), TEST_RESOLUTIONS,
                         dataset_folder="bdd100k")
