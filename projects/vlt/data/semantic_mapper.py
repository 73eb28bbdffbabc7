"""Semantic-segmentation dataset mappers (train and test), label validation, and the test-resolution protocols.

Train (mmseg order): random resize (ratio range around a base size, a fixed size, or short-side sizes) -> random
crop with a maximum single-class ratio -> horizontal flip -> photometric distortion or colour jitter -> pad to the
crop size (and a size divisibility), labels with ignore 255; "valid_hw" records the image's size before padding,
and the model sets the padded pixels to 0 after normalisation, i.e. to the pixel mean (mmseg's data preprocessor
and Mask2Former pad after normalising too).

Test: the image is resized to the dataset's evaluation resolution (a protocol picked by INPUT.TEST_RESOLUTION,
see :func:`evaluation_resize_shape`) times INPUT.TEST_SCALE_FACTOR; "height"/"width" keep the size predictions are
scored at, and "sem_seg" (uint8) is the ground truth at that size.
"""
import logging
import os
import re
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.utils.file_io import PathManager

from ..utils.errors import InputError, MissingFileError
from .label_conversion import read_label_map
from .transforms import (
    ColorJitter,
    CV2ResizeTransform,
    FixedSizeResize,
    PadCenteredAndResize,
    PhotometricDistortion,
    RandomCropCategoryMaxRatio,
    RandomResizeRatioRange,
    RandomResizeShortSide,
    keep_ratio_scale,
)

__all__ = [
    "SemSegTrainMapper",
    "SemSegTestMapper",
    "read_image",
    "read_sem_seg",
    "check_label_values",
    "check_model_classes",
    "evaluation_resize_shape",
    "resolve_test_resolution",
    "build_train_augmentations",
]

README = "datasets/README.md"
logger = logging.getLogger(__name__)


def _jpeg_complete(data: np.ndarray) -> bool:
    """Whether JPEG bytes end with the end-of-image marker FF D9 (within the last 4 KiB, which allows the padding
    or trailers some cameras append). libjpeg decodes a truncated file with a grey fill and only a warning."""
    tail = data[-4096:].tobytes()
    return b"\xff\xd9" in tail


