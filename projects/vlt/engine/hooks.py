"""Training hooks shared by VLT's tools."""
import time

from detectron2.engine import HookBase

__all__ = ["TrainingClock"]


class TrainingClock(HookBase):
    """Wall time per training iteration, from the end of the first (lazy set-up, warm-up) to the end of the last;
    evaluation hooks running after the last step are not counted."""

    def __init__(self):
        self.first_end = self.last_end = None
        self.iterations = 0

    def after_step(self):
        now = time.perf_counter()
        if self.first_end is None:
            self.first_end = now
        else:
            self.last_end, self.iterations = now, self.iterations + 1

    def seconds_per_iteration(self) -> float:
        return (self.last_end - self.first_end) / self.iterations if self.iterations else float("nan")
