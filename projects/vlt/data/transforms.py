"""Training augmentations for semantic segmentation as Detectron2 ``Augmentation`` / ``Transform`` objects.

They reproduce mmseg's pipeline (``Resize`` with ``ratio_range``, ``RandomCrop`` with ``cat_max_ratio``,
``PhotoMetricDistortion``), torchvision's ``ColorJitter`` (FAMix) and the pad-then-resize of the FAMix release's
SYNTHIA crops, with OpenCV resizing (what mmseg uses, and
faster than PIL) and ``bincount`` instead of ``np.unique`` for the crop's class-ratio test.
"""
from typing import Sequence, Tuple

import cv2
import numpy as np
from detectron2.data import transforms as T
from detectron2.data.transforms import Augmentation, CropTransform, NoOpTransform, Transform

__all__ = [
    "CV2ResizeTransform",
    "RandomResizeRatioRange",
    "FixedSizeResize",
    "RandomResizeShortSide",
    "RandomCropCategoryMaxRatio",
    "PadCenteredAndResize",
    "PhotometricDistortion",
    "ColorJitter",
    "keep_ratio_scale",
]


def keep_ratio_scale(height: int, width: int, scale: Tuple[float, float]) -> float:
    """mmseg ``keep_ratio`` rescale factor: the largest that fits the long side in max(scale) and the short side
    in min(scale) (mmcv ``rescale_size``)."""
    long_edge, short_edge = max(scale), min(scale)
    return min(long_edge / max(height, width), short_edge / min(height, width))


class CV2ResizeTransform(Transform):
    """Resize to (new_h, new_w): bilinear for images, nearest for label maps (OpenCV, as mmseg)."""

    def __init__(self, h: int, w: int, new_h: int, new_w: int):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        if img.shape[:2] == (self.new_h, self.new_w):
            return img
        return cv2.resize(img, (self.new_w, self.new_h), interpolation=cv2.INTER_LINEAR)

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        if segmentation.shape[:2] == (self.new_h, self.new_w):
            return segmentation
        return cv2.resize(segmentation, (self.new_w, self.new_h), interpolation=cv2.INTER_NEAREST)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords[:, 0] = coords[:, 0] * (self.new_w * 1.0 / self.w)
        coords[:, 1] = coords[:, 1] * (self.new_h * 1.0 / self.h)
        return coords

    def inverse(self) -> Transform:
        return CV2ResizeTransform(self.new_h, self.new_w, self.h, self.w)


def _resize_by(height: int, width: int, factor: float) -> CV2ResizeTransform:
    new_h, new_w = int(height * factor + 0.5), int(width * factor + 0.5)  # mmcv rounding
    return CV2ResizeTransform(height, width, max(new_h, 1), max(new_w, 1))


class RandomResizeRatioRange(Augmentation):
    """mmseg ``Resize(scale=base, ratio_range=(lo, hi), keep_ratio=True)``: draw r ~ U(lo, hi) and rescale the
    image to fit ``base * r`` (long side to max, short side to min), keeping its aspect ratio."""

    def __init__(self, base: Tuple[int, int], ratio_range: Tuple[float, float]):
        super().__init__()
        self.base = tuple(base)
        self.ratio_range = tuple(ratio_range)

    def get_transform(self, image: np.ndarray) -> Transform:
        height, width = image.shape[:2]
        ratio = np.random.uniform(*self.ratio_range)
        return _resize_by(height, width, keep_ratio_scale(height, width, (self.base[0] * ratio, self.base[1] * ratio)))


class FixedSizeResize(Augmentation):
    """mmseg ``Resize(scale=(w, h))`` without ``keep_ratio`` (mmseg 1.x's default): every image to exactly w x h,
    the aspect ratio not kept (the public VLTSeg reimplementation's training resize: GTA5 1914x1052 -> 1280x720,
    BDD100K 1280x720 -> 2048x1024, Mapillary any size -> 2048x1024)."""

    def __init__(self, size_wh: Tuple[int, int]):
        super().__init__()
        self.width, self.height = (int(v) for v in size_wh)

    def get_transform(self, image: np.ndarray) -> Transform:
        return CV2ResizeTransform(image.shape[0], image.shape[1], self.height, self.width)


