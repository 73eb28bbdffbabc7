"""Test-time inference for dense prediction: whole image, sliding window, flip and multi-scale.

Model-agnostic: every function takes ``logits_fn(images) -> scores``, where ``images`` is a normalized
float batch [B, 3, h, w] and ``scores`` the per-pixel class scores [B, K, h, w] at the same h, w (logits or
probabilities; the meta-architecture decides, see ``softmax`` in :func:`tta_inference`).

The sliding window follows mmsegmentation's ``EncoderDecoder.slide_inference``: window grid
``rows = max(H - crop_h + stride_h - 1, 0) // stride_h + 1`` (same for columns), the last window of a row or
column aligned to the border, and every pixel's scores averaged over the windows that cover it.
Multi-scale / flip test-time augmentation follows mmsegmentation's ``aug_test``: the image is resized by each
scale (``int(side * scale + 0.5)``), optionally flipped horizontally, predicted, resized back to the output
size, turned into probabilities, and the probabilities are averaged.
"""
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "whole_inference",
    "sliding_window_inference",
    "sliding_window_grid",
    "tta_inference",
]

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


def _pair(value, name: str) -> Tuple[int, int]:
    """(h, w) from an int or a pair of positive ints; raises with ``name`` otherwise."""
    if isinstance(value, int):
        value = (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2 or min(value) <= 0:
        raise ValueError(f"{name} must be a positive int or a pair (h, w) of positive ints, got {value}")
    return value


def _pad_bottom_right(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Zero-pad [B, C, h, w] at the bottom and right to [B, C, height, width] (0 = mean pixel, normalized)."""
    pad_h, pad_w = height - images.shape[-2], width - images.shape[-1]
    if pad_h == 0 and pad_w == 0:
        return images
    return F.pad(images, (0, pad_w, 0, pad_h))


def _call(logits_fn: LogitsFn, images: torch.Tensor) -> torch.Tensor:
    """logits_fn(images), checked to return [B, K, h, w] at the input's batch size and resolution."""
    scores = logits_fn(images)
    if scores.dim() != 4 or scores.shape[0] != images.shape[0] or scores.shape[-2:] != images.shape[-2:]:
        raise ValueError(
            f"logits_fn must return per-pixel scores [B, K, h, w] matching its input [B, 3, h, w] = "
            f"{tuple(images.shape)}, got {tuple(scores.shape)}"
        )
    return scores


def _resize(scores: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    if tuple(scores.shape[-2:]) == tuple(size):
        return scores
    return F.interpolate(scores, size=size, mode="bilinear", align_corners=False)


def whole_inference(
    logits_fn: LogitsFn,
    images: torch.Tensor,
    out_size: Optional[Sequence[int]] = None,
    size_divisibility: int = 0,
) -> torch.Tensor:
    """Scores of the whole image in one pass: [B, K, H, W], or [B, K, *out_size] resized bilinearly.

    Args:
        logits_fn: normalized images [B, 3, h, w] -> scores [B, K, h, w].
        images: [B, 3, H, W] normalized float.
        out_size: (height, width) to resize the scores to (default: the input size).
        size_divisibility: if > 0, the image is zero-padded at the bottom/right to a multiple of it before
            ``logits_fn`` and the scores are cropped back (for towers that need e.g. multiples of 32).
    """
    height, width = images.shape[-2:]
    if size_divisibility > 0:
        d = size_divisibility
        images = _pad_bottom_right(images, -(-height // d) * d, -(-width // d) * d)
    scores = _call(logits_fn, images)[..., :height, :width]
    return _resize(scores, tuple(out_size) if out_size is not None else (height, width))


def sliding_window_grid(
    height: int, width: int, crop_size: Sequence[int], stride: Sequence[int]
) -> Tuple[List[Tuple[int, int]], List[Tuple[int, int]]]:
    """Row intervals and column intervals [start, end) of the sliding-window grid (mmseg slide_inference).

    Windows are the Cartesian product of the two lists. The last window of each axis ends at the border;
    an axis shorter than the crop has one window covering all of it.
    """
    crop_h, crop_w = _pair(crop_size, "crop_size")
    stride_h, stride_w = _pair(stride, "stride")
    if stride_h > crop_h or stride_w > crop_w:
        raise ValueError(f"stride {stride} larger than crop_size {crop_size} would leave pixels uncovered")

    def intervals(size, crop, step):
        num = max(size - crop + step - 1, 0) // step + 1
        out = []
        for i in range(num):
            end = min(i * step + crop, size)
            out.append((max(end - crop, 0), end))
        return out

    return intervals(height, crop_h, stride_h), intervals(width, crop_w, stride_w)


def sliding_window_inference(
    logits_fn: LogitsFn,
    images: torch.Tensor,
    num_classes: int,
    crop_size: Sequence[int],
    stride: Sequence[int],
    out_size: Optional[Sequence[int]] = None,
    windows_per_batch: int = 1,
) -> torch.Tensor:
    """Scores [B, K, H, W] averaged over overlapping crop_size windows (mmseg ``slide_inference``).

    Windows are ``crop_size``, except along an axis shorter than the crop, where the one window is the whole axis
    and is passed as it is (not padded up to the crop, as mmseg passes it; ``logits_fn`` pads to its own size
    divisibility). All windows of an image have the same size. Scores are accumulated in float32 and divided by the
    number of windows covering each pixel.

    Args:
        logits_fn: normalized images [n, 3, h, w] -> scores [n, K, h, w] (h, w = the window size).
        images: [B, 3, H, W] normalized float.
        num_classes: K.
        crop_size, stride: (h, w) of the window and of the step between windows (stride <= crop).
        out_size: (height, width) to resize the averaged scores to (default: the input size).
        windows_per_batch: windows of one image passed to ``logits_fn`` together (concatenated along the batch
            axis; ``windows_per_batch * B`` crops per call). 1 reproduces mmseg's one-window-at-a-time loop.
    """
    batch, _, height, width = images.shape
    rows, cols = sliding_window_grid(height, width, _pair(crop_size, "crop_size"), stride)
    windows = [(y0, y1, x0, x1) for (y0, y1) in rows for (x0, x1) in cols]
    if windows_per_batch < 1:
        raise ValueError(f"windows_per_batch must be >= 1, got {windows_per_batch}")

    scores = images.new_zeros((batch, num_classes, height, width), dtype=torch.float32)
    for first in range(0, len(windows), windows_per_batch):
        group = windows[first : first + windows_per_batch]
        crops = torch.cat([images[:, :, y0:y1, x0:x1] for (y0, y1, x0, x1) in group])
        # [len(group) * B, 3, min(crop_h, H), min(crop_w, W)], window-major
        crop_scores = _call(logits_fn, crops)
        if crop_scores.shape[1] != num_classes:
            raise ValueError(f"logits_fn returned {crop_scores.shape[1]} classes, expected {num_classes}")
        for i, (y0, y1, x0, x1) in enumerate(group):
            scores[:, :, y0:y1, x0:x1] += crop_scores[i * batch : (i + 1) * batch]

    # Windows form a grid, so the coverage count of pixel (y, x) is (#row windows over y) * (#col windows over x).
    row_count = images.new_zeros(height, dtype=torch.float32)
    col_count = images.new_zeros(width, dtype=torch.float32)
    for y0, y1 in rows:
        row_count[y0:y1] += 1
    for x0, x1 in cols:
        col_count[x0:x1] += 1
    scores /= row_count[:, None] * col_count[None, :]  # [H, W] broadcast over [B, K]
    return _resize(scores, tuple(out_size) if out_size is not None else (height, width))


def tta_inference(
    logits_fn: LogitsFn,
    images: torch.Tensor,
    num_classes: int,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    mode: str = "whole",
    crop_size: Optional[Sequence[int]] = None,
    stride: Optional[Sequence[int]] = None,
    out_size: Optional[Sequence[int]] = None,
    softmax: bool = True,
    size_divisibility: int = 0,
    windows_per_batch: int = 1,
) -> torch.Tensor:
    """Class probabilities [B, K, *out_size] averaged over scales and horizontal flips (mmseg ``aug_test``).

    For each scale s the images are resized bilinearly to ``int(H * s + 0.5) x int(W * s + 0.5)``, predicted
    with ``mode`` ("whole": :func:`whole_inference`; "slide": :func:`sliding_window_inference` with
    ``crop_size``/``stride`` at that scale), and, with ``flip``, also predicted mirrored and mirrored back.
    Each prediction is resized to ``out_size`` (default: the input size), turned into probabilities
    (softmax over classes if ``softmax``; pass ``softmax=False`` when ``logits_fn`` already returns
    probabilities, e.g. Mask2Former's semantic inference), and all are averaged.
    With ``scales=(1.0,)`` and no flip this is a single whole/slide pass.
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
    if mode == "slide" and (crop_size is None or stride is None):
        raise ValueError("mode='slide' needs crop_size and stride")
    if len(scales) == 0 or min(scales) <= 0:
        raise ValueError(f"scales must be a non-empty list of positive factors, got {list(scales)}")
    height, width = images.shape[-2:]
    out_size = tuple(out_size) if out_size is not None else (height, width)

    def predict(x):
        if mode == "slide":
            return sliding_window_inference(
                logits_fn, x, num_classes, crop_size, stride, windows_per_batch=windows_per_batch
            )
        return whole_inference(logits_fn, x, size_divisibility=size_divisibility)

    total, count = None, 0
    for scale in scales:
        size = (int(height * scale + 0.5), int(width * scale + 0.5))
        scaled = _resize(images, size)
        for flipped in (False, True) if flip else (False,):
            scores = predict(scaled.flip(-1)) if flipped else predict(scaled)
            scores = _resize(scores.flip(-1) if flipped else scores, out_size).float()
            if softmax:
                scores = scores.softmax(dim=1)
            total = scores if total is None else total.add_(scores)
            count += 1
    return total / count if count > 1 else total

