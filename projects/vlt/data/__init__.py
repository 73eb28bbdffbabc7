"""VLT data: dataset registrations (imported here, so ``import vlt`` registers them), mappers and loaders for
semantic segmentation and detection."""
from . import datasets  # noqa: F401  (registers the semantic-segmentation datasets)
from .build import build_det_test_loader, build_sem_seg_test_loader
from .det_mapper import (
    DATASET_MAPPER_NAME,
    build_det_test_mapper,
    build_det_train_mapper,
    check_num_classes,
    is_detection_config,
)
from .semantic_mapper import (
    SemSegTestMapper,
    SemSegTrainMapper,
    build_train_augmentations,
    check_label_values,
    evaluation_resize_shape,
    read_sem_seg,
    resolve_test_resolution,
)

__all__ = [
    "SemSegTrainMapper",
    "SemSegTestMapper",
    "build_sem_seg_test_loader",
    "build_train_augmentations",
    "check_label_values",
    "read_sem_seg",
    "resolve_test_resolution",
    "evaluation_resize_shape",
    "DATASET_MAPPER_NAME",
    "is_detection_config",
    "check_num_classes",
    "build_det_train_mapper",
    "build_det_test_mapper",
    "build_det_test_loader",
]