class RandomResizeShortSide(Augmentation):
    """Short side to a size drawn from ``short_sizes`` ("choice", e.g. Rein's 256..1024 step 32, Mask2Former's
    512..2048) or uniformly in [min, max] ("range"); the long side capped at ``max_size`` (D2 ResizeShortestEdge)."""

    def __init__(self, short_sizes: Sequence[int], max_size: int, sampling: str = "choice"):
        super().__init__()
        if sampling not in ("choice", "range"):
            raise ValueError(f"INPUT.MIN_SIZE_TRAIN_SAMPLING must be 'choice' or 'range', got '{sampling}'")
        if sampling == "range" and len(short_sizes) != 2:
            raise ValueError(f"'range' sampling needs INPUT.MIN_SIZE_TRAIN = (min, max), got {short_sizes}")
        self.short_sizes, self.max_size, self.sampling = tuple(short_sizes), max_size, sampling

    def get_transform(self, image: np.ndarray) -> Transform:
        height, width = image.shape[:2]
        if self.sampling == "range":
            short = np.random.randint(self.short_sizes[0], self.short_sizes[1] + 1)
        else:
            short = np.random.choice(self.short_sizes)
        new_h, new_w = T.ResizeShortestEdge.get_output_shape(height, width, int(short), self.max_size)
        return CV2ResizeTransform(height, width, new_h, new_w)


class RandomCropCategoryMaxRatio(Augmentation):
    """mmseg ``RandomCrop(crop_size, cat_max_ratio)``: up to 10 random crops until no class covers more than
    ``cat_max_ratio`` of the crop's labelled pixels (and at least two classes occur); else the last try.
    Crops smaller images to their own size (padding comes later)."""

    def __init__(self, crop_size: Tuple[int, int], cat_max_ratio: float = 1.0, ignore_label: int = 255,
                 max_tries: int = 10):
        super().__init__()
        self.crop_size, self.cat_max_ratio = tuple(crop_size), cat_max_ratio
        self.ignore_label, self.max_tries = ignore_label, max_tries

    def _random_crop(self, height: int, width: int) -> CropTransform:
        crop_h, crop_w = min(self.crop_size[0], height), min(self.crop_size[1], width)
        y0 = np.random.randint(height - crop_h + 1)
        x0 = np.random.randint(width - crop_w + 1)
        return CropTransform(x0, y0, crop_w, crop_h)

    def get_transform(self, image: np.ndarray, sem_seg: np.ndarray) -> Transform:
        height, width = image.shape[:2]
        crop = self._random_crop(height, width)
        if self.cat_max_ratio >= 1.0:
            return crop
        for _ in range(self.max_tries):
            window = sem_seg[crop.y0 : crop.y0 + crop.h, crop.x0 : crop.x0 + crop.w]
            counts = np.bincount(window.ravel(), minlength=256)
            if len(counts) > self.ignore_label:
                counts[self.ignore_label] = 0
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() < self.cat_max_ratio * counts.sum():
                break
            crop = self._random_crop(height, width)
        return crop


class PadCenteredAndResize(Augmentation):
    """Pad a (random) crop up to ``crop_size`` and resize it to ``output_size`` — the FAMix release's SYNTHIA crop
    (utils/get_dataset.py: ``RandomSizeAndCrop(720)`` then ``ExtResize(768)``). The padding is RobustNet's
    ``RandomCrop(nopad=False)``: (size - n) // 2 + 1 pixels on each side of a side n shorter than the crop, then a
    random crop, so the image sits about centred (image 0, label ``ignore_label``). Bilinear / nearest resize."""

    def __init__(self, crop_size: Tuple[int, int], output_size: Tuple[int, int], ignore_label: int = 255):
        super().__init__()
        self.crop_size, self.output_size, self.ignore_label = tuple(crop_size), tuple(output_size), ignore_label

    @staticmethod
    def _pad_before(size: int, target: int) -> int:
        if size >= target:
            return 0
        pad = (target - size) // 2 + 1
        return pad - np.random.randint(size + 2 * pad - target + 1)

    def get_transform(self, image: np.ndarray) -> Transform:
        height, width = image.shape[:2]
        crop_h, crop_w = max(self.crop_size[0], height), max(self.crop_size[1], width)
        top, left = self._pad_before(height, crop_h), self._pad_before(width, crop_w)
        pad = T.PadTransform(left, top, crop_w - width - left, crop_h - height - top, width, height,
                             pad_value=0, seg_pad_value=self.ignore_label)
        return T.TransformList([pad, CV2ResizeTransform(crop_h, crop_w, *self.output_size)])


def _blend(image: np.ndarray, other, factor: float) -> np.ndarray:
    """factor * image + (1 - factor) * other, clipped to 0..255 (float32)."""
    return np.clip(factor * image + (1.0 - factor) * other, 0, 255)


