"""DreamPRM's domain table: one weight per data domain.

theta in R^K starts at 0; w_d = softplus(theta_d) / mean_k softplus(theta_k), so every weight
starts at 1 and the mean over domains stays 1 (docs/methods.md#reweighting-modules). Dense updates
are right here: every domain's weight depends on every theta through the normalisation.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from prm.config import ConfigError
from prm.reweight.base import Reweighter, TrainingSet

log = logging.getLogger(__name__)


def require_domains(training_set: TrainingSet, strategy: str) -> None:
    """Raises ConfigError when the training set has fewer than two domains: one weight per domain,
    normalised to mean 1, would stay 1 and the run would silently learn nothing."""
    if len(training_set.domains) < 2:
        raise ConfigError(
            f"reweight={strategy} needs at least two training domains; data.train has "
            f"{training_set.domains}: use reweight=instance_table or instance_net, or give the chains "
            "their domains"
        )


class DomainTable(Reweighter):
    """``activation`` is accepted because train.py passes the activation group to every strategy, but
    the domain weight is always the normalised softplus above; any other activation is reported.
    Raises ConfigError for a training set of fewer than two domains (:func:`require_domains`)."""

    def __init__(
        self, training_set: TrainingSet, activation: nn.Module | None = None, normalize: str = "none"
    ):
        require_domains(training_set, "domain_table")
        super().__init__(training_set, normalize)
        if activation is not None and not isinstance(activation, nn.Softplus):
            log.warning(
                "reweight=domain_table ignores activation=%s: its weights are softplus(theta_d) / "
                "mean_k softplus(theta_k)",
                type(activation).__name__,
            )
        self.theta = nn.Parameter(torch.zeros(len(training_set.domains)))

    def weights(self) -> torch.Tensor:
        positive = F.softplus(self.theta)
        return positive / positive.mean()

    def raw_weights(self, batch, scores, losses, has_label=None):
        return self.weights()[batch["domain"].to(self.theta.device)]

    def instance_weights(self) -> torch.Tensor:
        with torch.no_grad():
            return self.weights()[torch.tensor(self.training_set.instance_domain, device=self.theta.device)]

    def domain_weights(self) -> dict[str, float]:
        with torch.no_grad():
            return dict(zip(self.training_set.domains, self.weights().tolist()))
