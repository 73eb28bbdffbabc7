"""VLT: domain-generalized dense perception on CLIP / EVA-CLIP towers, for Detectron2.

Importing ``vlt`` registers every VLT component (backbones, heads, meta-architectures, datasets) in
Detectron2's registries.
"""
import warnings

# fvcore (imported by Detectron2) decorates functions with torch.jit.script, deprecated in recent torch: one
# FutureWarning per decorated function at import, not ours to fix. Silence exactly that warning of that module; tools
# import vlt before Detectron2 so that it is in place in time.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning,
                        module=r"torch\.jit\._script")

from . import (  # noqa: E402
    data,  # noqa: F401  (registers datasets)
    evaluation,  # noqa: F401
    modeling,  # noqa: F401  (registers backbones, heads, meta-architectures)
)
from .config import add_vlt_config  # noqa: E402

__all__ = ["add_vlt_config"]
