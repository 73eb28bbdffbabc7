"""Test loaders: Detectron2's loader with VLT's mappers (semantic segmentation and detection). The training loader,
for every task, is ``vlt.engine.Trainer.build_train_loader``."""
from typing import Callable, Optional

from detectron2.data import DatasetCatalog, build_detection_test_loader

from .det_mapper import build_det_test_mapper
from .semantic_mapper import SemSegTestMapper

__all__ = ["build_sem_seg_test_loader", "build_det_test_loader"]


def build_sem_seg_test_loader(cfg, dataset_name: str, mapper: Optional[Callable] = None):
    """Test loader of one dataset (batch 1, every image once) with :class:`SemSegTestMapper`."""
    return build_detection_test_loader(
        DatasetCatalog.get(dataset_name), mapper=mapper or SemSegTestMapper(cfg, dataset_name),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )


def build_det_test_loader(cfg, dataset_name: str):
    """Test loader of one registered detection dataset (batch 1, :func:`~vlt.data.det_mapper.build_det_test_mapper`)."""
    return build_detection_test_loader(cfg, dataset_name, mapper=build_det_test_mapper(cfg))
