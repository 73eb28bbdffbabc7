"""What VLT's semantic segmentors share: Detectron2's input / output conventions, pixel normalisation, padding, and
whole-image / sliding-window / multi-scale + flip inference (inference.py)."""
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from torch import nn

from .inference import tta_inference

__all__ = ["SemanticSegmentorBase"]


class SemanticSegmentorBase(nn.Module):
    """Backbone + segmentation head with D2's conventions.

    Inputs: a list of dicts with "image" (uint8 [3, H, W], RGB), "sem_seg" (int64 [H, W], train ids, 255 = ignore)
    when training, and "height"/"width" (the size predictions are returned at). Outputs when not training: a list of
    {"sem_seg": [K, height, width] class probabilities}.

    Subclasses implement ``losses(batched_inputs)`` and ``padded_scores(images)`` (per-pixel class scores at the
    size of a padded batch); ``SCORES_ARE_PROBABILITIES`` says whether those scores need a softmax before the
    test-time ensemble.
    """

    SCORES_ARE_PROBABILITIES = False

    def __init__(
        self,
        *,
        backbone: nn.Module,
        sem_seg_head: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int,
        ignore_value: int = 255,
        test_mode: str = "whole",
        slide_crop_size: Tuple[int, int] = (512, 512),
        slide_stride: Tuple[int, int] = (341, 341),
        slide_windows_per_batch: int = 1,
        test_flip: bool = False,
        test_scales: Sequence[float] = (1.0,),
    ):
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.size_divisibility, self.ignore_value = size_divisibility, ignore_value
        self.test_mode = test_mode
        self.slide_crop_size, self.slide_stride = tuple(slide_crop_size), tuple(slide_stride)
        self.slide_windows_per_batch = slide_windows_per_batch
        self.test_flip, self.test_scales = test_flip, tuple(test_scales)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    @staticmethod
    def shared_config(cfg, backbone: nn.Module) -> Dict:
        """Constructor arguments every segmentor reads the same way: pixel statistics (the tower's pretraining
        ones unless MODEL.OPEN_CLIP.PIXEL_STATS_FROM_MODEL is off), the ignore value and the TEST.* inference keys."""
        if cfg.MODEL.OPEN_CLIP.PIXEL_STATS_FROM_MODEL and getattr(backbone, "pixel_mean", ()):
            pixel_mean, pixel_std = backbone.pixel_mean, backbone.pixel_std
        else:
            pixel_mean, pixel_std = cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD
        return {
            "pixel_mean": pixel_mean,
            "pixel_std": pixel_std,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "test_mode": cfg.TEST.MODE,
            "slide_crop_size": cfg.TEST.SLIDE.CROP_SIZE,
            "slide_stride": cfg.TEST.SLIDE.STRIDE,
            "slide_windows_per_batch": cfg.TEST.SLIDE.WINDOWS_PER_BATCH,
            "test_flip": cfg.TEST.FLIP,
            "test_scales": cfg.TEST.SCALES,
        }

    def checkpoint_optional_keys(self) -> List[str]:
        """State-dict keys a checkpoint may lack without changing predictions (see engine/checkpoint.py)."""
        return []

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def normalize(self, batched_inputs: List[Dict]) -> List[torch.Tensor]:
        return [(x["image"].to(self.device).float() - self.pixel_mean) / self.pixel_std for x in batched_inputs]

    def padded_batch(self, batched_inputs: List[Dict]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Normalized images [B, 3, H, W] and labels [B, H, W] (padded with the ignore value), both padded to a
        multiple of ``size_divisibility``. Padding is 0 after normalisation (the pixel mean), also where the mapper
        padded a crop to the crop size (pixels outside an input's ``valid_hw``), as mmseg / Mask2Former pad."""
        if "sem_seg" not in batched_inputs[0]:
            raise KeyError("Training inputs need 'sem_seg' (use the semantic-segmentation train mapper)")
        normalized = self.normalize(batched_inputs)
        for x, image in zip(batched_inputs, normalized):
            if "valid_hw" in x:
                height, width = x["valid_hw"]
                image[:, height:, :] = 0.0
                image[:, :, width:] = 0.0
        images = ImageList.from_tensors(normalized, self.size_divisibility).tensor
        labels = ImageList.from_tensors(
            [x["sem_seg"].to(self.device) for x in batched_inputs], self.size_divisibility, pad_value=self.ignore_value
        ).tensor
        return images, labels

    def padded_scores(self, images: torch.Tensor) -> torch.Tensor:
        """Per-pixel class scores [B, K, H, W] for normalized images whose H, W are multiples of size_divisibility."""
        raise NotImplementedError

    def semantic_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Per-pixel class scores [B, K, H, W] for normalized images of any size (zero-padded, then cropped back)."""
        height, width = images.shape[-2:]
        div = self.size_divisibility
        pad_h, pad_w = (-height) % div, (-width) % div
        padded = F.pad(images, (0, pad_w, 0, pad_h)) if (pad_h or pad_w) else images
        return self.padded_scores(padded)[..., :height, :width]

    def forward(self, batched_inputs: List[Dict]):
        if self.training:
            return self.losses(batched_inputs)
        return self.inference(batched_inputs)

    @torch.no_grad()
    def inference(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        results = []
        for x, image in zip(batched_inputs, self.normalize(batched_inputs)):
            scores = tta_inference(
                self.semantic_logits, image.unsqueeze(0), self.sem_seg_head.num_classes, mode=self.test_mode,
                scales=self.test_scales, flip=self.test_flip, crop_size=self.slide_crop_size,
                stride=self.slide_stride, windows_per_batch=self.slide_windows_per_batch,
                softmax=not self.SCORES_ARE_PROBABILITIES,
            )[0]
            height, width = x.get("height", image.shape[-2]), x.get("width", image.shape[-1])
            results.append({"sem_seg": sem_seg_postprocess(scores, image.shape[-2:], height, width)})
        return results
