"""VLT models: open_clip towers as backbones, adapters (Rein, FAMix), heads and meta-architectures."""
from . import (
    adapters,  # noqa: F401
    backbone,  # noqa: F401
    det,  # noqa: F401
    meta_arch,  # noqa: F401
    seg,  # noqa: F401
)
