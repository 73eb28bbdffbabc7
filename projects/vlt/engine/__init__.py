"""Training engine: VLT's Trainer, the resumable training sampler and shared hooks."""
from .checkpoint import VLTCheckpointer
from .hooks import TrainingClock
from .sampler import ResumableTrainingSampler
from .trainer import RandomStatesAtCheckpoints, Trainer, build_ddp_model, build_step_trainer, build_train_mapper

__all__ = [
    "RandomStatesAtCheckpoints", "ResumableTrainingSampler", "Trainer", "TrainingClock", "VLTCheckpointer",
    "build_ddp_model", "build_step_trainer", "build_train_mapper",
]
