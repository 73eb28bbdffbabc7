"""Per-pixel segmentor: backbone (optionally with FAMix style mixing) + a per-pixel head such as DeepLabv3+."""
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from torch import nn

from .segmentor_base import SemanticSegmentorBase

__all__ = ["PerPixelSegmentor"]


@META_ARCH_REGISTRY.register()
class PerPixelSegmentor(SemanticSegmentorBase):
    """Backbone + per-pixel head (logits [B, K, h, w], ``head.losses(logits, labels)``); FAMix mixer when training.
    Inputs and outputs as ``SemanticSegmentorBase`` ("sem_seg": [K, height, width] class probabilities)."""

    @configurable
    def __init__(self, *, style_mixer: Optional[nn.Module] = None, **kwargs):
        """``style_mixer``: FAMix's mixer (also a hook inside the backbone; kept here to hand it the labels), or
        None; the rest as ``SemanticSegmentorBase``."""
        super().__init__(**kwargs)
        self.style_mixer = style_mixer

    @classmethod
    def from_config(cls, cfg):
        from ..adapters.famix import build_famix_mixer

        backbone = build_backbone(cfg)
        return {
            **cls.shared_config(cfg, backbone),
            "backbone": backbone,
            "sem_seg_head": build_sem_seg_head(cfg, backbone.output_shape()),
            "size_divisibility": backbone.size_divisibility,
            "style_mixer": build_famix_mixer(cfg, backbone),
        }

    def padded_scores(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.sem_seg_head(self.backbone(images))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        images, labels = self.padded_batch(batched_inputs)
        if self.style_mixer is not None:
            self.style_mixer.set_targets(labels)
        try:
            logits = self.sem_seg_head(self.backbone(images))
        finally:
            if self.style_mixer is not None:
                self.style_mixer.clear_targets()
        return self.sem_seg_head.losses(logits, labels)
