"""Optimizer parameter groups for models on pretrained towers: backbone LR multiplier, layer-wise LR decay.

Built on Detectron2's :func:`~detectron2.solver.get_default_optimizer_params` (no weight decay on norms, D2's
bias handling). On top of it:

- every parameter of a *pretrained tower* (a module with ``is_pretrained_tower = True``: the open_clip ViT/EVA02
  :class:`~vlt.modeling.backbone.VisionTower`, the CLIP ResNet) gets ``SOLVER.BACKBONE_MULTIPLIER``; parameters
  that VLT adds around it (tap resamplers, the feature pyramid, Rein tokens, heads) keep the base LR;
- with ``SOLVER.LAYER_DECAY < 1`` tower parameters get ViTDet's layer-wise decay (Li et al. 2022, App. A.1):
  ``decay ** (depth + 1 - layer_id)``, layer 0 = embeddings, layer i + 1 = block i;
- parameters whose full name contains one of ``SOLVER.NO_WEIGHT_DECAY_KEYWORDS`` get no weight decay, and the
  position / class embeddings get ``SOLVER.WEIGHT_DECAY_EMBED``.

``SOLVER.PARAM_GROUP_RULES "vltseg_reimpl"`` follows the public VLTSeg reimplementation's mmseg ``custom_keys``
instead (configs/_base_/schedules/schedule_{5k,20k,40k}.py of github.com/VLTSeg/VLTSeg): every parameter of the
model's ``backbone`` — the tower *and* the tap resamplers / deconvolution necks, which sit inside its backbone —
gets ``SOLVER.BACKBONE_MULTIPLIER``; inside the backbone only each block's two pre-norms (``norm1`` / ``norm2``,
open_clip ``ln_1`` / ``ln_2``), the final norm and the position embedding are exempt from weight decay (the class
token, the patch embedding, the norms inside attention / MLP and the necks' BatchNorms decay); outside it norm
layers get ``SOLVER.WEIGHT_DECAY_NORM`` (mmengine ``norm_decay_mult``) and the NO_WEIGHT_DECAY_KEYWORDS no decay.
"""
from typing import Any, Dict, List, Set

from detectron2.solver import get_default_optimizer_params
from detectron2.solver.build import reduce_param_groups
from torch import nn

EMBEDDING_NAMES = ("positional_embedding", "class_embedding", "pos_embed", "cls_token", "reg_token")
PARAM_GROUP_RULES = ("detectron2", "vltseg_reimpl")
# Norm layers as mmengine's optimizer constructor recognises them (norm_decay_mult).
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm)
# Per-block pre-norms of a tower: timm Eva / mmseg EVA02 ``norm1``/``norm2``, open_clip ViT ``ln_1``/``ln_2``.
BLOCK_NORM_NAMES = ("norm1", "norm2", "ln_1", "ln_2")
# A tower's final norm (VLT drops it: dense features come from the taps) and its position embedding.
FINAL_NORM_NAMES = ("norm", "ln_post")
POSITION_EMBEDDING_NAMES = ("pos_embed", "positional_embedding")


def tower_lr_factors(model: nn.Module, backbone_multiplier: float, layer_decay: float) -> Dict[str, float]:
    """LR factor of every parameter of every pretrained tower in ``model``, by full parameter name."""
    factors: Dict[str, float] = {}
    for module_name, module in model.named_modules():
        if not getattr(module, "is_pretrained_tower", False):
            continue
        prefix = f"{module_name}." if module_name else ""
        layer_ids = dict(module.layer_ids_of_parameters()) if hasattr(module, "layer_ids_of_parameters") else {}
        num_layers = getattr(module, "depth", 0) + 1
        for name, _ in module.named_parameters():
            factor = backbone_multiplier
            if layer_decay != 1.0 and name in layer_ids:
                factor *= layer_decay ** (num_layers - layer_ids[name])
            factors[prefix + name] = factor
    return factors


