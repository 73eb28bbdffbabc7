"""Mask2Former semantic-segmentation head: pixel decoder, masked-attention decoder, matcher, criterion."""
from .criterion import SetCriterion, build_mask2former_criterion
from .mask_former_head import VLTMaskFormerHead, build_pixel_decoder, build_transformer_decoder
from .matcher import HungarianMatcher
from .ms_deform_attn import MultiScaleDeformableAttention, multi_scale_deformable_attention_pytorch
from .pixel_decoder import VLTMSDeformAttnPixelDecoder
from .point_sampling import point_sample
from .semantic import semantic_inference, targets_from_sem_seg
from .transformer_decoder import TRANSFORMER_DECODER_REGISTRY, MultiScaleMaskedTransformerDecoder

__all__ = [
    "TRANSFORMER_DECODER_REGISTRY", "HungarianMatcher", "VLTMSDeformAttnPixelDecoder", "VLTMaskFormerHead",
    "MultiScaleDeformableAttention", "MultiScaleMaskedTransformerDecoder", "SetCriterion",
    "build_mask2former_criterion", "build_pixel_decoder", "build_transformer_decoder",
    "multi_scale_deformable_attention_pytorch", "point_sample", "semantic_inference", "targets_from_sem_seg",
]
from .deeplabv3plus import VLTDeepLabV3PlusHead  # noqa: F401,E402
