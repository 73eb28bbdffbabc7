"""open_clip and timm vision towers as Detectron2 backbones."""
from .open_clip_loader import build_open_clip_model, build_open_clip_tokenizer, pixel_stats
from .open_clip_vit import (
    NOMINAL_TAP_STRIDES,
    BlockHook,
    OpenCLIPSimpleFeaturePyramid,
    OpenCLIPViT,
    build_open_clip_vit_backbone,
    default_tap_indices,
    get_vit,
)
from .timm_loader import build_timm_model, timm_pixel_stats
from .vision_tower import VisionTower, build_vision_tower

__all__ = [
    "NOMINAL_TAP_STRIDES", "BlockHook", "OpenCLIPSimpleFeaturePyramid", "OpenCLIPViT", "VisionTower",
    "build_open_clip_model", "build_open_clip_tokenizer", "build_open_clip_vit_backbone", "build_timm_model",
    "build_vision_tower", "default_tap_indices", "get_vit", "pixel_stats", "timm_pixel_stats",
]
from .clip_resnet import CLIPResNetBackbone  # noqa: F401,E402
