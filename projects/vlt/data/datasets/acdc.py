"""ACDC (Sakaridis et al. 2021): fog / night / rain / snow, each with train / val / test, 1920x1080.

Layout (the official rgb_anon_trainvaltest.zip and gt_trainval.zip)::

    acdc/rgb_anon/<condition>/<split>/<sequence>/<name>_rgb_anon.png
    acdc/gt/<condition>/<split>/<sequence>/<name>_gt_labelTrainIds.png

Names: ``acdc_<condition>_<split>`` and ``acdc_all_<split>`` (the four conditions together). Test splits have no
public labels (submission: TEST.EXPORT.ENABLED, format "acdc").
"""
import os

from .common import datasets_root, list_image_label_pairs, register_sem_seg

__all__ = ["ACDC_CONDITIONS", "load_acdc", "register_acdc"]

SECTION = "ACDC"
ACDC_CONDITIONS = ("fog", "night", "rain", "snow")
# VLTSeg reimpl.: keep-ratio 960x540 after synthetic training (test/synth2acdc.py), 1920x1080 after real training
# (test/real2acdc.py).
TEST_RESOLUTIONS = {"rein": "fit_1920x1080", "robustnet": "native", "vltseg_synthetic": "fit_960x540",
                    "vltseg_real": "fit_1920x1080", "native": "native"}


def load_acdc(condition: str, split: str, root: str = ""):
    """Dataset dicts of one ACDC condition ("fog", ..., or "all") and split."""
    root = root or os.path.join(datasets_root(), "acdc")
    if condition == "all":
        return [d for c in ACDC_CONDITIONS for d in load_acdc(c, split, root)]
    labelled = split != "test"
    dicts = list_image_label_pairs(
        root, f"acdc_{condition}_{split}", SECTION, os.path.join(root, "rgb_anon", condition, split), "_rgb_anon.png",
        os.path.join(root, "gt", condition, split) if labelled else None, "_gt_labelTrainIds.png", size=(1080, 1920),
    )
    for d in dicts:
        d["image_id"] = f"{condition}/{d['image_id']}"
    return dicts


def register_acdc():
    """Register acdc_{fog,night,rain,snow,all}_{train,val,test}."""
    for condition in ACDC_CONDITIONS + ("all",):
        for split in ("train", "val", "test"):
            register_sem_seg(
                f"acdc_{condition}_{split}", lambda c=condition, s=split: load_acdc(c, s), TEST_RESOLUTIONS,
                has_labels=split != "test", submission_format="acdc", dataset_folder="acdc",
            )
