"""VLT data: dataset registrations (imported here, so ``import vlt`` registers them), mappers and loaders."""
from . import datasets  # noqa: F401  (registers the semantic-segmentation datasets)
from .build import build_sem_seg_test_loader, build_sem_seg_train_loader
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
    "build_sem_seg_train_loader",
    "build_sem_seg_test_loader",
    "build_train_augmentations",
    "check_label_values",
    "read_sem_seg",
    "resolve_test_resolution",
    "evaluation_resize_shape",
]
