"""VLTDet: ViTDet's Cascade R-CNN on an open_clip tower's simple feature pyramid (Li et al. 2022, "Exploring Plain
Vision Transformer Backbones for Object Detection"), with Detectron2's own modules; and VLT's synthetic-to-real
detection benchmark (datasets registered on import, COCO evaluation over every target in one table).
"""
from ...data.datasets import det_acdc, det_bdd100k, det_cityscapes, det_synthetic, det_vlt_demo  # noqa: F401
from .evaluation import DET_METRICS, build_det_evaluator, det_multi_target_table, write_det_multi_target_table
from .loaders import (
    DATASET_MAPPER_NAME,
    build_det_test_loader,
    build_det_test_mapper,
    build_det_train_loader,
    build_det_train_mapper,
    is_detection_config,
)
from .meta_arch import VLTGeneralizedRCNN

__all__ = [
    "DATASET_MAPPER_NAME", "DET_METRICS", "VLTGeneralizedRCNN", "build_det_evaluator", "build_det_test_loader",
    "build_det_test_mapper", "build_det_train_loader", "build_det_train_mapper", "det_multi_target_table",
    "is_detection_config", "write_det_multi_target_table",
]
