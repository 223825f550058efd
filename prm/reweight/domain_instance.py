"""Domain times instance: DreamPRM's domain table and DreamPRM-1.5's instance table combined.

The weight of training chain i of domain d is

    w_i = w_d * v_i,   w_d = softplus(theta_d) / mean_k softplus(theta_k),   v_i = act(phi_i),

the domain weight of :class:`DomainTable` (docs/methods.md#reweighting-modules; starts at 1, mean 1
over domains) times the instance weight of :class:`InstanceTable` (starts at ``initialization``). The
domain factor learns how much each source counts, the instance factor which chains within it to
trust. The two parts are stepped by optimisers of their own (:meth:`DomainInstance.parameter_groups`):
``domain`` is dense (every domain weight depends on every theta through the mean), ``instance`` is a
sparse table whose unsampled rows must not move (torch's SparseAdam; conf/reweight/domain_instance.yaml).
"""

from __future__ import annotations

import torch
from torch import nn

from prm.reweight.base import ParameterGroup, Reweighter, TrainingSet
from prm.reweight.domain_table import DomainTable, require_domains
from prm.reweight.instance_table import InstanceTable


class DomainInstance(Reweighter):
    """``activation``: of the instance factor (the domain factor is always the normalised softplus);
    ``initialization``: the instance factor's initial weight; ``normalize``: none or batch (of the
    product). Raises ConfigError for fewer than two training domains, ValueError for an
    ``initialization`` the activation cannot reach."""

    def __init__(
        self,
        training_set: TrainingSet,
        activation: nn.Module,
        initialization: float = 1.0,
        normalize: str = "none",
    ):
        require_domains(training_set, "domain_instance")
        super().__init__(training_set, normalize)
        self.domain = DomainTable(training_set)
        self.instance = InstanceTable(training_set, activation, initialization)

    def parameter_groups(self) -> list[ParameterGroup]:
        """``domain`` (dense, theta of the domain table) and ``instance`` (sparse rows)."""
        return [
            ParameterGroup("domain", (self.domain.theta,)),
            ParameterGroup("instance", (self.instance.theta,), sparse=True),
        ]

    def raw_weights(self, batch, scores, losses, has_label=None):
        return self.domain.raw_weights(batch, scores, losses) * self.instance.raw_weights(
            batch, scores, losses
        )

    def instance_weights(self) -> torch.Tensor:
        return self.domain.instance_weights() * self.instance.instance_weights()

    def domain_weights(self) -> dict[str, float]:
        return self.domain.domain_weights()
