"""Meta-architectures: the segmentors and their model-agnostic inference (whole image, sliding window, TTA)."""
from .per_pixel_segmentor import PerPixelSegmentor  # noqa: F401,E402
from .vltseg import VLTSegmentor  # noqa: F401
