"""Meta-architectures: the segmentors and their model-agnostic inference (whole image, sliding window, TTA)."""
from .vltseg import VLTSegmentor  # noqa: F401
from .per_pixel_segmentor import PerPixelSegmentor  # noqa: F401,E402
