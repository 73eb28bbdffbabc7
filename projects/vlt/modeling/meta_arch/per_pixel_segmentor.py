"""Per-pixel segmentor: backbone (optionally with FAMix style mixing) + a per-pixel head such as DeepLabv3+."""
from typing import Dict, List

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head

from .segmentor_base import SemanticSegmentorBase

__all__ = ["PerPixelSegmentor"]


@META_ARCH_REGISTRY.register()
class PerPixelSegmentor(SemanticSegmentorBase):
    """Backbone + per-pixel head (logits [B, K, h, w], ``head.losses(logits, labels)``); FAMix's mixer, a hook of
    the backbone, restyles features when training (the labels reach it through the backbone call's ``context``).
    Inputs and outputs as ``SemanticSegmentorBase`` ("sem_seg": [K, height, width] class probabilities)."""

    @configurable
    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    @classmethod
    def from_config(cls, cfg):
        from ..adapters.famix import build_famix_mixer

        backbone = build_backbone(cfg)
        build_famix_mixer(cfg, backbone)  # hooks the mixer into the backbone when MODEL.FAMIX.ENABLED
        return {
            **cls.shared_config(cfg, backbone),
            "backbone": backbone,
            "sem_seg_head": build_sem_seg_head(cfg, backbone.output_shape()),
            "size_divisibility": backbone.size_divisibility,
        }

    def padded_scores(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.sem_seg_head(self.backbone(images))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        images, labels = self.padded_batch(batched_inputs)
        features, _ = self.backbone.forward_with_extras(images, {"sem_seg": labels})
        return self.sem_seg_head.losses(self.sem_seg_head(features), labels)
