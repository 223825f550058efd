"""A resumable shuffling sampler: an endless stream of epochs, each a seeded permutation.

Epoch ``e`` is ``randperm(n)`` under seed ``(seed, e)``, so the stream depends only on the seed,
and a run resumed at position ``k`` sees exactly the batches an uninterrupted run would have seen. With
``world_size`` ranks, rank r takes stream items r, r + world_size, ...: the ranks' batches together
are the global batch a single process would take, so runs agree across world sizes.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    def __init__(
        self,
        size: int,
        seed: int = 0,
        shuffle: bool = True,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if size <= 0:
            raise ValueError("cannot sample from an empty dataset")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.position = start  # number of indices of the global stream already handed out (all ranks)

    def _epoch(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        while True:
            epoch, offset = divmod(self.position, self.size)
            for index in self._epoch(epoch)[offset:]:
                mine = self.position % self.world_size == self.rank
                self.position += 1
                if mine:
                    yield index
