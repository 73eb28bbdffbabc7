"""Mask2Former's segmentation head: pixel decoder + masked-attention transformer decoder, registered as
``VLTMaskFormerHead`` (state-dict layout ``sem_seg_head.pixel_decoder.*``, ``sem_seg_head.predictor.*`` as the
official release)."""
from typing import Dict

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from .pixel_decoder import VLTMSDeformAttnPixelDecoder  # noqa: F401  (registers the pixel decoder)
from .transformer_decoder import TRANSFORMER_DECODER_REGISTRY


def build_pixel_decoder(cfg, input_shape):
    """The pixel decoder named by MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME (registered in SEM_SEG_HEADS_REGISTRY, as
    in Mask2Former)."""
    return SEM_SEG_HEADS_REGISTRY.get(cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME)(cfg, input_shape)


def build_transformer_decoder(cfg, in_channels, mask_classification=True):
    """The transformer decoder named by MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME."""
    name = cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME
    return TRANSFORMER_DECODER_REGISTRY.get(name)(cfg, in_channels, mask_classification)


@SEM_SEG_HEADS_REGISTRY.register()
class VLTMaskFormerHead(nn.Module):
    """``head(features, mask=None, queries=None)`` -> ``{"pred_logits": [B, Q, K+1], "pred_masks": [B, Q, H/4, W/4],
    "aux_outputs": [...]}`` from backbone features ``{"res2": ..., "res5": ...}``. ``queries`` (query features and
    query positions, each [B, Q, C]) replace the learnable queries (Rein's token-query linking)."""

    # State-dict version 2 as the official module, whose loader would otherwise rename keys of a "v1" checkpoint.
    _version = 2

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        num_classes: int,
        pixel_decoder: nn.Module,
        loss_weight: float = 1.0,
        ignore_value: int = -1,
        transformer_predictor: nn.Module,
        transformer_in_feature: str = "multi_scale_pixel_decoder",
    ):
        """
        Args:
            input_shape: the backbone features the head uses.
            num_classes: K; ignore_value: label of ignored pixels; loss_weight: kept for D2 head compatibility.
            pixel_decoder: returns (mask_features, transformer_encoder_features, multi_scale_features).
            transformer_predictor: the transformer decoder, called on the multi-scale features.
            transformer_in_feature: what the predictor attends to; only "multi_scale_pixel_decoder" (Mask2Former).
        """
        super().__init__()
        if transformer_in_feature != "multi_scale_pixel_decoder":
            raise ValueError(
                "VLTMaskFormerHead: MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE must be 'multi_scale_pixel_decoder' "
                f"(Mask2Former); got {transformer_in_feature!r} (MaskFormer v1 inputs are not implemented)"
            )
        self.in_features = [name for name, _ in sorted(input_shape.items(), key=lambda item: item[1].stride)]
        self.ignore_value = ignore_value
        self.common_stride = 4
        self.loss_weight = loss_weight
        self.pixel_decoder = pixel_decoder
        self.predictor = transformer_predictor
        self.transformer_in_feature = transformer_in_feature
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {name: spec for name, spec in input_shape.items() if name in head.IN_FEATURES},
            "ignore_value": head.IGNORE_VALUE,
            "num_classes": head.NUM_CLASSES,
            "pixel_decoder": build_pixel_decoder(cfg, input_shape),
            "loss_weight": head.LOSS_WEIGHT,
            "transformer_in_feature": cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE,
            # The multi-scale pixel-decoder features have CONVS_DIM channels.
            "transformer_predictor": build_transformer_decoder(cfg, head.CONVS_DIM, mask_classification=True),
        }

    def forward(self, features, mask=None, queries=None):
        mask_features, _, multi_scale_features = self.pixel_decoder(features)
        return self.predictor(multi_scale_features, mask_features, mask, queries=queries)
