"""VLT: domain-generalized dense perception on CLIP / EVA-CLIP towers, for Detectron2.

Importing ``vlt`` registers every VLT component (backbones, heads, meta-architectures, datasets) in
Detectron2's registries.
"""
from . import (
    data,  # noqa: F401  (registers datasets)
    evaluation,  # noqa: F401
    modeling,  # noqa: F401  (registers backbones, heads, meta-architectures)
)
from .config import add_vlt_config

__all__ = ["add_vlt_config"]
