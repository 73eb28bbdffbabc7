"""VLT: domain-generalized dense perception on CLIP / EVA-CLIP towers, for Detectron2.

Importing ``vlt`` registers every VLT component (backbones, heads, meta-architectures, datasets) in
Detectron2's registries.
"""
from .config import add_vlt_config

from . import modeling  # noqa: F401  (registers backbones, heads, meta-architectures)
from . import data  # noqa: F401  (registers datasets)
from . import evaluation  # noqa: F401

__all__ = ["add_vlt_config"]
