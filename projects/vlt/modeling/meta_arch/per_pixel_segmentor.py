"""Per-pixel segmentor: backbone (optionally with FAMix style mixing) + a per-pixel head such as DeepLabv3+."""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from torch import nn

from .inference import tta_inference

__all__ = ["PerPixelSegmentor"]


@META_ARCH_REGISTRY.register()
class PerPixelSegmentor(nn.Module):
    """Backbone + per-pixel head (logits [B, K, h, w], ``head.losses(logits, labels)``); FAMix mixer when training.

    Inputs follow D2 ("image" uint8 RGB [3, H, W], "sem_seg" int64 [H, W] when training, "height"/"width");
    outputs when not training: [{"sem_seg": [K, height, width] class probabilities}].
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        sem_seg_head: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int,
        ignore_value: int = 255,
        style_mixer: Optional[nn.Module] = None,
        test_mode: str = "whole",
        slide_crop_size: Tuple[int, int] = (512, 512),
        slide_stride: Tuple[int, int] = (341, 341),
        test_flip: bool = False,
        test_scales: Sequence[float] = (1.0,),
    ):
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.style_mixer = style_mixer  # also a hook inside the backbone; kept here to hand it the labels
        self.size_divisibility, self.ignore_value = size_divisibility, ignore_value
        self.test_mode = test_mode
        self.slide_crop_size, self.slide_stride = tuple(slide_crop_size), tuple(slide_stride)
        self.test_flip, self.test_scales = test_flip, tuple(test_scales)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, cfg):
        from ..adapters.famix import build_famix_mixer

        backbone = build_backbone(cfg)
        mixer = build_famix_mixer(cfg, backbone)
        if cfg.MODEL.OPEN_CLIP.PIXEL_STATS_FROM_MODEL and getattr(backbone, "pixel_mean", ()):
            pixel_mean, pixel_std = backbone.pixel_mean, backbone.pixel_std
        else:
            pixel_mean, pixel_std = cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD
        return {
            "backbone": backbone,
            "sem_seg_head": build_sem_seg_head(cfg, backbone.output_shape()),
            "pixel_mean": pixel_mean,
            "pixel_std": pixel_std,
            "size_divisibility": backbone.size_divisibility,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "style_mixer": mixer,
            "test_mode": cfg.TEST.MODE,
            "slide_crop_size": cfg.TEST.SLIDE.CROP_SIZE,
            "slide_stride": cfg.TEST.SLIDE.STRIDE,
            "test_flip": cfg.TEST.FLIP,
            "test_scales": cfg.TEST.SCALES,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def normalize(self, batched_inputs: List[Dict]) -> List[torch.Tensor]:
        return [(x["image"].to(self.device).float() - self.pixel_mean) / self.pixel_std for x in batched_inputs]

    def semantic_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits [B, K, H, W] for normalized images of any size (padded internally)."""
        height, width = images.shape[-2:]
        div = self.size_divisibility
        pad_h, pad_w = (-height) % div, (-width) % div
        padded = F.pad(images, (0, pad_w, 0, pad_h)) if (pad_h or pad_w) else images
        logits = self.sem_seg_head(self.backbone(padded))
        logits = F.interpolate(logits, size=padded.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :height, :width]

    def forward(self, batched_inputs: List[Dict]):
        if self.training:
            return self.losses(batched_inputs)
        return self.inference(batched_inputs)

    def losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        if "sem_seg" not in batched_inputs[0]:
            raise KeyError("Training inputs need 'sem_seg' (use the semantic-segmentation train mapper)")
        images = ImageList.from_tensors(self.normalize(batched_inputs), self.size_divisibility).tensor
        labels = ImageList.from_tensors(
            [x["sem_seg"].to(self.device) for x in batched_inputs], self.size_divisibility, pad_value=self.ignore_value
        ).tensor
        if self.style_mixer is not None:
            self.style_mixer.set_targets(labels)
        try:
            logits = self.sem_seg_head(self.backbone(images))
        finally:
            if self.style_mixer is not None:
                self.style_mixer.clear_targets()
        return self.sem_seg_head.losses(logits, labels)

    @torch.no_grad()
    def inference(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        results = []
        for x, image in zip(batched_inputs, self.normalize(batched_inputs)):
            scores = tta_inference(
                self.semantic_logits, image.unsqueeze(0), self.sem_seg_head.num_classes, mode=self.test_mode,
                scales=self.test_scales, flip=self.test_flip, crop_size=self.slide_crop_size,
                stride=self.slide_stride, softmax=True,
            )[0]
            height, width = x.get("height", image.shape[-2]), x.get("width", image.shape[-1])
            results.append({"sem_seg": sem_seg_postprocess(scores, image.shape[-2:], height, width)})
        return results
