"""Small-loss filtering: a baseline that learns nothing, for the learned weights to beat.

The "small-loss trick" of learning with noisy labels (Han et al. 2018, Co-teaching; Jiang et al.
2018, MentorNet): chains whose labels are wrong are fitted late, so at any time they tend to carry
the largest losses of their batch. In every training batch the labelled chains beyond the ``int((1 -
rate) * n)`` of lowest loss get weight 0, the others 1 (8 chains at rate 0.2: 2 dropped), where
``rate`` ramps linearly from 0 to ``drop_rate`` over the first ``warmup_steps`` training batches
(Co-teaching's schedule: R(T) = 1 - min(T / T_k * tau, tau)). With ``normalize="batch"`` (the
default) the kept chains are scaled so the batch's mean weight stays 1, i.e. dropping a chain is
removing it from the batch.

Not bi-level: there is no meta set and no upper problem; the lower problem calls it directly. Its
state (batches seen, and per chain how often it was seen and dropped) is saved with the training
state, so a resumed run continues the ramp. ``instance_weights`` reports each chain's keep rate
(1 - dropped / seen), so the weight report's corrupted/clean ratio and AUROC measure how well the
filter found the bad chains.
"""

from __future__ import annotations

import torch

from prm.reweight.base import Reweighter, TrainingSet


class SmallLoss(Reweighter):
    def __init__(
        self,
        training_set: TrainingSet,
        drop_rate: float = 0.2,
        warmup_steps: int = 300,
        normalize: str = "batch",
        activation=None,
    ):
        super().__init__(training_set, normalize)
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"reweight.module.drop_rate must be in [0, 1), got {drop_rate}")
        if warmup_steps < 0:
            raise ValueError(f"reweight.module.warmup_steps must be >= 0, got {warmup_steps}")
        self.drop_rate = float(drop_rate)
        self.warmup_steps = int(warmup_steps)
        count = len(training_set.ids)
        self.register_buffer("batches", torch.zeros((), dtype=torch.long))
        self.register_buffer("seen", torch.zeros(count, dtype=torch.long))
        self.register_buffer("dropped", torch.zeros(count, dtype=torch.long))

    def rate(self, batches: int) -> float:
        """Share of each batch dropped after ``batches`` training batches (linear ramp to drop_rate)."""
        if self.warmup_steps == 0:
            return self.drop_rate
        return self.drop_rate * min(1.0, batches / self.warmup_steps)

    def raw_weights(self, batch, scores, losses, has_label=None):
        losses = losses.detach().float()
        keep = has_label.bool() if has_label is not None else torch.ones_like(losses, dtype=torch.bool)
        labelled = int(keep.sum())
        # Co-teaching's rule: keep int((1 - rate) * n) chains (8 chains at rate 0.2: 6 kept, 2 dropped)
        drop = labelled - int((1.0 - self.rate(int(self.batches))) * labelled + 1e-9)
        weights = torch.ones_like(losses)
        if drop > 0:
            ranked = torch.where(keep, losses, torch.full_like(losses, -torch.inf))
            weights[torch.topk(ranked, drop).indices] = 0.0
        instances = batch["instance"].to(self.seen.device)[keep.to(self.seen.device)]
        self.seen.index_add_(0, instances, torch.ones_like(instances))
        dropped = (weights == 0).to(self.dropped.device)[keep.to(self.dropped.device)].long()
        self.dropped.index_add_(0, instances, dropped)
        self.batches += 1
        return weights

    def instance_weights(self) -> torch.Tensor:
        """Each chain's keep rate so far, 1 - dropped / seen (1 for a chain not yet seen)."""
        return 1.0 - self.dropped.float() / self.seen.clamp(min=1).float()
