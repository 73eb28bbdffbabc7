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
"""
from typing import Any, Dict, List

from detectron2.solver import get_default_optimizer_params
from torch import nn

EMBEDDING_NAMES = ("positional_embedding", "class_embedding", "pos_embed", "cls_token", "reg_token")


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


def build_optimizer_param_groups(cfg, model: nn.Module) -> List[Dict[str, Any]]:
    """Parameter groups (lr, weight_decay per group) for ``cfg.SOLVER`` and ``model``."""
    solver = cfg.SOLVER
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