def _gray(image_rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)[..., None]


class _ImageOnlyTransform(T.ColorTransform):
    """A sampled colour change of the image (uint8 in, uint8 out); label maps pass unchanged."""

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        out = self.op(img.astype(np.float32))
        return np.round(out).astype(np.uint8) if img.dtype == np.uint8 else out


class PhotometricDistortion(Augmentation):
    """mmseg ``PhotoMetricDistortion`` on uint8 images: each step with probability 0.5 — brightness delta
    U(-32, 32); contrast U(0.5, 1.5) (before or after the HSV steps, at random); saturation U(0.5, 1.5); hue shift
    in [-18, 18) in OpenCV's 8-bit hue units (0..180, wrapping). Like mmseg, every step clips to 0..255 and
    truncates to uint8; each is a per-value map, so it runs as a 256-entry lookup table (``cv2.LUT``)."""

    def __init__(self, brightness_delta: int = 32, contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5),
                 hue_delta: int = 18):
        super().__init__()
        self.brightness_delta, self.hue_delta = brightness_delta, hue_delta
        self.contrast_range, self.saturation_range = tuple(contrast_range), tuple(saturation_range)

    @staticmethod
    def _affine_lut(alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(np.arange(256, dtype=np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def get_transform(self, image: np.ndarray) -> Transform:
        rand = np.random
        identity = np.arange(256, dtype=np.uint8)
        brightness = self._affine_lut(beta=rand.uniform(-self.brightness_delta, self.brightness_delta)) if (
            rand.randint(2)) else identity
        contrast_first = rand.randint(2) == 1
        contrast = self._affine_lut(alpha=rand.uniform(*self.contrast_range)) if rand.randint(2) else None
        saturation = self._affine_lut(alpha=rand.uniform(*self.saturation_range)) if rand.randint(2) else None
        hue = ((identity.astype(np.int32) + rand.randint(-self.hue_delta, self.hue_delta)) % 180).astype(
            np.uint8) if rand.randint(2) else None
        before_hsv = contrast[brightness] if contrast_first and contrast is not None else brightness
        after_hsv = contrast if not contrast_first else None

        def distort(img: np.ndarray) -> np.ndarray:  # uint8 RGB
            img = cv2.LUT(img, before_hsv)
            for channel, lut in ((1, saturation), (0, hue)):  # two HSV round trips, as mmseg
                if lut is not None:
                    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
                    hsv[..., channel] = cv2.LUT(hsv[..., channel], lut)
                    img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
            if after_hsv is not None:
                img = cv2.LUT(img, after_hsv)
            return img

        return T.ColorTransform(distort)


class ColorJitter(Augmentation):
    """torchvision ``ColorJitter(brightness, contrast, saturation, hue)`` (FAMix: 0.8, 0.8, 0.8, 0): factors
    drawn from [max(0, 1 - v), 1 + v] (hue from [-h, h] of a turn), applied in a random order."""

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0):
        super().__init__()
        if not 0 <= hue <= 0.5:
            raise ValueError(f"INPUT.COLOR_JITTER hue must be in [0, 0.5], got {hue}")
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue

    def get_transform(self, image: np.ndarray) -> Transform:
        rand = np.random
        order = rand.permutation(4)
        factors = [rand.uniform(max(0.0, 1 - v), 1 + v) if v > 0 else None
                   for v in (self.brightness, self.contrast, self.saturation)]
        hue = rand.uniform(-self.hue, self.hue) if self.hue > 0 else None

        def jitter(img: np.ndarray) -> np.ndarray:  # float32 RGB 0..255
            for step in order:
                if step == 0 and factors[0] is not None:
                    img = _blend(img, 0.0, factors[0])
                elif step == 1 and factors[1] is not None:
                    img = _blend(img, float(_gray(img.astype(np.uint8)).mean()), factors[1])
                elif step == 2 and factors[2] is not None:
                    img = _blend(img, _gray(img.astype(np.uint8)).astype(np.float32), factors[2])
                elif step == 3 and hue is not None:
                    hsv = cv2.cvtColor(img.astype(np.uint8), cv2.COLOR_RGB2HSV_FULL)
                    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(round(hue * 255))) % 256
                    img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL).astype(np.float32)
            return img

        if all(f is None for f in factors) and hue is None:
            return NoOpTransform()
        return _ImageOnlyTransform(jitter)
