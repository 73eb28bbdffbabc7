"""VLTSeg: an open_clip tower fine-tuned end to end with a Mask2Former head (Hümmer et al., ACCV 2024, §3).

The segmentor wires the backbone (optionally wrapped by Rein or FAMix), the Mask2Former head and criterion, and
semantic inference (whole image, sliding window, flip / multi-scale TTA) at the dataset's test resolution.
"""
import logging
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
class VLTSegmentor(SemanticSegmentorBase):
    """Backbone + Mask2Former for semantic segmentation, trained with Mask2Former's set criterion; inputs and outputs
    as ``SemanticSegmentorBase`` ("sem_seg": [K, height, width] class scores)."""

    # Mask2Former's semantic scores (softmax classes x sigmoid masks) are averaged without another softmax.
    SCORES_ARE_PROBABILITIES = True

    @configurable
    def __init__(self, *, criterion: nn.Module, rein: Optional[nn.Module] = None, **kwargs):
        """``criterion``: Mask2Former's set criterion; ``rein``: Rein (its tokens give the queries), or None; the
        rest as ``SemanticSegmentorBase``."""
        super().__init__(**kwargs)
        self.criterion = criterion
        self.rein = rein

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
        """The criterion's buffers (rebuilt from the config), and with Rein's linking the head's free query
        embeddings, which the linked tokens replace (official Rein checkpoints have none)."""
        keys = [f"criterion.{k}" for k in self.criterion.state_dict()]
        if self.rein is not None and self.rein.query_feat_proj is not None:
            keys += [f"sem_seg_head.predictor.{k}.weight" for k in ("query_embed", "query_feat")]
        return keys

    def predict_masks(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Backbone + head on normalized images [B, 3, H, W] (H, W multiples of size_divisibility)."""
        features = self.backbone(images)
        queries = self.rein.linked_queries(images.shape[0]) if self.rein is not None else None
        return self.sem_seg_head(features, queries=queries)

    def padded_scores(self, images: torch.Tensor) -> torch.Tensor:
        outputs = self.predict_masks(images)
        masks = F.interpolate(outputs["pred_masks"], size=images.shape[-2:], mode="bilinear", align_corners=False)
        return torch.stack([semantic_inference(c, m) for c, m in zip(outputs["pred_logits"], masks)])

    def losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        """Mask2Former's set losses (class CE, mask BCE, dice; deep supervision), weighted."""
        images, labels = self.padded_batch(batched_inputs)
        targets = [targets_from_sem_seg(label, self.ignore_value) for label in labels]
        losses = self.criterion(self.predict_masks(images), targets)
        weights = self.criterion.weight_dict
        unknown = [k for k in losses if k not in weights]
        if unknown:
            raise KeyError(f"Criterion returned losses without a weight: {unknown}")
        return {k: v * weights[k] for k, v in losses.items()}
