"""Probe chains: the training chains whose weights one upper step updates.

``reweight.hypergradient.probe_chains`` sets how many.

Betty's DARTS hypergradient re-runs the lower problem's training step on its *current* batch at
the PRM's parameters moved by +-eps along the meta gradient G; differentiating that loss with
respect to the reweighter gives, for every chain i of the batch, d w_i / d upper * (l_i(+) - l_i(-))
/ (2 eps) = d w_i / d upper * g_i . G (finite differences; Liu et al. 2019, DARTS, eq. 8). With
batches of 8 chains an instance table row moves only when its chain is drawn (~10 times in a
1500-step run on 1200 chains), each time on one noisy dot product.

The same two perturbed passes can run over any set of training chains. With ``probe_chains: N`` the
upper step draws N training chains at random (a fresh draw at each upper step, the same chains at
+eps and -eps) and the perturbed passes run over them instead of the current batch: the PRM forwards
only, without an autograd graph (the losses are constants there; only the weights carry a graph),
so N chains cost about N / batch_size forward passes. Every row of a table and the net's
parameters then get g_i . G for N chains per upper step. Only DARTS reads them (Neumann, CG and
SAMA need second derivatives on the current batch).

A draw depends only on the seed and the lower step it is made at, so a resumed run draws the same
chains as an uninterrupted one. With several ranks every rank draws the same chains and takes its own
equal share of them (the upper problem averages the ranks' gradients; under ZeRO-3 every rank then
runs the same number of forward passes, which it must).
"""

from __future__ import annotations

import torch

from prm.data.dataset import ChainDataset


class ProbeBatches(list):
    """Collated batches of probe chains: what the lower problem's training step sums over in the
    hypergradient's perturbed passes (prm/bilevel/lower.py)."""


class ProbeSampler:
    """Draws ``size`` of ``chains`` at random (``size >= len(chains)``: all of them) and collates this
    rank's share (``size // world_size`` of them) in batches of ``batch_size``. Raises ValueError for
    ``size < 1`` or ``batch_size < 1``."""

    def __init__(
        self,
        chains,
        domains,
        collator,
        size: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        if size < 1 or batch_size < 1:
            raise ValueError(f"probe_chains ({size}) and the batch size ({batch_size}) must be >= 1")
        self.dataset = ChainDataset(chains, domains)
        self.collator = collator
        self.size = min(int(size), len(self.dataset))
        self.share = max(1, self.size // world_size)
        self.rank = rank if self.size >= world_size else 0
        self.batch_size = int(batch_size)
        self.seed = int(seed)

    def indices(self, step: int) -> list[int]:
        """This rank's chains of the draw at lower micro-batch ``step`` (sorted: neighbours in the file)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(step))
        drawn = torch.randperm(len(self.dataset), generator=generator)[: self.size].tolist()
        return sorted(drawn[self.rank * self.share : (self.rank + 1) * self.share])

    def draw(self, step: int) -> ProbeBatches:
        chosen = self.indices(step)
        return ProbeBatches(
            self.collator([self.dataset[i] for i in chosen[start : start + self.batch_size]])
            for start in range(0, len(chosen), self.batch_size)
        )
