"""open_clip vision towers as Detectron2 backbones."""
from .open_clip_loader import build_open_clip_model, build_open_clip_tokenizer, pixel_stats

__all__ = ["build_open_clip_model", "build_open_clip_tokenizer", "pixel_stats"]
