"""Data loaders: Detectron2's loaders with VLT's mappers (semantic segmentation and detection)."""
from typing import Callable, Optional

from detectron2.data import (
    DatasetCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)

from .det_mapper import build_det_test_mapper
from .semantic_mapper import SemSegTestMapper, SemSegTrainMapper

__all__ = ["build_sem_seg_train_loader", "build_sem_seg_test_loader", "build_det_test_loader"]


def build_sem_seg_train_loader(cfg, mapper: Optional[Callable] = None):
    """Infinite training loader over cfg.DATASETS.TRAIN with :class:`SemSegTrainMapper` (batch
    SOLVER.IMS_PER_BATCH over all workers, DATALOADER.NUM_WORKERS workers, D2's TrainingSampler)."""
    dataset = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
    return build_detection_train_loader(
        dataset, mapper=mapper or SemSegTrainMapper(cfg, is_train=True), total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=False, num_workers=cfg.DATALOADER.NUM_WORKERS,
    )


def build_sem_seg_test_loader(cfg, dataset_name: str, mapper: Optional[Callable] = None):
    """Test loader of one dataset (batch 1, every image once) with :class:`SemSegTestMapper`."""
    return build_detection_test_loader(
        DatasetCatalog.get(dataset_name), mapper=mapper or SemSegTestMapper(cfg, dataset_name),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )


def build_det_test_loader(cfg, dataset_name: str):
    """Test loader of one registered detection dataset (batch 1, :func:`~vlt.data.det_mapper.build_det_test_mapper`)."""
    return build_detection_test_loader(cfg, dataset_name, mapper=build_det_test_mapper(cfg))
