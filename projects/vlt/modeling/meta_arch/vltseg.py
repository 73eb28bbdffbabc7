"""VLTSeg: an open_clip tower fine-tuned end to end with a Mask2Former head (Hümmer et al., ACCV 2024, §3).

The segmentor wires the backbone (optionally wrapped by Rein or FAMix), the Mask2Former head and criterion, and
semantic inference (whole image, sliding window, flip / multi-scale TTA) at the dataset's test resolution.
"""
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from torch import nn

from ..seg import build_mask2former_criterion, semantic_inference, targets_from_sem_seg
from .inference import tta_inference

logger = logging.getLogger(__name__)

__all__ = ["VLTSegmentor"]


def padding_divisibility(head_divisibility: int, backbone_divisibility: int) -> int:
    """What inputs are padded to a multiple of: Mask2Former's SIZE_DIVISIBILITY (32) when the backbone can take it
    (a multiple of the backbone's own, e.g. 2 x patch 16), else the backbone's (a native patch-14 tower: 28; 32 is no
    multiple of 14, and the lcm 224 would pad a 512 crop to 672). ``head_divisibility`` <= 0: the backbone's."""
    if head_divisibility <= 0 or backbone_divisibility <= 0:
        return max(head_divisibility, backbone_divisibility, 0)
    if head_divisibility % backbone_divisibility == 0:
        return head_divisibility
    logger.info("Padding inputs to multiples of %d (the backbone's), not MODEL.MASK_FORMER.SIZE_DIVISIBILITY %d",
                backbone_divisibility, head_divisibility)
    return backbone_divisibility


@META_ARCH_REGISTRY.register()
class VLTSegmentor(nn.Module):
    """Backbone + Mask2Former for semantic segmentation, trained with Mask2Former's set criterion.

    Inputs follow D2: a list of dicts with "image" (uint8 [3, H, W], RGB), "sem_seg" (int64 [H, W], train ids,
    255 = ignore) when training, and "height"/"width" (the size predictions are returned at).
    Outputs when not training: a list of {"sem_seg": [K, height, width] class scores}.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        sem_seg_head: nn.Module,
        criterion: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int,
        ignore_value: int = 255,
        rein: Optional[nn.Module] = None,
        test_mode: str = "whole",
        slide_crop_size: Tuple[int, int] = (512, 512),
        slide_stride: Tuple[int, int] = (341, 341),
        test_flip: bool = False,
        test_scales: Sequence[float] = (1.0,),
    ):
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.rein = rein
        self.size_divisibility = size_divisibility
        self.ignore_value = ignore_value
        self.test_mode = test_mode
        self.slide_crop_size, self.slide_stride = tuple(slide_crop_size), tuple(slide_stride)
        self.test_flip, self.test_scales = test_flip, tuple(test_scales)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        rein = None
        if cfg.MODEL.REIN.ENABLED:
            from ..adapters.rein import build_rein

            rein = build_rein(cfg, backbone)
        if cfg.MODEL.OPEN_CLIP.PIXEL_STATS_FROM_MODEL and getattr(backbone, "pixel_mean", ()):
            pixel_mean, pixel_std = backbone.pixel_mean, backbone.pixel_std
        else:
            pixel_mean, pixel_std = cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD
        return {
            "backbone": backbone,
            "sem_seg_head": build_sem_seg_head(cfg, backbone.output_shape()),
            "criterion": build_mask2former_criterion(cfg),
            "rein": rein,
            "pixel_mean": pixel_mean,
            "pixel_std": pixel_std,
            "size_divisibility": padding_divisibility(
                cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY, backbone.size_divisibility
            ),
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "test_mode": cfg.TEST.MODE,
            "slide_crop_size": cfg.TEST.SLIDE.CROP_SIZE,
            "slide_stride": cfg.TEST.SLIDE.STRIDE,
            "test_flip": cfg.TEST.FLIP,
            "test_scales": cfg.TEST.SCALES,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ----------------------------------------------------------------------------------------------------- #
    def predict_masks(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Backbone + head on normalized images [B, 3, H, W] (H, W multiples of size_divisibility)."""
        features = self.backbone(images)
        queries = self.rein.linked_queries(images.shape[0]) if self.rein is not None else None
        return self.sem_seg_head(features, queries=queries)

    def semantic_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Per-pixel class scores [B, K, H, W] for normalized images of any size (padded internally)."""
        height, width = images.shape[-2:]
        div = self.size_divisibility
        pad_h, pad_w = (-height) % div, (-width) % div
        padded = F.pad(images, (0, pad_w, 0, pad_h)) if (pad_h or pad_w) else images
        outputs = self.predict_masks(padded)
        masks = F.interpolate(outputs["pred_masks"], size=padded.shape[-2:], mode="bilinear", align_corners=False)
        masks = masks[..., :height, :width]
        return torch.stack([semantic_inference(c, m) for c, m in zip(outputs["pred_logits"], masks)])

    # ----------------------------------------------------------------------------------------------------- #
    def forward(self, batched_inputs: List[Dict]):
        if self.training:
            return self.losses(batched_inputs)
        return self.inference(batched_inputs)

    def normalize(self, batched_inputs: List[Dict]) -> List[torch.Tensor]:
        return [(x["image"].to(self.device).float() - self.pixel_mean) / self.pixel_std for x in batched_inputs]

    def losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        """Mask2Former's set losses (class CE, mask BCE, dice; deep supervision), weighted."""
        images = ImageList.from_tensors(self.normalize(batched_inputs), self.size_divisibility)
        if "sem_seg" not in batched_inputs[0]:
            raise KeyError("Training inputs need 'sem_seg' (use the semantic-segmentation train mapper)")
        labels = ImageList.from_tensors(
            [x["sem_seg"].to(self.device) for x in batched_inputs], self.size_divisibility, pad_value=self.ignore_value
        ).tensor
        targets = [targets_from_sem_seg(label, self.ignore_value) for label in labels]
        outputs = self.predict_masks(images.tensor)
        losses = self.criterion(outputs, targets)
        weights = self.criterion.weight_dict
        unknown = [k for k in losses if k not in weights]
        if unknown:
            raise KeyError(f"Criterion returned losses without a weight: {unknown}")
        return {k: v * weights[k] for k, v in losses.items()}

    @torch.no_grad()
    def inference(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        results = []
        for x, image in zip(batched_inputs, self.normalize(batched_inputs)):
            # Mask2Former's semantic scores are already probabilities: average them without a softmax.
            scores = tta_inference(
                self.semantic_logits, image.unsqueeze(0), self.sem_seg_head.num_classes, mode=self.test_mode,
                scales=self.test_scales, flip=self.test_flip, crop_size=self.slide_crop_size,
                stride=self.slide_stride, softmax=False,
            )[0]
            height, width = x.get("height", image.shape[-2]), x.get("width", image.shape[-1])
            results.append({"sem_seg": sem_seg_postprocess(scores, image.shape[-2:], height, width)})
        return results
