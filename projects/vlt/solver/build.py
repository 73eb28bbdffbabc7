"""Optimizer and LR schedule from ``cfg.SOLVER``: AdamW / SGD, full-model gradient clipping, warm-up + poly."""
import torch
from detectron2.solver import build_lr_scheduler as build_d2_lr_scheduler
from detectron2.solver.lr_scheduler import LRMultiplier, WarmupParamScheduler
from fvcore.common.param_scheduler import ParamScheduler

from .param_groups import build_optimizer_param_groups


class PolyParamScheduler(ParamScheduler):
    """``(1 - t) ** power``, never below ``constant_ending`` (mmseg PolyLR; Mask2Former's WarmupPolyLR)."""

    def __init__(self, power: float, constant_ending: float = 0.0):
        self.power, self.constant_ending = power, constant_ending

    def __call__(self, where: float) -> float:
        value = (1.0 - where) ** self.power
        if self.constant_ending > 0 and value < self.constant_ending:
            return self.constant_ending
        return value


def _with_full_model_clipping(optimizer_cls, max_norm: float):
    """An optimizer class whose ``step`` first clips the gradient norm over all its parameters at once."""

    class FullModelGradientClipping(optimizer_cls):
        def step(self, closure=None):
            params = [p for group in self.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, max_norm)
            return super().step(closure=closure)

    FullModelGradientClipping.__name__ = f"{optimizer_cls.__name__}WithFullModelGradientClipping"
    return FullModelGradientClipping


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW or SGD over :func:`build_optimizer_param_groups`, with D2's or full-model gradient clipping."""
    groups = build_optimizer_param_groups(cfg, model)
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "ADAMW":
        optimizer_cls, kwargs = torch.optim.AdamW, dict(lr=cfg.SOLVER.BASE_LR, betas=tuple(cfg.SOLVER.BETAS))
    elif name == "SGD":
        optimizer_cls = torch.optim.SGD
        kwargs = dict(lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM, nesterov=cfg.SOLVER.NESTEROV)
    else:
        raise ValueError(f"cfg.SOLVER.OPTIMIZER must be ADAMW or SGD, got '{cfg.SOLVER.OPTIMIZER}'")
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        return _with_full_model_clipping(optimizer_cls, clip.CLIP_VALUE)(groups, **kwargs)
    if clip.ENABLED:
        from detectron2.solver.build import maybe_add_gradient_clipping

        return maybe_add_gradient_clipping(cfg, optimizer_cls)(groups, **kwargs)
    return optimizer_cls(groups, **kwargs)


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer):
    """D2's schedulers, plus ``WarmupPolyLR`` (poly decay after a linear / constant warm-up)."""
    if cfg.SOLVER.LR_SCHEDULER_NAME != "WarmupPolyLR":
        return build_d2_lr_scheduler(cfg, optimizer)
    max_iter = cfg.SOLVER.MAX_ITER
    scheduler = WarmupParamScheduler(
        PolyParamScheduler(cfg.SOLVER.POLY_LR_POWER, cfg.SOLVER.POLY_LR_CONSTANT_ENDING),
        cfg.SOLVER.WARMUP_FACTOR,
        min(cfg.SOLVER.WARMUP_ITERS / max_iter, 1.0),
        cfg.SOLVER.WARMUP_METHOD,
        rescale_interval=cfg.SOLVER.POLY_LR_AFTER_WARMUP,
    )
    return LRMultiplier(optimizer, multiplier=scheduler, max_iter=max_iter)
