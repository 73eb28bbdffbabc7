"""Mapillary Vistas v1.2 (Neuhold et al. 2017) mapped to the 19 Cityscapes classes: 18,000 train / 2,000 val.

Layout (the official archive; v2.0 archives keep the v1.2 labels in ``<split>/v1.2/labels``)::

    mapillary_vistas/config.json                                  v1.2 class list (config_v1.2.json in v2.0)
    mapillary_vistas/{training,validation}/images/<key>.jpg
    mapillary_vistas/{training,validation}/labels/<key>.png       v1.2 ids 0..65
    mapillary_vistas/{training,validation}/labels_19/<key>.png            by-name protocol (mmseg / Rein)
    mapillary_vistas/{training,validation}/labels_19_robustnet/<key>.png  by-id protocol (RobustNet / FAMix)
    mapillary_vistas/half/validation/{images,labels_19}/<key>.*           half-size copy (official Rein test)

The converted folders are written by ``python datasets/prepare_mapillary.py [--half]``. Registered names:
``mapillary_19_{train,val}`` (by name), ``mapillary_19_robustnet_{train,val}`` (by id), ``mapillary_19_half_val``
(by name, half-size copy: Rein's protocol evaluates at that resolution). The two mappings differ, e.g. in
crosswalks, parking, curbs, street lights and back-facing signs; see datasets/README.md.
"""
import os

from .common import datasets_root, list_image_label_pairs, register_sem_seg

__all__ = ["MAPILLARY_SPLITS", "load_mapillary_19", "register_mapillary"]

SECTION = "Mapillary Vistas"
MAPILLARY_SPLITS = {"train": "training", "val": "validation"}
LABEL_FOLDERS = {"": "labels_19", "_robustnet": "labels_19_robustnet"}
# Rein: 1024x512 on the half-size copy; RobustNet / FAMix: height 1536, centre crop / pad to 1536x1536; VLTSeg
# reimpl.: keep-ratio resize into 1024x512 (test/synth2mapillary.py) or 2048x1024 (test/real2mapillary.py).
TEST_RESOLUTIONS = {"rein": "fit_1024x512", "robustnet": "height1536_crop", "vltseg_synthetic": "fit_1024x512",
                    "vltseg_real": "fit_2048x1024", "native": "native"}


def load_mapillary_19(split: str, protocol: str = "", half: bool = False, root: str = ""):
    """Dataset dicts of a Mapillary split with 19-class labels of ``protocol`` ("" by name, "_robustnet" by id)."""
    root = root or os.path.join(datasets_root(), "mapillary_vistas")
    folder = os.path.join(root, "half" if half else "", MAPILLARY_SPLITS[split])
    name = f"mapillary_19{protocol}{'_half' if half else ''}_{split}"
    flag = " --half" if half else ""
    return list_image_label_pairs(
        root, name, SECTION, os.path.join(folder, "images"), ".jpg",
        os.path.join(folder, LABEL_FOLDERS[protocol]), ".png",
        prepare_hint=f"run: python datasets/prepare_mapillary.py{flag}",
    )


def register_mapillary():
    """Register mapillary_19_{train,val}, mapillary_19_robustnet_{train,val}, mapillary_19_half_val."""
    for split in MAPILLARY_SPLITS:
        for protocol in LABEL_FOLDERS:
            register_sem_seg(
                f"mapillary_19{protocol}_{split}",
                lambda split=split, protocol=protocol: load_mapillary_19(split, protocol),
                TEST_RESOLUTIONS, label_protocol="robustnet_by_id" if protocol else "by_name",
                dataset_folder="mapillary_vistas",
            )
    register_sem_seg(
        "mapillary_19_half_val", lambda: load_mapillary_19("val", half=True),
        {"rein": "fit_1024x512", "robustnet": "fit_1024x512", "vltseg_synthetic": "fit_1024x512",
         "vltseg_real": "fit_2048x1024", "native": "native"}, label_protocol="by_name",
        dataset_folder="mapillary_vistas",
    )
