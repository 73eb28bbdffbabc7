"""VLTDet data loading: ViTDet's large-scale jitter for training, a longest-edge resize for testing.

Both are Detectron2's :class:`~detectron2.data.DatasetMapper` with the augmentations of D2's ViTDet project
(``coco_loader_lsj``): flip, :class:`~detectron2.data.transforms.ResizeScale` to ``IMAGE_SIZE × U(MIN_SCALE,
MAX_SCALE)``, :class:`~detectron2.data.transforms.FixedSizeCrop` to ``IMAGE_SIZE``² without padding (the backbone pads
to a square, MODEL.OPEN_CLIP.PYRAMID_SQUARE_PAD); test images are resized with ``ResizeShortestEdge(MIN_SIZE_TEST,
MAX_SIZE_TEST)`` (ViTDet: 1024, 1024 = longest edge 1024) and predictions mapped back to the original size.
"""
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data import transforms as T

from .evaluation import check_num_classes

__all__ = ["DATASET_MAPPER_NAME", "is_detection_config", "build_det_train_mapper", "build_det_test_mapper",
           "build_det_train_loader", "build_det_test_loader"]

# cfg.INPUT.DATASET_MAPPER_NAME that selects :func:`build_det_train_mapper` in VLT's Trainer.
DATASET_MAPPER_NAME = "vltdet_lsj"


def is_detection_config(cfg) -> bool:
    """Whether ``cfg`` is a VLTDet (box detection) config rather than a segmentation one."""
    return cfg.INPUT.DATASET_MAPPER_NAME == DATASET_MAPPER_NAME


def build_det_train_mapper(cfg) -> DatasetMapper:
    """Training mapper: flip + large-scale jitter (cfg.INPUT.LSJ), RGB, boxes (and masks with MODEL.MASK_ON)."""
    for name in cfg.DATASETS.TRAIN:
        check_num_classes(cfg, name)
    lsj = cfg.INPUT.LSJ
    augmentations = []
    if cfg.INPUT.RANDOM_FLIP != "none":
        augmentations.append(
            T.RandomFlip(horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal", vertical=cfg.INPUT.RANDOM_FLIP == "vertical")
        )
    augmentations += [
        T.ResizeScale(lsj.MIN_SCALE, lsj.MAX_SCALE, target_height=lsj.IMAGE_SIZE, target_width=lsj.IMAGE_SIZE),
        T.FixedSizeCrop(crop_size=(lsj.IMAGE_SIZE, lsj.IMAGE_SIZE), pad=False),
    ]
    return DatasetMapper(
        is_train=True,
        augmentations=augmentations,
        image_format=cfg.INPUT.FORMAT,
        use_instance_mask=cfg.MODEL.MASK_ON,
        instance_mask_format=cfg.INPUT.MASK_FORMAT,
        # Cropping cuts masks; their boxes are recomputed from what is left (ViTDet: recompute_boxes=True).
        recompute_boxes=cfg.MODEL.MASK_ON,
    )


def build_det_test_mapper(cfg) -> DatasetMapper:
    """Test mapper: resize (INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST), RGB; keeps the original height / width."""
    return DatasetMapper(
        is_train=False,
        augmentations=[T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)],
        image_format=cfg.INPUT.FORMAT,
    )


def build_det_train_loader(cfg):
    """Infinite training loader over cfg.DATASETS.TRAIN with :func:`build_det_train_mapper` (D2's sampler)."""
    dataset = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
    return build_detection_train_loader(
        dataset, mapper=build_det_train_mapper(cfg), total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING, num_workers=cfg.DATALOADER.NUM_WORKERS,
    )


def build_det_test_loader(cfg, dataset_name: str):
    """Test loader of one registered detection dataset (batch 1, :func:`build_det_test_mapper`)."""
    return build_detection_test_loader(cfg, dataset_name, mapper=build_det_test_mapper(cfg))
