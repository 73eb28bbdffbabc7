"""VLT datasets, one file each, registered in Detectron2's catalogs on import (no file reads): semantic segmentation
(``register_all_sem_seg``) and detection (the ``det_*`` modules register theirs when imported)."""
from . import det_acdc, det_bdd100k, det_cityscapes, det_dwd, det_synthetic, det_vlt_demo  # noqa: F401  (detection)
from .acdc import register_acdc
from .bdd100k import register_bdd100k
from .cityscapes import register_cityscapes
from .common import datasets_root
from .gta5 import register_gta5
from .mapillary import register_mapillary
from .synthia import register_synthia
from .vlt_demo import register_vlt_demo

__all__ = ["datasets_root", "register_all_sem_seg", "SEM_SEG_DATASETS"]

SEM_SEG_DATASETS = []  # names registered by register_all_sem_seg


def register_all_sem_seg():
    """Register every VLT semantic-segmentation dataset (idempotent)."""
    if SEM_SEG_DATASETS:
        return
    from detectron2.data import DatasetCatalog

    before = set(DatasetCatalog.list())
    for register in (register_gta5, register_synthia, register_cityscapes, register_bdd100k, register_mapillary,
                     register_acdc, register_vlt_demo):
        register()
    SEM_SEG_DATASETS.extend(sorted(set(DatasetCatalog.list()) - before))


register_all_sem_seg()