def _tower_no_decay_parameters(model: nn.Module) -> Set[int]:
    """ids of the tower parameters the VLTSeg reimplementation exempts from weight decay: each block's two
    pre-norms, the final norm and the position embedding (its custom keys ``backbone.blocks.N.norm1/norm2``,
    ``backbone.norm``, ``backbone.pos_embed``)."""
    exempt: Set[int] = set()
    for tower in model.modules():
        if not getattr(tower, "is_pretrained_tower", False) or not hasattr(tower, "blocks"):
            continue
        net = getattr(tower, "net", tower)  # VisionTower: the module owning embeddings, blocks and final norm
        norms = [getattr(block, name) for block in tower.blocks for name in BLOCK_NORM_NAMES if hasattr(block, name)]
        norms += [getattr(net, name) for name in FINAL_NORM_NAMES if isinstance(getattr(net, name, None), nn.Module)]
        exempt.update(id(p) for norm in norms for p in norm.parameters())
        exempt.update(id(p) for name, p in net.named_parameters(recurse=False) if name in POSITION_EMBEDDING_NAMES)
    return exempt


def vltseg_reimpl_param_groups(cfg, model: nn.Module) -> List[Dict[str, Any]]:
    """Parameter groups of the public VLTSeg reimplementation's mmseg ``custom_keys`` (see the module docstring)."""
    solver = cfg.SOLVER
    tower_factors = tower_lr_factors(model, solver.BACKBONE_MULTIPLIER, solver.LAYER_DECAY)
    tower_exempt = _tower_no_decay_parameters(model)
    keywords = tuple(solver.NO_WEIGHT_DECAY_KEYWORDS)
    groups, seen = [], set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full_name = f"{module_name}.{name}" if module_name else name
            in_backbone = full_name.startswith("backbone.")
            lr_factor = tower_factors.get(full_name, solver.BACKBONE_MULTIPLIER) if in_backbone else 1.0
            if in_backbone:
                weight_decay = 0.0 if id(param) in tower_exempt else solver.WEIGHT_DECAY
            elif any(k in full_name for k in keywords):
                weight_decay = 0.0
            elif isinstance(module, NORM_TYPES):
                weight_decay = solver.WEIGHT_DECAY_NORM
            else:
                weight_decay = solver.WEIGHT_DECAY
            groups.append({"params": [param], "lr": solver.BASE_LR * lr_factor, "weight_decay": weight_decay})
    return reduce_param_groups(groups)


def build_optimizer_param_groups(cfg, model: nn.Module) -> List[Dict[str, Any]]:
    """Parameter groups (lr, weight_decay per group) for ``cfg.SOLVER`` and ``model``."""
    solver = cfg.SOLVER
    rules = solver.PARAM_GROUP_RULES
    if rules not in PARAM_GROUP_RULES:
        raise ValueError(f"cfg.SOLVER.PARAM_GROUP_RULES must be one of {PARAM_GROUP_RULES}, got '{rules}'")
    if rules == "vltseg_reimpl":
        return vltseg_reimpl_param_groups(cfg, model)
    factors = tower_lr_factors(model, solver.BACKBONE_MULTIPLIER, solver.LAYER_DECAY)
    groups = get_default_optimizer_params(
        model,
        base_lr=solver.BASE_LR,
        weight_decay=solver.WEIGHT_DECAY,
        weight_decay_norm=solver.WEIGHT_DECAY_NORM,
        bias_lr_factor=solver.BIAS_LR_FACTOR,
        weight_decay_bias=solver.WEIGHT_DECAY_BIAS,
        lr_factor_func=lambda name: factors.get(name, 1.0),
        overrides={name: {"weight_decay": solver.WEIGHT_DECAY_EMBED} for name in EMBEDDING_NAMES},
    )
    keywords = tuple(solver.NO_WEIGHT_DECAY_KEYWORDS)
    if not keywords:
        return groups
    no_decay = {id(p) for n, p in model.named_parameters() if any(k in n for k in keywords)}
    split: List[Dict[str, Any]] = []
    for group in groups:
        kept = [p for p in group["params"] if id(p) not in no_decay]
        freed = [p for p in group["params"] if id(p) in no_decay]
        if kept:
            split.append({**group, "params": kept})
        if freed:
            split.append({**group, "params": freed, "weight_decay": 0.0})
    return split


def trainable_parameter_report(model: nn.Module) -> str:
    """One line: total, trainable, and their ratio."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return (
        f"parameters: {total:,} total, {trainable:,} trainable ({100.0 * trainable / max(total, 1):.2f}%)"
    )
