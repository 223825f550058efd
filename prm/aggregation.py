"""Aggregations: step scores of a chain -> one chain score (docs/methods.md#aggregations).

Each function takes ``scores`` of shape ``[chains, max_steps]`` with values in [0, 1] and a boolean
``mask`` of the same shape (True where a step exists) and returns ``[chains]``. They are
differentiable, and safe at scores of exactly 0 and 1: probabilities are clamped to
``[eps, 1 - eps]`` before any log, logit or odds, so nothing becomes inf or NaN.

Empty chains (no step) get ``EMPTY_SCORE[name]``, the lowest value the aggregation can take
(-inf for the unbounded ones), so that an empty candidate never wins best-of-N. Scores of padded
positions never leak into a result.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

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


AGGREGATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "min": agg_min,
    "max": agg_max,
    "last": agg_last,
    "mean": agg_mean,
    "prod": agg_prod,
    "log_mean": agg_log_mean,
    "sum_logprob": agg_sum_logprob,
    "sum_logit": agg_sum_logit,
    "mean_odd": agg_mean_odd,
}
# Lowest value each aggregation can reach; given to empty chains so they never win.
EMPTY_SCORE = {
    "min": 0.0,
    "max": 0.0,
    "last": 0.0,
    "mean": 0.0,
    "prod": 0.0,
    "log_mean": 0.0,
    "sum_logprob": -math.inf,
    "sum_logit": -math.inf,
    "mean_odd": 0.0,
}
# Aggregations whose value is a probability in [0, 1] (usable in the meta loss (p - y)^2).
PROBABILITY_VALUED = {"min", "max", "last", "mean", "prod", "log_mean"}


def pad_ragged(chains, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack chains of different lengths into ``[chains, max_steps]`` scores and a mask."""
    width = max([len(chain) for chain in chains] + [1])
    scores = torch.zeros(len(chains), width, dtype=dtype)
    mask = torch.zeros(len(chains), width, dtype=torch.bool)
    for row, chain in enumerate(chains):
        scores[row, : len(chain)] = torch.as_tensor(chain, dtype=dtype)
        mask[row, : len(chain)] = True
    return scores, mask


class Aggregation:
    """A named aggregation, built from ``conf/aggregation/<name>.yaml``."""

    def __init__(self, name: str):
        if name not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {name!r}; expected one of {sorted(AGGREGATIONS)}")
        self.name = name
        self.fn = AGGREGATIONS[name]

    @property
    def is_probability(self) -> bool:
        return self.name in PROBABILITY_VALUED

    def __call__(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.bool()
        result = self.fn(scores, mask)
        empty = ~mask.any(-1)
        if empty.any():
            result = torch.where(empty, torch.full_like(result, EMPTY_SCORE[self.name]), result)
        return result

    def __repr__(self) -> str:
        return f"Aggregation({self.name!r})"
