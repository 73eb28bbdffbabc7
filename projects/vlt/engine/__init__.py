"""Training engine: VLT's Trainer and the resumable training sampler."""
from .sampler import ResumableTrainingSampler
from .trainer import Trainer, build_train_mapper

__all__ = ["ResumableTrainingSampler", "Trainer", "build_train_mapper"]
