"""The oracle: weight 0 for the training chains known to be corrupted, 1 for the others.

The most any reweighting could win back from bad labels, on data that says which chains are bad
(``meta.corrupted`` on every record, as the demo benchmark writes it). With ``normalize="batch"``
(the default) the clean chains of a batch are scaled to a mean weight of 1, so it trains like
removing the corrupted chains from the data. Not bi-level: no meta set, no upper problem.
"""

from __future__ import annotations

import torch

from prm.reweight.base import Reweighter, TrainingSet


class Oracle(Reweighter):
    def __init__(self, training_set: TrainingSet, normalize: str = "batch", activation=None):
        super().__init__(training_set, normalize)
        if training_set.corrupted is None:
            raise ValueError(
                "reweight=oracle needs to know which training chains are corrupted: every training "
                "record needs meta.corrupted (true/false), as the demo benchmark writes it; "
                f"{training_set.missing_corrupted!r} has none"
            )
        self.register_buffer("clean", 1.0 - torch.tensor(training_set.corrupted, dtype=torch.float))

    def raw_weights(self, batch, scores, losses, has_label=None):
        return self.clean[batch["instance"].to(self.clean.device)].to(losses.device)

    def instance_weights(self) -> torch.Tensor:
        return self.clean.clone()
