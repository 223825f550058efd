"""A resumable shuffling sampler: an endless stream of epochs, each a seeded permutation.

Epoch ``e`` is ``randperm(n)`` under seed ``(seed, e)``, so the stream depends only on the seed,
and a run resumed at position ``k`` sees exactly the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    def __init__(self, size: int, seed: int = 0, shuffle: bool = True, start: int = 0):
        if size <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.position = start  # number of indices already handed out

    def _epoch(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        while True:
            epoch, offset = divmod(self.position, self.size)
            for index in self._epoch(epoch)[offset:]:
                self.position += 1
                yield index
