"""Training engine: VLT's Trainer, the resumable training sampler and shared hooks."""
from .checkpoint import VLTCheckpointer
from .hooks import TrainingClock
from .sampler import ResumableTrainingSampler
from .trainer import Trainer, build_train_mapper

__all__ = ["ResumableTrainingSampler", "Trainer", "TrainingClock", "VLTCheckpointer", "build_train_mapper"]
