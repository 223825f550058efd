"""Resumable shuffling samplers: an endless stream of epochs, each a seeded permutation.

Epoch ``e`` is ``randperm(n)`` under seed ``(seed, e)``, so the stream depends only on the seed,
and a run resumed at position ``k`` sees exactly the batches an uninterrupted run would have seen. With
``world_size`` ranks, rank r takes stream items r, r + world_size, ...: the ranks' batches together
are the global batch a single process would take, so runs agree across world sizes.

:class:`LengthGroupedSampler` reorders the same stream so that a batch holds chains of similar
length (less padding): each epoch's permutation is cut into windows of ``window`` global batches,
a window is sorted by length and cut into global batches, and the batches of a window are shuffled
under a seed of their own. Every chain is still seen once per epoch, the order is a function of
(seed, epoch, window) only, and the position counts stream items exactly as in the plain sampler,
so resuming, world sizes and checkpoints work the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

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


class LengthGroupedSampler(ResumableSampler):
    """:class:`ResumableSampler` whose batches group chains of similar length.

    Args:
        lengths: one length per dataset item (tokens; any monotone proxy works), ``len(lengths)``
            items.
        batch_size: chains per batch *per rank*; the global batch is ``batch_size * world_size``
            stream items, and rank r takes every world_size-th item of it, so the ranks' shares of
            one global batch have similar lengths too.
        window: global batches per sorting window (``window * global batch`` items, clipped to the
            dataset size). 1 makes each batch a plain random sample (no grouping); larger windows
            group more tightly but make a window's batches more alike in length.
        seed, shuffle, start, rank, world_size: as in :class:`ResumableSampler`.

    Within a window the items are sorted by decreasing length (ties keep the permutation's order),
    cut into global batches, and the full batches are shuffled with the generator seeded by
    (seed, epoch, window); a partial last batch of an epoch stays last, so batch boundaries line up
    with the plain sampler's. Raises ValueError for lengths that do not match ``size``, or a
    ``batch_size`` or ``window`` below 1.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        window: int = 64,
        seed: int = 0,
        shuffle: bool = True,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(len(lengths), seed, shuffle, start, rank, world_size)
        if batch_size < 1 or window < 1:
            raise ValueError(f"batch_size={batch_size} and window={window} must be >= 1")
        self.lengths = [int(length) for length in lengths]
        self.global_batch = batch_size * world_size
        self.window_items = window * self.global_batch
        self._cache: tuple[int, list[int]] | None = None

    def _grouped(self, epoch: int, window: int, items: list[int]) -> list[int]:
        ordered = sorted(items, key=lambda index: -self.lengths[index])  # stable: ties keep order
        batches = [ordered[i : i + self.global_batch] for i in range(0, len(ordered), self.global_batch)]
        partial = [batches.pop()] if len(batches[-1]) < self.global_batch else []
        if self.shuffle:
            generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 7_919 + window + 1)
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return [index for batch in batches + partial for index in batch]

    def _epoch(self, epoch: int) -> list[int]:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        permutation = super()._epoch(epoch)
        order: list[int] = []
        for window, start in enumerate(range(0, self.size, self.window_items)):
            order += self._grouped(epoch, window, permutation[start : start + self.window_items])
        self._cache = (epoch, order)
        return order
