"""Aggregations against hand-computed values, at saturated probabilities and on empty chains."""

import math

import pytest
import torch

from prm.aggregation import AGGREGATIONS, EPS, Aggregation

SCORES = torch.tensor([[0.5, 0.8, 0.2, 0.0], [0.9, 0.6, 0.0, 0.0]], dtype=torch.float64)
MASK = torch.tensor([[True, True, True, False], [True, True, False, False]])


def logit(p):
    return math.log(p / (1 - p))


EXPECTED = {
    "min": [0.2, 0.6],
    "max": [0.8, 0.9],
    "last": [0.2, 0.6],
    "mean": [0.5, 0.75],
    "prod": [0.08, 0.54],
    "log_mean": [
        1 / (1 + math.exp(-(logit(0.5) + logit(0.8) + logit(0.2)) / 3)),
        1 / (1 + math.exp(-(logit(0.9) + logit(0.6)) / 2)),
    ],
    "sum_logprob": [math.log(0.5) + math.log(0.8) + math.log(0.2), math.log(0.9) + math.log(0.6)],
    "sum_logit": [logit(0.5) + logit(0.8) + logit(0.2), logit(0.9) + logit(0.6)],
    "mean_odd": [(1 + 4 + 0.25) / 3, (9 + 1.5) / 2],
}


@pytest.mark.parametrize("name", sorted(AGGREGATIONS))
def test_hand_computed_values(name):
    result = Aggregation(name)(SCORES, MASK)
    assert result.tolist() == pytest.approx(EXPECTED[name], rel=1e-9)


@pytest.mark.parametrize("name", sorted(AGGREGATIONS))
def test_saturated_probabilities_give_finite_values_and_gradients(name):
    scores = torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 1.0]], requires_grad=True)
    mask = torch.ones(2, 3, dtype=torch.bool)
    result = Aggregation(name)(scores, mask)
    assert torch.isfinite(result).all()
    result.sum().backward()
    assert torch.isfinite(scores.grad).all()


def test_clamping_bounds_saturated_logits():
    # float64: 1 - EPS is exact to 1e-16, so the clamped logit is logit(1 - EPS) to a few units of
    # 2^-53 amplified by 1 / EPS (1e-10 relative). In float32, 1 - 1e-6 rounds to 1 - 1.013e-6, a
    # logit 0.1% lower, which a tolerance would have to absorb.
    result = Aggregation("sum_logit")(torch.tensor([[1.0]], dtype=torch.float64), torch.tensor([[True]]))
    assert result.item() == pytest.approx(logit(1 - EPS), rel=1e-9)


@pytest.mark.parametrize("name", sorted(AGGREGATIONS))
def test_empty_chain_never_beats_a_real_one(name):
    scores = torch.tensor([[0.01, 0.02], [0.9, 0.9]])
    mask = torch.tensor([[True, True], [False, False]])
    result = Aggregation(name)(scores, mask)
    assert result[1] <= result[0]
    assert not torch.isnan(result).any()


def test_padding_values_do_not_leak():
    mask = torch.tensor([[True, False]])
    for name in AGGREGATIONS:
        a = Aggregation(name)(torch.tensor([[0.7, 0.0]]), mask)
        b = Aggregation(name)(torch.tensor([[0.7, 1.0]]), mask)
        assert torch.equal(a, b), name


def test_unknown_name_is_refused():
    with pytest.raises(ValueError, match="^aggregation.name='median': expected one of last, log_mean, max, "):
        Aggregation("median")


def test_registry_is_the_single_source():
    from prm.aggregation import EMPTY_SCORE, PROBABILITY_VALUED, REGISTRY

    assert set(REGISTRY) == set(AGGREGATIONS) == set(EMPTY_SCORE)
    assert PROBABILITY_VALUED == {"min", "max", "last", "mean", "prod", "log_mean"}
    unbounded = {name for name, spec in REGISTRY.items() if spec.empty == -math.inf}
    assert unbounded == {"sum_logprob", "sum_logit"}
    for name, spec in REGISTRY.items():
        aggregation = Aggregation(name)
        assert aggregation.fn is spec.fn is AGGREGATIONS[name]
        assert aggregation.is_probability == spec.probability == (name in PROBABILITY_VALUED)
        empty = aggregation(torch.tensor([[0.3, 0.7]]), torch.tensor([[False, False]]))
        assert empty.item() == spec.empty == EMPTY_SCORE[name]


@pytest.mark.parametrize("name", sorted(AGGREGATIONS))
def test_probability_valued_entries_stay_in_unit_interval(name):
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(64, 6, generator=generator, dtype=torch.float64)
    mask = torch.rand(64, 6, generator=generator) < 0.8
    result = Aggregation(name)(scores, mask)
    inside = bool(((result >= 0) & (result <= 1)).all())
    if Aggregation(name).is_probability:
        assert inside
    else:  # unbounded: some random chain leaves [0, 1]
        assert not inside


def test_an_entry_added_to_the_registry_reaches_every_reader(monkeypatch):
    """The README's "Extending" recipe: one REGISTRY line is enough (views are live)."""
    from prm import aggregation as agg
    from prm.evaluation.best_of_n import aggregate_all

    def agg_geomean(scores, mask):
        logs = torch.where(mask, torch.log(scores.clamp_min(1e-12)), torch.zeros_like(scores))
        return torch.exp(logs.sum(-1) / mask.sum(-1).clamp(min=1))

    monkeypatch.setitem(agg.REGISTRY, "geomean", agg.AggregationSpec(agg_geomean, 0.0, True))
    assert "geomean" in agg.AGGREGATIONS and "geomean" in agg.PROBABILITY_VALUED
    assert agg.EMPTY_SCORE["geomean"] == 0.0
    scores = aggregate_all([torch.tensor([0.25, 1.0]), torch.tensor([])])
    assert scores["geomean"].tolist() == pytest.approx([0.5, 0.0])
