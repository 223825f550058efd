"""Aggregations: step scores of a chain -> one chain score (docs/methods.md#aggregations).

Every aggregation is one entry of ``REGISTRY`` (an :class:`AggregationSpec`: its function, the value
an empty chain gets, and whether its value is a probability); ``conf/aggregation/<name>.yaml`` names
an entry, and everything else (the meta loss, best-of-N, the metrics) reads the registry.

Each function takes ``scores`` of shape ``[chains, max_steps]`` with values in [0, 1] and a boolean
``mask`` of the same shape (True where a step exists) and returns ``[chains]``. They are
differentiable, and safe at scores of exactly 0 and 1: probabilities are clamped to
``[eps, 1 - eps]`` before any log, logit or odds, so nothing becomes inf or NaN.

Empty chains (no step) get ``REGISTRY[name].empty``, the lowest value the aggregation can take
(-inf for the unbounded ones), so that an empty candidate never wins best-of-N. Scores of padded
positions never leak into a result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

import torch

from prm.errors import ConfigError

EPS = 1e-6


def _clamp(scores: torch.Tensor) -> torch.Tensor:
    return scores.clamp(EPS, 1 - EPS)


def _masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, values, torch.zeros_like(values)).sum(-1)


def _count(mask: torch.Tensor) -> torch.Tensor:
    return mask.sum(-1).clamp(min=1).to(torch.get_default_dtype())


def agg_min(scores, mask):
    return torch.where(mask, scores, torch.full_like(scores, math.inf)).min(-1).values


def agg_max(scores, mask):
    return torch.where(mask, scores, torch.full_like(scores, -math.inf)).max(-1).values


def agg_last(scores, mask):
    last = (mask.sum(-1) - 1).clamp(min=0)
    return scores.gather(-1, last.unsqueeze(-1)).squeeze(-1)


def agg_mean(scores, mask):
    return _masked_sum(scores, mask) / _count(mask)


def agg_prod(scores, mask):
    return torch.where(mask, scores, torch.ones_like(scores)).prod(-1)


def agg_log_mean(scores, mask):
    logit = torch.logit(_clamp(scores))
    return torch.sigmoid(_masked_sum(logit, mask) / _count(mask))


def agg_sum_logprob(scores, mask):
    return _masked_sum(torch.log(_clamp(scores)), mask)


def agg_sum_logit(scores, mask):
    return _masked_sum(torch.logit(_clamp(scores)), mask)


def agg_mean_odd(scores, mask):
    clamped = _clamp(scores)
    return _masked_sum(clamped / (1 - clamped), mask) / _count(mask)


@dataclass(frozen=True)
class AggregationSpec:
    """One aggregation: ``fn(scores [chains, steps], mask [chains, steps]) -> [chains]``; ``empty``: the
    value of a chain with no step (the lowest the aggregation can reach, so an empty candidate never
    wins best-of-N); ``probability``: its value lies in [0, 1], so it can serve in the meta loss
    (p - y)^2."""

    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    empty: float
    probability: bool


# Formulas: min/max/last/mean/prod of the step probabilities r_j; log_mean = sigmoid(mean_j logit r_j)
# (DreamPRM's meta-loss aggregation); sum_logprob = sum_j log r_j; sum_logit = sum_j logit r_j;
# mean_odd = mean_j r_j / (1 - r_j).
REGISTRY: dict[str, AggregationSpec] = {
    "min": AggregationSpec(agg_min, 0.0, True),
    "max": AggregationSpec(agg_max, 0.0, True),
    "last": AggregationSpec(agg_last, 0.0, True),
    "mean": AggregationSpec(agg_mean, 0.0, True),
    "prod": AggregationSpec(agg_prod, 0.0, True),
    "log_mean": AggregationSpec(agg_log_mean, 0.0, True),
    "sum_logprob": AggregationSpec(agg_sum_logprob, -math.inf, False),
    "sum_logit": AggregationSpec(agg_sum_logit, -math.inf, False),
    "mean_odd": AggregationSpec(agg_mean_odd, 0.0, False),
}


class _RegistryField(Mapping):
    """A live read-only view ``{name: REGISTRY[name].<field>}``: an entry added to ``REGISTRY`` later
    (an extension) shows up in it."""

    def __init__(self, field_name: str):
        self._field = field_name

    def __getitem__(self, name: str):
        return getattr(REGISTRY[name], self._field)

    def __iter__(self):
        return iter(REGISTRY)

    def __len__(self) -> int:
        return len(REGISTRY)


class _ProbabilityValued(AbstractSet):
    """A live view of the names of the probability-valued aggregations (values in [0, 1])."""

    def __contains__(self, name) -> bool:
        return name in REGISTRY and REGISTRY[name].probability

    def __iter__(self):
        return (name for name, spec in REGISTRY.items() if spec.probability)

    def __len__(self) -> int:
        return sum(spec.probability for spec in REGISTRY.values())


# Views of the registry, for readers that want one property of every aggregation.
AGGREGATIONS: Mapping[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = _RegistryField("fn")
EMPTY_SCORE: Mapping[str, float] = _RegistryField("empty")
PROBABILITY_VALUED: AbstractSet[str] = _ProbabilityValued()


def pad_ragged(chains, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack chains of different lengths into ``[chains, max_steps]`` scores and a mask."""
    width = max([len(chain) for chain in chains] + [1])
    scores = torch.zeros(len(chains), width, dtype=dtype)
    mask = torch.zeros(len(chains), width, dtype=torch.bool)
    for row, chain in enumerate(chains):
        scores[row, : len(chain)] = torch.as_tensor(chain, dtype=dtype)
        mask[row, : len(chain)] = True
    return scores, mask


def aggregation_spec(name: str, key: str = "aggregation.name") -> AggregationSpec:
    """The ``REGISTRY`` entry of an aggregation name: the one check of an aggregation name, used by
    :class:`Aggregation` and by the config checks (:mod:`prm.config`); ``key`` is the config key
    that gave it, for the message.

    Raises:
        ConfigError (a ValueError): ``name`` is not in ``REGISTRY``; the message lists the names.
    """
    if name not in REGISTRY:
        raise ConfigError(f"{key}={name!r}: expected one of {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


class Aggregation:
    """A named aggregation (an entry of ``REGISTRY``), built from ``conf/aggregation/<name>.yaml``.

    Calling it maps ``scores [chains, steps]`` and ``mask [chains, steps]`` to ``[chains]``; chains
    without any step get the entry's ``empty`` value. Raises ConfigError (a ValueError) for an
    unknown name (:func:`aggregation_spec`).
    """

    def __init__(self, name: str):
        self.spec = aggregation_spec(name)
        self.name = name
        self.fn = self.spec.fn

    @property
    def is_probability(self) -> bool:
        return self.spec.probability

    def __call__(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.bool()
        result = self.fn(scores, mask)
        empty = ~mask.any(-1)
        if empty.any():
            result = torch.where(empty, torch.full_like(result, self.spec.empty), result)
        return result

    def __repr__(self) -> str:
        return f"Aggregation({self.name!r})"
