"""``torch.compile`` of a built VLT model, chosen by MODEL.COMPILE (config.py).

Parts are compiled in place with ``nn.Module.compile``: the modules keep their names, so state-dict keys are the
eager ones (no ``_orig_mod.`` prefix) and checkpoints stay interchangeable between eager and compiled runs, resume
included. Compile before wrapping the model in DistributedDataParallel; autocast and activation checkpointing wrap
the compiled code from outside and need nothing here.

Parts:
  * "tower": every block of each ViT / EVA02 tower and each stage of a CLIP ResNet ("regional" compilation: all
    blocks share one compiled graph, so compile time does not grow with depth). The block loop, and with it the
    Rein / FAMix hooks and activation checkpointing, stays eager.
  * "head": the segmentation head (``sem_seg_head``: Mask2Former's pixel + transformer decoder, or DeepLabv3+).
  * "model": the whole meta-architecture (losses and inference included; the Hungarian matcher and Python-side
    post-processing run as graph breaks).
"""
import logging
import shutil
from typing import List

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["PARTS", "compile_regions", "compiler_available", "maybe_compile"]

PARTS = ("tower", "head", "model")
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compiler_available(backend: str = "inductor") -> bool:
    """Whether ``torch.compile`` can run ``backend`` here: TorchDynamo supports this Python, and inductor (CPU code
    generation) finds a C++ compiler."""
    if not torch._dynamo.is_dynamo_supported():
        return False
    return backend != "inductor" or torch.cuda.is_available() or bool(shutil.which("g++") or shutil.which("c++"))


def tower_regions(model: nn.Module) -> List[nn.Module]:
    """The repeated pieces of every vision tower in ``model``: ViT / EVA02 blocks, CLIP ResNet stages."""
    from ..modeling.backbone import VisionTower

    regions: List[nn.Module] = []
    for module in model.modules():
        if isinstance(module, VisionTower):
            regions += list(module.blocks)
        elif getattr(module, "is_pretrained_tower", False) and hasattr(module, "layer4"):  # open_clip ModifiedResNet
            regions += [module.layer1, module.layer2, module.layer3, module.layer4]
    return regions


def compile_regions(model: nn.Module, parts, mode: str = "default", backend: str = "inductor") -> List[str]:
    """Compile ``parts`` (a subset of PARTS) of ``model`` in place; returns the names of the compiled modules."""
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"MODEL.COMPILE.PARTS: unknown {unknown}, expected a subset of {list(PARTS)}")
    if "model" in parts and len(parts) > 1:
        raise ValueError(f"MODEL.COMPILE.PARTS: 'model' already contains every other part, got {list(parts)}")
    if mode not in MODES:
        raise ValueError(f"MODEL.COMPILE.MODE must be one of {list(MODES)}, got {mode!r}")
    options = {"backend": backend} if backend != "inductor" else {"backend": backend, "mode": mode}
    names = {id(module): name for name, module in model.named_modules()}
    targets: List[nn.Module] = []
    if "model" in parts:
        targets.append(model)
    if "tower" in parts:
        regions = tower_regions(model)
        if not regions:
            raise ValueError(f"MODEL.COMPILE.PARTS has 'tower' but {type(model).__name__} has no open_clip tower")
        targets += regions
    if "head" in parts:
        head = getattr(model, "sem_seg_head", None)
        if head is None:
            raise ValueError(f"MODEL.COMPILE.PARTS has 'head' but {type(model).__name__} has no sem_seg_head")
        targets.append(head)
    for module in targets:
        module.compile(**options)
    return [names[id(module)] or "(model)" for module in targets]


def maybe_compile(model: nn.Module, cfg) -> nn.Module:
    """Compile the MODEL.COMPILE.PARTS of ``model`` in place (nothing when PARTS is empty); returns ``model``."""
    parts = list(cfg.MODEL.COMPILE.PARTS)
    if not parts:
        return model
    backend = cfg.MODEL.COMPILE.BACKEND
    if not compiler_available(backend):
        raise RuntimeError(
            f"MODEL.COMPILE.PARTS={parts}: torch.compile backend {backend!r} cannot run here (TorchDynamo does not "
            "support this Python, or inductor finds no C++ compiler on a CPU-only machine); set MODEL.COMPILE.PARTS []"
        )
    compiled = compile_regions(model, parts, cfg.MODEL.COMPILE.MODE, backend)
    logger.info("torch.compile (backend %s, mode %s): %d modules (%s%s)", backend, cfg.MODEL.COMPILE.MODE,
                len(compiled), ", ".join(compiled[:3]), ", ..." if len(compiled) > 3 else "")
    return model
