"""Meta-architectures: the segmentors and their model-agnostic inference (whole image, sliding window, TTA)."""
from .vltseg import VLTSegmentor  # noqa: F401