def read_image(path: str, image_format: str = "RGB") -> np.ndarray:
    """Decode an image file to uint8 [H, W, 3] in ``image_format`` ("RGB" or "BGR"); a missing, undecodable or
    truncated file (any format) fails naming it."""
    local = PathManager.get_local_path(path)
    if not os.path.isfile(local):
        raise MissingFileError(f"Image '{path}' does not exist")
    data = np.fromfile(local, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise InputError(f"Image '{path}' cannot be decoded (corrupt, truncated or not an image file)")
    if data[:3].tobytes() == b"\xff\xd8\xff" and not _jpeg_complete(data):
        raise InputError(f"Image '{path}' is truncated: the JPEG ends without its end-of-image marker")
    if image_format == "RGB":
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image_format == "BGR":
        return image
    raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR', got '{image_format}'")


def check_label_values(label: np.ndarray, num_classes: int, ignore_label: int, path: str) -> None:
    """Raise ValueError naming ``path`` if ``label`` holds values other than 0..num_classes-1 and ignore_label."""
    if label.dtype == np.uint8 and ignore_label == 255:
        # uint8 arithmetic wraps: (v - K) mod 256 < 255 - K exactly for K <= v < 255; two vector ops, no copy of
        # the map into wider ints.
        bad = np.count_nonzero((label - np.uint8(num_classes)) < np.uint8(255 - num_classes))
    else:
        bad = np.count_nonzero((label >= num_classes) & (label != ignore_label) | (label < 0))
    if bad:
        values = np.unique(label)
        wrong = [int(v) for v in values if not (0 <= v < num_classes or v == ignore_label)]
        raise ValueError(
            f"Label '{path}' has {bad} pixels with values {wrong[:10]} outside the class ids 0..{num_classes - 1} "
            f"and ignore {ignore_label}: is it a train-id label (not label ids / colours)? See {README}."
        )


def read_sem_seg(path: str, num_classes: int, ignore_label: int = 255) -> np.ndarray:
    """Decode and validate a train-id label PNG: uint8 [H, W]."""
    label = read_label_map(PathManager.get_local_path(path))
    if label.dtype != np.uint8:
        if label.max(initial=0) > 255:
            raise ValueError(f"Label '{path}' has values up to {int(label.max())}; expected train ids < 256")
        label = label.astype(np.uint8)
    check_label_values(label, num_classes, ignore_label, path)
    return label


# ------------------------------------------------------------------------------------------------------ test sizes
_FIT = re.compile(r"^fit_(\d+)x(\d+)$")
_SHORT = re.compile(r"^short_(\d+)$")
_HEIGHT_CROP = re.compile(r"^height(\d+)_crop$")


def evaluation_resize_shape(height: int, width: int, protocol: str) -> Tuple[Tuple[int, int], Optional[int]]:
    """Size an image of ``height`` x ``width`` is evaluated at under ``protocol``: ((new_h, new_w), crop).

    Protocols: "native" (unchanged); "fit_WxH" (mmseg keep-ratio resize into W x H, e.g. fit_1024x512 turns a
    Cityscapes image into 1024x512: Rein / VLTSeg DG tests); "short_N" (short side N); "heightN_crop" (height N,
    then centre crop / pad to N x N, labels too (padded with ignore): RobustNet / FAMix Mapillary, whose
    ResizeHeight is bicubic and truncates the width). ``crop`` is N for the last one.
    """
    if protocol == "native":
        return (height, width), None
    match = _FIT.match(protocol)
    if match:
        factor = keep_ratio_scale(height, width, (int(match.group(1)), int(match.group(2))))
    elif _SHORT.match(protocol):
        factor = int(_SHORT.match(protocol).group(1)) / min(height, width)
    elif _HEIGHT_CROP.match(protocol):
        size = int(_HEIGHT_CROP.match(protocol).group(1))
        return (size, int(width / height * size)), size  # RobustNet ResizeHeight truncates the width
    else:
        raise ValueError(
            f"Unknown test-resolution protocol '{protocol}': expected native, fit_<W>x<H>, short_<N> or "
            "height<N>_crop (or a preset: rein, robustnet)"
        )
    return (int(height * factor + 0.5), int(width * factor + 0.5)), None


def resolve_test_resolution(setting: str, dataset_name: str) -> str:
    """The protocol of INPUT.TEST_RESOLUTION for a dataset: a preset name (``TEST_RESOLUTION_PRESETS``: "rein",
    "robustnet", "vltseg_synthetic", "vltseg_real", "native") looks up the dataset's metadata ``test_resolutions``;
    anything else is a protocol applied to every dataset."""
    from .datasets.common import TEST_RESOLUTION_PRESETS

    resolutions = MetadataCatalog.get(dataset_name).get("test_resolutions", None)
    if setting in TEST_RESOLUTION_PRESETS:
        if resolutions is None:
            return "native"
        if setting not in resolutions:
            raise KeyError(f"{dataset_name}: no '{setting}' test resolution in its metadata ({sorted(resolutions)})")
        return resolutions[setting]
    evaluation_resize_shape(1, 1, setting)  # validates the protocol string
    return setting


def _center_crop_pad(array: np.ndarray, size: int, pad_value: int) -> np.ndarray:
    """Centre crop / pad [H, W, ...] to size x size (RobustNet CenterCropPad: offsets round((W - size) / 2))."""
    height, width = array.shape[:2]
    y0, x0 = max(int(round((height - size) / 2)), 0), max(int(round((width - size) / 2)), 0)
    array = array[y0 : y0 + size, x0 : x0 + size]
    pad_h, pad_w = size - array.shape[0], size - array.shape[1]
    if pad_h or pad_w:
        top, left = pad_h // 2, pad_w // 2
        array = cv2.copyMakeBorder(array, top, pad_h - top, left, pad_w - left, cv2.BORDER_CONSTANT, value=pad_value)
    return array


def _match_label_size(image: np.ndarray, label: np.ndarray, dataset_dict: dict) -> np.ndarray:
    """The image resized to its label's size if they differ (a few GTA5 pairs do; RobustNet resizes the image
    the same way), with a warning naming both files."""
    if image.shape[:2] == label.shape:
        return image
    logger.warning("Image '%s' is %s but its label '%s' is %s: resizing the image to the label",
                   dataset_dict["file_name"], image.shape[:2], dataset_dict["sem_seg_file_name"], label.shape)
    return cv2.resize(image, (label.shape[1], label.shape[0]), interpolation=cv2.INTER_LINEAR)


def _pad_bottom_right(array: np.ndarray, height: int, width: int, value: int) -> np.ndarray:
    pad_h, pad_w = height - array.shape[0], width - array.shape[1]
    if pad_h <= 0 and pad_w <= 0:
        return array
    return cv2.copyMakeBorder(array, 0, max(pad_h, 0), 0, max(pad_w, 0), cv2.BORDER_CONSTANT, value=value)


def check_model_classes(cfg, dataset_names: Sequence[str], num_classes: int,
                        ignore_label: Optional[int] = None) -> None:
    """Raise if the segmentation head's MODEL.SEM_SEG_HEAD.NUM_CLASSES differs from the datasets' class count, or (for
    training data, ``ignore_label`` given) its IGNORE_VALUE from their ignore label (the loss would learn the ignored
    pixels as a class)."""
    has = "has" if len(dataset_names) == 1 else "have"
    if cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES != num_classes:
        raise InputError(
            f"MODEL.SEM_SEG_HEAD.NUM_CLASSES is {cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES} but {', '.join(dataset_names)} "
            f"{has} {num_classes} classes: set it to {num_classes} or use a config made for these datasets"
        )
    if ignore_label is not None and cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE != ignore_label:
        raise InputError(
            f"MODEL.SEM_SEG_HEAD.IGNORE_VALUE is {cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE} but {', '.join(dataset_names)} "
            f"{has} ignore label {ignore_label}: set it to {ignore_label}"
        )


def _dataset_label_space(dataset_names: Sequence[str]) -> Tuple[int, int]:
    """(number of classes, ignore label) shared by the datasets; error if they differ."""
    spaces = set()
    for name in dataset_names:
        metadata = MetadataCatalog.get(name)
        if not metadata.get("stuff_classes", None):
            raise KeyError(f"Dataset '{name}' has no 'stuff_classes' metadata: is it a registered sem_seg dataset?")
        spaces.add((len(metadata.stuff_classes), metadata.get("ignore_label", 255)))
    if len(spaces) != 1:
        raise ValueError(f"Datasets {list(dataset_names)} have different (classes, ignore) label spaces: {spaces}")
    return spaces.pop()


def build_train_augmentations(cfg) -> List[T.Augmentation]:
    """The training augmentations the INPUT.* keys describe (mmseg order, without the final padding)."""
    mode = cfg.INPUT.RESIZE_MODE
    augs: List[T.Augmentation] = []
    if mode == "ratio_range":
        augs.append(RandomResizeRatioRange(cfg.INPUT.RESIZE_BASE, cfg.INPUT.RESIZE_RATIO_RANGE))
    elif mode == "fixed":
        augs.append(FixedSizeResize(cfg.INPUT.RESIZE_BASE))
    elif mode == "short_side":
        augs.append(RandomResizeShortSide(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN,
                                          cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING))
    elif mode != "none":
        raise ValueError(f"cfg.INPUT.RESIZE_MODE must be 'ratio_range', 'fixed', 'short_side' or 'none', got '{mode}'")
    if cfg.INPUT.CROP.ENABLED:
        if cfg.INPUT.CROP.TYPE != "absolute":
            raise ValueError(f"cfg.INPUT.CROP.TYPE must be 'absolute' (SIZE in pixels), got '{cfg.INPUT.CROP.TYPE}'")
        augs.append(RandomCropCategoryMaxRatio(cfg.INPUT.CROP.SIZE, cfg.INPUT.CROP.CAT_MAX_RATIO))
    if len(cfg.INPUT.CROP.PAD_RESIZE_TO):
        if not cfg.INPUT.CROP.ENABLED or len(cfg.INPUT.CROP.PAD_RESIZE_TO) != 2:
            raise ValueError(f"cfg.INPUT.CROP.PAD_RESIZE_TO must be () or (h, w) with INPUT.CROP.ENABLED, got "
                             f"{cfg.INPUT.CROP.PAD_RESIZE_TO}")
        augs.append(PadCenteredAndResize(cfg.INPUT.CROP.SIZE, cfg.INPUT.CROP.PAD_RESIZE_TO))
    if cfg.INPUT.RANDOM_FLIP == "horizontal":
        augs.append(T.RandomFlip(horizontal=True, vertical=False))
    elif cfg.INPUT.RANDOM_FLIP != "none":
        raise ValueError(f"cfg.INPUT.RANDOM_FLIP must be 'horizontal' or 'none', got '{cfg.INPUT.RANDOM_FLIP}'")
    if cfg.INPUT.PHOTOMETRIC_DISTORTION:
        augs.append(PhotometricDistortion())
    if len(cfg.INPUT.COLOR_JITTER):
        if len(cfg.INPUT.COLOR_JITTER) != 4:
            raise ValueError(f"cfg.INPUT.COLOR_JITTER must be [] or [brightness, contrast, saturation, hue], got "
                             f"{cfg.INPUT.COLOR_JITTER}")
        augs.append(ColorJitter(*cfg.INPUT.COLOR_JITTER))
    return augs


class SemSegTrainMapper:
    """Training mapper: dataset dict -> {"image": uint8 [3, H, W] (INPUT.FORMAT), "sem_seg": int64 [H, W] (255 =
    ignore), "valid_hw": (h, w) of the image inside the padding (top-left), "height", "width", "file_name",
    "image_id"}, where H, W = the crop size (padded) or the resized size. The image's padding is 0 here; the model
    overwrites it with the normalised pixel mean (0) after normalising (see ``valid_hw``)."""

    @configurable
    def __init__(self, is_train: bool = True, *, augmentations: Sequence[T.Augmentation], image_format: str = "RGB",
                 num_classes: int = 19, ignore_label: int = 255, crop_size: Optional[Tuple[int, int]] = None,
                 size_divisibility: int = -1, skip_broken: bool = False):
        """``skip_broken``: return None (Detectron2's loader then draws another image) for an image or label that
        cannot be decoded, logging the file and a running count, instead of raising."""
        if not is_train:
            raise ValueError("SemSegTrainMapper is for training; use SemSegTestMapper(cfg, dataset_name) to test")
        self.augmentations = T.AugmentationList(list(augmentations))
        self.image_format = image_format
        self.num_classes, self.ignore_label = num_classes, ignore_label
        self.crop_size = tuple(crop_size) if crop_size else None
        self.size_divisibility = size_divisibility
        self.skip_broken, self.skipped = skip_broken, 0

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        num_classes, ignore_label = _dataset_label_space(cfg.DATASETS.TRAIN)
        check_model_classes(cfg, cfg.DATASETS.TRAIN, num_classes, ignore_label)
        return {
            "is_train": is_train,
            "augmentations": build_train_augmentations(cfg),
            "image_format": cfg.INPUT.FORMAT,
            "num_classes": num_classes,
            "ignore_label": ignore_label,
            "crop_size": (cfg.INPUT.CROP.PAD_RESIZE_TO or cfg.INPUT.CROP.SIZE) if cfg.INPUT.CROP.ENABLED else None,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
            "skip_broken": cfg.INPUT.SKIP_BROKEN_IMAGES,
        }

    def __call__(self, dataset_dict: dict) -> Optional[dict]:
        if "sem_seg_file_name" not in dataset_dict:
            raise KeyError(f"Training image '{dataset_dict.get('file_name')}' has no sem_seg_file_name")
        try:
            image = read_image(dataset_dict["file_name"], self.image_format)
            label = read_sem_seg(dataset_dict["sem_seg_file_name"], self.num_classes, self.ignore_label)
        except InputError as e:
            if not self.skip_broken:
                raise
            self.skipped += 1
            logger.warning("Skipped a training image (INPUT.SKIP_BROKEN_IMAGES): %s [%d skipped so far by this "
                           "loader process]", e, self.skipped)
            return None
        image = _match_label_size(image, label, dataset_dict)
        height, width = label.shape
        aug_input = T.AugInput(image, sem_seg=label)
        self.augmentations(aug_input)
        image, label = aug_input.image, aug_input.sem_seg
        target_h, target_w = self.crop_size if self.crop_size else image.shape[:2]
        target_h, target_w = max(target_h, image.shape[0]), max(target_w, image.shape[1])
        if self.size_divisibility > 0:
            div = self.size_divisibility
            target_h, target_w = -(-target_h // div) * div, -(-target_w // div) * div
        valid_hw = tuple(image.shape[:2])
        image = _pad_bottom_right(np.ascontiguousarray(image), target_h, target_w, 0)
        label = _pad_bottom_right(np.ascontiguousarray(label), target_h, target_w, self.ignore_label)
        return {
            "valid_hw": valid_hw,
            "file_name": dataset_dict["file_name"],
            "image_id": dataset_dict.get("image_id"),
            "height": height,
            "width": width,
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "sem_seg": torch.from_numpy(label.astype(np.int64)),
        }


class SemSegTestMapper:
    """Test mapper: the image at the dataset's evaluation resolution x scale factor; "height"/"width" = the size
    predictions are scored at (the original size, or the crop of a "heightN_crop" protocol); "sem_seg" = uint8
    ground truth at that size when the dataset has labels."""

    @configurable
    def __init__(self, *, protocol: str, scale_factor: float = 1.0, image_format: str = "RGB", num_classes: int = 19,
                 ignore_label: int = 255, load_labels: bool = True):
        evaluation_resize_shape(1, 1, protocol)
        if scale_factor <= 0:
            raise ValueError(f"INPUT.TEST_SCALE_FACTOR must be > 0, got {scale_factor}")
        self.protocol, self.scale_factor = protocol, scale_factor
        self.image_format = image_format
        self.num_classes, self.ignore_label, self.load_labels = num_classes, ignore_label, load_labels

    @classmethod
    def from_config(cls, cfg, dataset_name: str):
        num_classes, ignore_label = _dataset_label_space([dataset_name])
        check_model_classes(cfg, [dataset_name], num_classes)
        return {
            "protocol": resolve_test_resolution(cfg.INPUT.TEST_RESOLUTION, dataset_name),
            "scale_factor": cfg.INPUT.TEST_SCALE_FACTOR,
            "image_format": cfg.INPUT.FORMAT,
            "num_classes": num_classes,
            "ignore_label": ignore_label,
            "load_labels": MetadataCatalog.get(dataset_name).get("has_labels", True),
        }

    def __call__(self, dataset_dict: dict) -> dict:
        image = read_image(dataset_dict["file_name"], self.image_format)
        label = None
        if self.load_labels and "sem_seg_file_name" in dataset_dict:
            label = read_sem_seg(dataset_dict["sem_seg_file_name"], self.num_classes, self.ignore_label)
            image = _match_label_size(image, label, dataset_dict)
        height, width = image.shape[:2]
        (new_h, new_w), crop = evaluation_resize_shape(height, width, self.protocol)
        if crop is not None:  # the evaluation frame itself changes: transform image and label
            image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_CUBIC)  # RobustNet: bicubic
            image = _center_crop_pad(image, crop, 0)
            if label is not None:
                label = CV2ResizeTransform(height, width, new_h, new_w).apply_segmentation(label)
                label = _center_crop_pad(label, crop, self.ignore_label)
            height, width = new_h, new_w = crop, crop
        if self.scale_factor != 1.0:
            new_h, new_w = int(new_h * self.scale_factor + 0.5), int(new_w * self.scale_factor + 0.5)
        image = CV2ResizeTransform(*image.shape[:2], new_h, new_w).apply_image(image)
        out = {
            "file_name": dataset_dict["file_name"],
            "image_id": dataset_dict.get("image_id"),
            "height": height,
            "width": width,
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
        }
        if label is not None:
            out["sem_seg"] = torch.from_numpy(label)
            out["sem_seg_file_name"] = dataset_dict["sem_seg_file_name"]
        return out
