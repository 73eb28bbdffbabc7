"""Optimizers, parameter groups and LR schedules."""
from .build import PolyParamScheduler, build_lr_scheduler, build_optimizer
from .param_groups import build_optimizer_param_groups, tower_lr_factors, trainable_parameter_report

__all__ = [
    "PolyParamScheduler", "build_lr_scheduler", "build_optimizer", "build_optimizer_param_groups",
    "tower_lr_factors", "trainable_parameter_report",
]
