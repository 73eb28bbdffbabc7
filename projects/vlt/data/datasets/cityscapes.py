"""Cityscapes fine (Cordts et al. 2016): train / val / test, 2975 / 500 / 1525 images at 2048x1024.

Layout (the official leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip)::

    cityscapes/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    cityscapes/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png

``*_gtFine_labelTrainIds.png`` are made from the official ``*_gtFine_labelIds.png`` by
``python datasets/prepare_cityscapes.py``. The test split has no public labels: it is registered without them
(write a submission with TEST.EXPORT.ENABLED).
"""
import os

from .common import datasets_root, list_image_label_pairs, register_sem_seg

__all__ = ["CITYSCAPES_SPLITS", "load_cityscapes_fine", "register_cityscapes"]

CITYSCAPES_SPLITS = ("train", "val", "test")
SECTION = "Cityscapes"
# Test resolution: GTA-trained DG models are tested at 1024x512 (Rein, VLTSeg reimplementation); RobustNet / FAMix
# and Cityscapes-trained models at the native 2048x1024 (VLTSeg reimpl. test/real2cityscapes.py: keep-ratio 2048x1024).
TEST_RESOLUTIONS = {"rein": "fit_1024x512", "robustnet": "native", "vltseg_synthetic": "fit_1024x512",
                    "vltseg_real": "fit_2048x1024", "native": "native"}


def load_cityscapes_fine(split: str, root: str = "", with_labels: bool = True):
    """Dataset dicts of a Cityscapes fine split under ``root`` (default $DETECTRON2_DATASETS/cityscapes)."""
    root = root or os.path.join(datasets_root(), "cityscapes")
    return list_image_label_pairs(
        root, f"cityscapes_fine_{split}", SECTION,
        os.path.join(root, "leftImg8bit", split), "_leftImg8bit.png",
        os.path.join(root, "gtFine", split) if with_labels else None, "_gtFine_labelTrainIds.png",
        size=(1024, 2048), prepare_hint="run: python datasets/prepare_cityscapes.py",
    )


def register_cityscapes():
    """Register cityscapes_fine_{train,val,test}."""
    for split in CITYSCAPES_SPLITS:
        labelled = split != "test"
        register_sem_seg(
            f"cityscapes_fine_{split}",
            lambda split=split, labelled=labelled: load_cityscapes_fine(split, with_labels=labelled),
            TEST_RESOLUTIONS, has_labels=labelled, submission_format="cityscapes", dataset_folder="cityscapes",
        )
