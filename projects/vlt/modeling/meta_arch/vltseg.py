"""VLTSeg: an open_clip tower fine-tuned end to end with a Mask2Former head (Hümmer et al., ACCV 2024, §3).

The segmentor wires the backbone (optionally wrapped by Rein or FAMix), the Mask2Former head and criterion, and
semantic inference (whole image, sliding window, flip / multi-scale TTA) at the dataset's test resolution.
"""
import logging
import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from torch import nn

from ..seg import build_mask2former_criterion, semantic_inference, targets_from_sem_seg
from .segmentor_base import SemanticSegmentorBase

logger = logging.getLogger(__name__)

__all__ = ["VLTSegmentor"]


def padding_divisibility(head_divisibility: int, backbone_divisibility: int) -> int:
    """What inputs are padded to a multiple of: Mask2Former's SIZE_DIVISIBILITY (32) and the backbone's own (32 for
    the nominal strides of 'taps', whatever the patch size), their least common multiple; ``head_divisibility`` <= 0:
    the backbone's."""
    if head_divisibility <= 0 or backbone_divisibility <= 0:
        return max(head_divisibility, backbone_divisibility, 0)
    return math.lcm(head_divisibility, backbone_divisibility)


@META_ARCH_REGISTRY.register()
class VLTSegmentor(SemanticSegmentorBase):
    """Backbone + Mask2Former for semantic segmentation, trained with Mask2Former's set criterion; inputs and outputs
    as ``SemanticSegmentorBase`` ("sem_seg": [K, height, width] class scores)."""

    # Mask2Former's semantic scores (softmax classes x sigmoid masks) are averaged without another softmax.
    SCORES_ARE_PROBABILITIES = True

    @configurable
    def __init__(self, *, criterion: nn.Module, rein: Optional[nn.Module] = None, **kwargs):
        """``criterion``: Mask2Former's set criterion; ``rein``: Rein's query link (the backbone's Rein hook returns
        the linked queries, this turns them into the head's queries), or None; the rest as
        ``SemanticSegmentorBase``."""
        super().__init__(**kwargs)
        self.criterion = criterion
        self.rein = rein
        if rein is not None:  # the linked queries replace the learnable ones: do not keep them untrained
            self.sem_seg_head.predictor.remove_learnable_queries()

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        rein = None
        if cfg.MODEL.REIN.ENABLED:
            from ..adapters.rein import build_rein

            rein = build_rein(cfg, backbone)
        return {
            **cls.shared_config(cfg, backbone),
            "backbone": backbone,
            "sem_seg_head": build_sem_seg_head(cfg, backbone.output_shape()),
            "criterion": build_mask2former_criterion(cfg),
            "rein": rein,
            "size_divisibility": padding_divisibility(
                cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY, backbone.size_divisibility
            ),
        }

    def checkpoint_optional_keys(self) -> List[str]:
        """The criterion's buffers (rebuilt from the config)."""
        return [f"criterion.{k}" for k in self.criterion.state_dict()]

    def predict_masks(self, images: torch.Tensor, context: Optional[Dict] = None) -> Dict[str, torch.Tensor]:
        """Backbone + head on normalized images [B, 3, H, W] (H, W multiples of size_divisibility); ``context`` goes
        to the backbone's hooks (labels for FAMix while training)."""
        features, extras = self.backbone.forward_with_extras(images, context)
        queries = None
        if self.rein is not None:
            queries = self.rein(extras["linked_queries"], images.shape[0])
        return self.sem_seg_head(features, queries=queries)

    def padded_scores(self, images: torch.Tensor) -> torch.Tensor:
        outputs = self.predict_masks(images)
        masks = F.interpolate(outputs["pred_masks"], size=images.shape[-2:], mode="bilinear", align_corners=False)
        return torch.stack([semantic_inference(c, m) for c, m in zip(outputs["pred_logits"], masks)])

    def losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        """Mask2Former's set losses (class CE, mask BCE, dice; deep supervision), weighted."""
        images, labels = self.padded_batch(batched_inputs)
        targets = [targets_from_sem_seg(label, self.ignore_value) for label in labels]
        losses = self.criterion(self.predict_masks(images, {"sem_seg": labels}), targets)
        weights = self.criterion.weight_dict
        unknown = [k for k in losses if k not in weights]
        if unknown:
            raise KeyError(f"Criterion returned losses without a weight: {unknown}")
        return {k: v * weights[k] for k, v in losses.items()}
