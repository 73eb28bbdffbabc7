"""VLT evaluation: mIoU and detection AP over several targets, and test-server export."""
from .det_evaluation import DET_METRICS, build_det_evaluator, det_multi_target_table, write_det_multi_target_table
from .export import (
    ACDC_CONDITIONS,
    CITYSCAPES_TRAIN_ID_TO_LABEL_ID,
    SemSegSubmissionWriter,
    acdc_condition,
    cityscapes_result_name,
    image_condition,
    train_ids_to_label_ids,
)
from .multi_target import multi_target_table, write_multi_target_table
from .overlays import SemSegOverlayWriter
from .sem_seg_evaluation import (
    SemSegMIoUEvaluator,
    confusion_histogram,
    evaluate_label_files,
    read_label_png,
    segmentation_metrics,
)

__all__ = [
    "SemSegMIoUEvaluator",
    "SemSegSubmissionWriter",
    "SemSegOverlayWriter",
    "write_multi_target_table",
    "multi_target_table",
    "confusion_histogram",
    "segmentation_metrics",
    "evaluate_label_files",
    "read_label_png",
    "CITYSCAPES_TRAIN_ID_TO_LABEL_ID",
    "ACDC_CONDITIONS",
    "train_ids_to_label_ids",
    "cityscapes_result_name",
    "acdc_condition",
    "image_condition",
    "DET_METRICS",
    "build_det_evaluator",
    "det_multi_target_table",
    "write_det_multi_target_table",
]
