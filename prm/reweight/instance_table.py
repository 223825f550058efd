"""DreamPRM-1.5's instance table: one weight per training chain, w_i = act(theta_i).

``initialization`` is the initial *weight* (default 1); theta starts at the activation's inverse of
it, found by bisection, so the same setting means the same start under every activation.

Only sampled rows move (a sparse parameter group): a table row's gradient is zero unless its chain was in the
batch the hypergradient used, and Adam's momentum or weight decay would otherwise keep moving every
row at every step (a defect of the published code). The upper problem therefore steps these tables
with torch's lazy ``SparseAdam`` on the rows with a gradient; there is no weight decay on tables
(decay would pull every weight toward act(0), not toward 1).
"""

from __future__ import annotations

import torch
from torch import nn

from prm.reweight.base import ParameterGroup, Reweighter, TrainingSet, warn_if_negative


def inverse(activation: nn.Module, value: float, low: float = -50.0, high: float = 50.0) -> float:
    """theta with activation(theta) == value, for a non-decreasing activation (bisection)."""
    bound = max(abs(low), abs(high))
    with torch.no_grad():
        f = lambda x: float(activation(torch.tensor([x], dtype=torch.float64)))  # noqa: E731
        lo, hi = f(low), f(high)
        for _ in range(200):
            middle = (low + high) / 2
            low, high = (middle, high) if f(middle) < value else (low, middle)
        theta = (low + high) / 2
    with torch.no_grad():
        reached = abs(f(theta) - value) <= 1e-6 * max(1.0, abs(value)) and abs(theta) < bound - 1e-3
        flat = f(theta) - f(theta - 0.5) < 1e-6  # e.g. sigmoid at 1 or relu at 0: no gradient to learn from
    if not reached or flat:
        raise ValueError(
            f"initialization {value} is outside the range of {activation} ({lo:.3g} to {hi:.3g}) "
            "or where it is flat, so the weight could never move"
        )
    return theta


class InstanceTable(Reweighter):
    def __init__(
        self,
        training_set: TrainingSet,
        activation: nn.Module,
        initialization: float = 1.0,
        normalize: str = "none",
    ):
        super().__init__(training_set, normalize)
        warn_if_negative(activation, "reweight=instance_table")
        self.activation = activation
        start = inverse(activation, float(initialization))
        self.theta = nn.Parameter(torch.full((len(training_set.ids),), start))

    def parameter_groups(self) -> list[ParameterGroup]:
        """One sparse group ``weights``: the table's rows (SparseAdam moves only the sampled ones)."""
        return [ParameterGroup("weights", (self.theta,), sparse=True)]

    def raw_weights(self, batch, scores, losses, has_label=None):
        return self.activation(self.theta[batch["instance"].to(self.theta.device)])

    def instance_weights(self) -> torch.Tensor:
        with torch.no_grad():
            return self.activation(self.theta)
