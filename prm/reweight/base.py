"""What every reweighter shares: the training set it weighs, per-batch normalisation, weight reports,
and the parameter groups the upper level optimises."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

NORMALIZE = ("none", "batch")


@dataclass(frozen=True)
class TrainingSet:
    """Ids and domains of the training chains, in dataset order (``batch["instance"]`` indexes them)."""

    ids: list[str]
    domains: list[str]  # sorted domain names (``batch["domain"]`` indexes them)
    instance_domain: list[int]  # domain index of each instance
    corrupted: list[bool] | None = None  # meta.corrupted of each chain, when every chain has it
    missing_corrupted: str | None = None  # the first chain without meta.corrupted (else None)

    @classmethod
    def of(cls, chains: Sequence, domains: Sequence[str]) -> TrainingSet:
        index = {name: i for i, name in enumerate(domains)}
        missing = next((c.id for c in chains if "corrupted" not in (getattr(c, "meta", None) or {})), None)
        return cls(
            [chain.id for chain in chains],
            list(domains),
            [index[chain.domain] for chain in chains],
            None if missing is not None else [bool(chain.meta["corrupted"]) for chain in chains],
            missing,
        )


@dataclass(frozen=True)
class ParameterGroup:
    """Parameters of a reweighter that the upper level steps with one optimiser.

    ``name``: the group's name; its optimiser is ``reweight.upper.optimizers.<name>`` when the
    strategy's YAML sets one, else ``reweight.upper.optimizer``. ``sparse``: each row of the
    parameters moves only when the hypergradient touched it (a table over training instances: its
    gradients are handed to the optimiser as sparse tensors, for torch's ``SparseAdam``); dense
    groups step every entry (e.g. a domain table, where every weight depends on every entry).
    """

    name: str
    parameters: tuple[nn.Parameter, ...]
    sparse: bool = False


def can_be_negative(activation: nn.Module) -> bool:
    """Whether ``activation`` gives negative outputs for some input (probed on a wide grid)."""
    with torch.no_grad():
        return bool((activation(torch.linspace(-100.0, 100.0, 2001)) < 0).any())


def warn_if_negative(activation: nn.Module, where: str) -> None:
    if can_be_negative(activation):
        log.warning(
            "%s: activation %s allows negative weights, which turn the lower level into gradient "
            "ascent on those chains (published DreamPRM-1.5 used clip); softplus, relu or sigmoid "
            "keep weights >= 0",
            where,
            activation,
        )


class Reweighter(nn.Module):
    """Base class: ``forward(batch, scores, losses) -> weights [chains]``.

    ``normalize="batch"`` divides the weights by their mean over the chains of the batch that carry a
    label, so the lower level's effective learning rate does not drift with the weights' scale.
    """

    #: whether instance weights need a forward pass over the data (a net), not just a read (a table)
    needs_data_pass: bool = False

    def __init__(self, training_set: TrainingSet, normalize: str = "none"):
        super().__init__()
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
        self.training_set = training_set
        self.normalize = normalize

    def raw_weights(self, batch: dict, scores, losses: torch.Tensor, has_label=None) -> torch.Tensor:
        """One weight per chain before normalisation; ``has_label`` (bool, per chain) may be None."""
        raise NotImplementedError

    def forward(self, batch: dict, scores, losses: torch.Tensor, has_label: torch.Tensor | None = None):
        weights = self.raw_weights(batch, scores, losses, has_label)
        if self.normalize == "batch":
            keep = has_label if has_label is not None else torch.ones_like(weights, dtype=torch.bool)
            mean = (weights * keep).sum() / keep.sum().clamp(min=1)
            weights = weights / mean.clamp(min=1e-8)
        return weights

    def parameter_groups(self) -> list[ParameterGroup]:
        """The groups the upper level optimises, one optimiser each: by default one dense group
        ``weights`` of every parameter. A strategy with sparse rows, or with parts that need
        optimisers of their own, overrides this."""
        return [ParameterGroup("weights", tuple(self.parameters()))]

    def instance_weights(self) -> torch.Tensor | None:
        """Current weight of every training instance; None where that needs a data pass."""
        return None

    def domain_weights(self) -> dict[str, float] | None:
        """Current weight of every domain, for modules that weigh domains."""
        return None
