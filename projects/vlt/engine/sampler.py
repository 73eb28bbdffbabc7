"""A training sampler whose infinite stream can be resumed where a killed run left it."""
import itertools
from typing import Optional

from detectron2.data.samplers import TrainingSampler
from detectron2.utils import comm


class ResumableTrainingSampler(TrainingSampler):
    """D2's :class:`TrainingSampler` (same shuffled infinite stream for a seed), started at a global offset.

    After ``k`` iterations of global batch ``B`` the run has consumed the first ``k × B`` indices of the stream;
    ``set_start(k × B)`` before the loader is first iterated makes a resumed run see exactly the batches the
    uninterrupted run would have seen.
    """

    def __init__(self, size: int, shuffle: bool = True, seed: Optional[int] = None):
        super().__init__(size, shuffle=shuffle, seed=seed)
        self._start = 0

    @property
    def seed(self) -> int:
        return self._seed

    def set_seed(self, seed: int) -> None:
        self._seed = int(seed)

    def set_start(self, start: int) -> None:
        if start % self._world_size:
            raise ValueError(f"start {start} must be a multiple of the world size {self._world_size}")
        self._start = int(start)

    def __iter__(self):
        yield from itertools.islice(self._infinite_indices(), self._start + self._rank, None, self._world_size)


def resumable_sampler(size: int, seed: int) -> ResumableTrainingSampler:
    """A resumable sampler with ``seed`` (< 0: one random seed shared by all processes)."""
    return ResumableTrainingSampler(size, seed=seed if seed >= 0 else comm.shared_random_seed())
