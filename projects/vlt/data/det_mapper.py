"""VLTDet data loading: ViTDet's large-scale jitter for training, a longest-edge resize for testing.

Both are Detectron2's :class:`~detectron2.data.DatasetMapper` with the augmentations of D2's ViTDet project
(``coco_loader_lsj``): flip, :class:`~detectron2.data.transforms.ResizeScale` to ``IMAGE_SIZE × U(MIN_SCALE,
MAX_SCALE)``, :class:`~detectron2.data.transforms.FixedSizeCrop` to ``IMAGE_SIZE``² without padding (the backbone pads
to a square, MODEL.OPEN_CLIP.PYRAMID_SQUARE_PAD); test images are resized with ``ResizeShortestEdge(MIN_SIZE_TEST,
MAX_SIZE_TEST)`` (ViTDet: 1024, 1024 = longest edge 1024) and predictions mapped back to the original size.
"""
from detectron2.data import DatasetMapper, MetadataCatalog
from detectron2.data import transforms as T

from ..utils.errors import InputError, MissingFileError

__all__ = ["DATASET_MAPPER_NAME", "SHORTEST_EDGE_MAPPER_NAME", "DET_MAPPER_NAMES", "is_detection_config",
           "check_num_classes", "build_det_train_mapper", "build_det_test_mapper"]

# cfg.INPUT.DATASET_MAPPER_NAME values that select :func:`build_det_train_mapper` in VLT's Trainer: ViTDet's LSJ, or
# Detectron2's default detection augmentation (ResizeShortestEdge(MIN_SIZE_TRAIN, MAX_SIZE_TRAIN) + flip), the
# training resize of the Faster R-CNN baselines (e.g. CLIP the Gap on Diverse Weather: shortest edge 600).
DATASET_MAPPER_NAME = "vltdet_lsj"
SHORTEST_EDGE_MAPPER_NAME = "vltdet_shortest_edge"
DET_MAPPER_NAMES = (DATASET_MAPPER_NAME, SHORTEST_EDGE_MAPPER_NAME)


def is_detection_config(cfg) -> bool:
    """Whether ``cfg`` is a VLTDet (box detection) config rather than a segmentation one."""
    return cfg.INPUT.DATASET_MAPPER_NAME in DET_MAPPER_NAMES


def check_num_classes(cfg, dataset_name: str) -> None:
    """Raise if the detector's class count differs from the dataset's (e.g. an 8-class model on a car-only set)."""
    classes = MetadataCatalog.get(dataset_name).get("thing_classes")
    if classes is None:
        raise ValueError(f"{dataset_name} has no thing_classes metadata: not a detection dataset")
    if len(classes) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
        raise ValueError(
            f"{dataset_name} has {len(classes)} classes {list(classes)} but cfg.MODEL.ROI_HEADS.NUM_CLASSES is "
            f"{cfg.MODEL.ROI_HEADS.NUM_CLASSES}: use a config made for it (car-only sets: configs/vltdet_sim10k.yaml)"
        )


class DetectionDatasetMapper(DatasetMapper):
    """Detectron2's DatasetMapper whose image errors name the file: PIL reports a truncated or undecodable image as
    a bare ``OSError("image file is truncated")``."""

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except FileNotFoundError as e:
            raise MissingFileError(f"Image '{dataset_dict['file_name']}' does not exist") from e
        except (OSError, SyntaxError) as e:  # PIL: truncated (OSError), unidentified (OSError), broken (SyntaxError)
            raise InputError(f"Image '{dataset_dict['file_name']}' cannot be decoded ({e}): corrupt, truncated or "
                             "not an image file") from e


def build_det_train_mapper(cfg) -> DatasetMapper:
    """Training mapper: flip + large-scale jitter (cfg.INPUT.LSJ) or, for "vltdet_shortest_edge", Detectron2's
    default detection resize ResizeShortestEdge(INPUT.MIN_SIZE_TRAIN, MAX_SIZE_TRAIN, MIN_SIZE_TRAIN_SAMPLING) +
    flip (INPUT.CROP is segmentation's and not used); RGB, boxes (and masks with MODEL.MASK_ON)."""
    for name in cfg.DATASETS.TRAIN:
        check_num_classes(cfg, name)
    augmentations = []
    if cfg.INPUT.RANDOM_FLIP != "none":
        augmentations.append(
            T.RandomFlip(horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal", vertical=cfg.INPUT.RANDOM_FLIP == "vertical")
        )
    if cfg.INPUT.DATASET_MAPPER_NAME == SHORTEST_EDGE_MAPPER_NAME:
        augmentations.append(T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        ))
    else:
        lsj = cfg.INPUT.LSJ
        augmentations += [
            T.ResizeScale(lsj.MIN_SCALE, lsj.MAX_SCALE, target_height=lsj.IMAGE_SIZE, target_width=lsj.IMAGE_SIZE),
            T.FixedSizeCrop(crop_size=(lsj.IMAGE_SIZE, lsj.IMAGE_SIZE), pad=False),
        ]
    return DetectionDatasetMapper(
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
    return DetectionDatasetMapper(
        is_train=False,
        augmentations=[T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)],
        image_format=cfg.INPUT.FORMAT,
    )

