"""Best-of-N selection and chain-level metrics from step scores (docs/methods.md#aggregations).

The PRM scores each candidate's steps once; everything here is a pure function of those scores, so
every aggregation, every baseline and the accuracy-against-N curve come from one scoring pass.

Tie rule. Published code breaks ties by position (MM-PRM takes the first candidate, DreamPRM the
last), so its accuracy depends on the order of the candidates. Here, when k candidates tie for the
highest aggregate (equal up to a relative ``TIE_RTOL``, i.e. float rounding), the problem earns
``correct_tied / k``: the expected accuracy of a uniform pick among them. That is exact,
deterministic and unbiased, and each accuracy comes with the number of problems that had a tie.
The majority vote uses the same rule over the tied answers, each answer earning the share of its
voters that are correct. Answers vote together when :func:`prm.answers.vote_keys` gives them one key:
the same normalised form, or equivalent by :func:`prm.answers.answers_match` (``\\frac{1}{2}``,
``50%`` and ``0.5``; ``3, 2`` and ``x=2 or x=3``), so one answer in several notations is one vote.

PRM-weighted majority vote (``weighted_vote``, per probability-valued aggregation): each distinct
final answer collects the sum of its candidates' aggregate scores, and the answer with the largest
sum wins (Uesato et al. 2022, "Solving math word problems with process- and outcome-based feedback",
and Math-Shepherd, Wang et al. 2024, eq. 5). It is defined for aggregations whose value is a
probability only: a sum of log-probabilities or logits is not a vote weight. Ties between answer sums
(equal up to ``TIE_RTOL``) follow the majority vote's rule; candidates without an answer do not vote;
empty candidates vote with their ``EMPTY_SCORE`` (0 for every probability-valued aggregation); when
nobody states an answer, all candidates tie.

An empty candidate (no scored step) is left out of the selection unless every candidate is empty:
its aggregate ``EMPTY_SCORE`` is the lowest value, but a real chain can reach it too (min of a chain
holding a 0). Infinite aggregates (-inf for empty chains under sum_logprob) compare as usual. NaN or
out-of-range step scores raise ``ValueError``, since a silent NaN would make every comparison false.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from prm.aggregation import AGGREGATIONS, PROBABILITY_VALUED, Aggregation, pad_ragged
from prm.answers import answer_key as normalise_answer  # noqa: F401 (re-exported)
from prm.answers import vote_keys
from prm.data.records import BestOfNProblem

ScoreLike = torch.Tensor | Sequence[float]
StepScores = Sequence[Sequence[ScoreLike]]  # [problem][candidate] -> step scores

TIE_RTOL = 1e-12
TIE_RULE = (
    "candidates whose aggregates are equal up to a relative 1e-12 tie; a tied problem earns "
    "correct_tied / k (expected accuracy of a uniform pick among the k tied); empty candidates are "
    "never picked unless all are empty; majority vote: same rule over the tied answers, each "
    "earning its voters' share of correct, candidates without an answer do not vote; weighted vote: "
    "the same over the answers whose summed aggregate is highest (equal up to a relative 1e-12)"
)
BASELINES = ("random", "first", "majority_vote", "pass_at_n")


@dataclass
class MethodResult:
    """Accuracy of one selection method; ``ties``: problems whose pick was a tie (None: no pick)."""

    accuracy: float
    ties: int | None = None


@dataclass
class BestOfNResult:
    """Best-of-N accuracy of every aggregation and every baseline on one test set."""

    problems: int
    max_candidates: int
    aggregations: dict[str, MethodResult]
    baselines: dict[str, MethodResult]
    best_aggregations: list[str]
    weighted_vote: dict[str, MethodResult] = field(default_factory=dict)  # probability-valued only
    tie_rule: str = TIE_RULE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AccuracyCurve:
    """Best-of-first-n accuracy for n = 1..N (problems with fewer candidates use all of theirs)."""

    n: list[int]
    aggregations: dict[str, list[float]]
    baselines: dict[str, list[float]]
    weighted_vote: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ChainMetrics:
    """How well chain scores separate right from wrong chains (meta / validation sets).

    ``accuracy`` (score >= 0.5 predicts right) and ``mse`` are None for aggregations whose value is
    not a probability; ``auroc`` is NaN when only one class is present.
    """

    chains: int
    positives: int
    auroc: float
    accuracy: float | None
    mse: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Scored:
    """One problem, ready for selection: per-candidate facts and aggregates, in candidate order."""

    correct: torch.Tensor  # [N] float64, 1.0 where right
    nonempty: torch.Tensor  # [N] bool
    values: dict[str, torch.Tensor]  # aggregation -> [N]
    answers: list[str | None]  # voting keys of the final answers (prm.answers.vote_keys)


def as_step_scores(scores: ScoreLike, where: str) -> torch.Tensor:
    """Step scores of one chain as a float64 vector, rejecting NaN and values outside [0, 1]."""
    tensor = torch.as_tensor(scores, dtype=torch.float64).detach().cpu()
    if tensor.dim() != 1:
        raise ValueError(f"{where}: step scores must be 1-D, got shape {tuple(tensor.shape)}")
    if torch.isnan(tensor).any():
        raise ValueError(f"{where}: step scores contain NaN")
    if ((tensor < 0) | (tensor > 1)).any():
        raise ValueError(f"{where}: step scores must lie in [0, 1], got {tensor.tolist()}")
    return tensor


def aggregate_all(chains: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every aggregation of each chain, ``{name: [chains]}``; empty chains get ``EMPTY_SCORE``."""
    scores, mask = pad_ragged(chains, torch.float64)
    values = {}
    with torch.no_grad():
        for name in AGGREGATIONS:
            values[name] = Aggregation(name)(scores, mask)
            if torch.isnan(values[name]).any():
                raise ValueError(f"aggregation {name!r} gave NaN")
    return values


def _prepare(problems: Sequence[BestOfNProblem], step_scores: StepScores) -> list[_Scored]:
    if len(problems) != len(step_scores):
        raise ValueError(f"{len(problems)} problems but step scores for {len(step_scores)}")
    if not problems:
        raise ValueError("no problems to evaluate")
    scored = []
    for problem, scores in zip(problems, step_scores):
        if not problem.candidates:
            raise ValueError(f"problem {problem.id!r} has no candidates")
        if len(scores) != len(problem.candidates):
            raise ValueError(
                f"problem {problem.id!r}: {len(problem.candidates)} candidates but {len(scores)} score lists"
            )
        chains = [as_step_scores(s, f"problem {problem.id!r} candidate {i}") for i, s in enumerate(scores)]
        scored.append(
            _Scored(
                correct=torch.tensor([float(c.correct) for c in problem.candidates], dtype=torch.float64),
                nonempty=torch.tensor([len(chain) > 0 for chain in chains], dtype=torch.bool),
                values=aggregate_all(chains),
                answers=vote_keys([c.final_answer for c in problem.candidates]),
            )
        )
    return scored


def _pick(values: torch.Tensor, correct: torch.Tensor, nonempty: torch.Tensor) -> tuple[float, bool]:
    """(expected correctness of the highest-valued candidate under the tie rule, whether it tied)."""
    eligible = nonempty if nonempty.any() else torch.ones_like(nonempty)
    values, correct = values[eligible], correct[eligible]
    tied = torch.isclose(values, values.max().expand_as(values), rtol=TIE_RTOL, atol=0.0)
    return correct[tied].mean().item(), int(tied.sum()) > 1


def _majority(answers: list[str | None], correct: torch.Tensor) -> tuple[float, bool]:
    """Self-consistency under the tie rule: the weighted vote with every weight 1 (vote counts are
    exact integers, so only equal counts tie); when nobody states an answer, all candidates tie."""
    return _weighted_vote(answers, torch.ones(len(answers), dtype=torch.float64), correct)


def _weighted_vote(
    answers: list[str | None], weights: torch.Tensor, correct: torch.Tensor
) -> tuple[float, bool]:
    """PRM-weighted majority vote: the answer whose candidates' summed ``weights`` is highest wins.

    ``weights`` ``[N]`` are probability-valued aggregates (>= 0). Tied sums (relative ``TIE_RTOL``)
    share the credit as in :func:`_majority`; returns (expected correctness, whether it tied).
    """
    sums: dict[str, float] = {}
    voters: dict[str, list[float]] = {}
    for answer, weight, right in zip(answers, weights.tolist(), correct.tolist()):
        if answer is not None:
            sums[answer] = sums.get(answer, 0.0) + weight
            voters.setdefault(answer, []).append(right)
    if not sums:
        return correct.mean().item(), len(answers) > 1
    top = max(sums.values())
    winners = [key for key, total in sums.items() if math.isclose(total, top, rel_tol=TIE_RTOL, abs_tol=0.0)]
    credit = sum(sum(voters[key]) / len(voters[key]) for key in winners) / len(winners)
    return credit, len(winners) > 1


def _evaluate(
    scored: list[_Scored], n: int
) -> tuple[dict[str, MethodResult], dict[str, MethodResult], dict[str, MethodResult]]:
    """Accuracies when each problem offers only its first ``n`` candidates:
    (aggregations, baselines, weighted votes)."""
    credit = {name: 0.0 for name in AGGREGATIONS}
    ties = {name: 0 for name in AGGREGATIONS}
    weighted = sorted(PROBABILITY_VALUED)
    vote_credit = {name: 0.0 for name in weighted}
    weighted_ties = {name: 0 for name in weighted}
    random = first = vote = oracle = 0.0
    vote_ties = 0
    for problem in scored:
        correct, nonempty = problem.correct[:n], problem.nonempty[:n]
        for name in AGGREGATIONS:
            value, tied = _pick(problem.values[name][:n], correct, nonempty)
            credit[name] += value
            ties[name] += tied
        for name in weighted:
            value, tied = _weighted_vote(problem.answers[:n], problem.values[name][:n], correct)
            vote_credit[name] += value
            weighted_ties[name] += tied
        value, tied = _majority(problem.answers[:n], correct)
        vote += value
        vote_ties += tied
        random += correct.mean().item()
        first += correct[0].item()
        oracle += correct.max().item()
    count = len(scored)
    aggregations = {name: MethodResult(credit[name] / count, ties[name]) for name in AGGREGATIONS}
    baselines = {
        "random": MethodResult(random / count),
        "first": MethodResult(first / count),
        "majority_vote": MethodResult(vote / count, vote_ties),
        "pass_at_n": MethodResult(oracle / count),
    }
    votes = {name: MethodResult(vote_credit[name] / count, weighted_ties[name]) for name in weighted}
    return aggregations, baselines, votes


def best_of_n(problems: Sequence[BestOfNProblem], step_scores: StepScores) -> BestOfNResult:
    """Best-of-N accuracy of every aggregation, every PRM-weighted vote and every baseline.

    ``step_scores[p][c]`` holds the step scores in [0, 1] of candidate ``c`` of problem ``p``
    (possibly empty). ``best_aggregations`` lists every aggregation with the highest accuracy.
    """
    scored = _prepare(problems, step_scores)
    max_candidates = max(len(problem.candidates) for problem in problems)
    aggregations, baselines, votes = _evaluate(scored, max_candidates)
    top = max(result.accuracy for result in aggregations.values())
    best = [
        name for name, result in aggregations.items() if math.isclose(result.accuracy, top, rel_tol=1e-12)
    ]
    return BestOfNResult(len(problems), max_candidates, aggregations, baselines, best, votes)


def accuracy_vs_n(problems: Sequence[BestOfNProblem], step_scores: StepScores) -> AccuracyCurve:
    """Accuracy of every method when only the first n candidates are offered, n = 1..N.

    The first candidates stand for a smaller sample from the same policy; at n = N the values equal
    :func:`best_of_n`'s.
    """
    scored = _prepare(problems, step_scores)
    max_candidates = max(len(problem.candidates) for problem in problems)
    curve = AccuracyCurve(
        list(range(1, max_candidates + 1)),
        {name: [] for name in AGGREGATIONS},
        {name: [] for name in BASELINES},
        {name: [] for name in sorted(PROBABILITY_VALUED)},
    )
    for n in curve.n:
        aggregations, baselines, votes = _evaluate(scored, n)
        for name, result in aggregations.items():
            curve.aggregations[name].append(result.accuracy)
        for name, result in baselines.items():
            curve.baselines[name].append(result.accuracy)
        for name, result in votes.items():
            curve.weighted_vote[name].append(result.accuracy)
    return curve


def _labels(labels: Sequence[int], count: int) -> np.ndarray:
    array = np.asarray(labels, dtype=np.float64).reshape(-1)
    if len(array) != count:
        raise ValueError(f"{count} chain scores but {len(array)} labels")
    if not np.isin(array, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1, got {sorted(set(array.tolist()))}")
    return array.astype(np.int64)


def _chain_scores(scores: ScoreLike) -> np.ndarray:
    values = torch.as_tensor(scores, dtype=torch.float64).detach().cpu().reshape(-1).numpy()
    if np.isnan(values).any():
        raise ValueError("chain scores contain NaN")
    return values


def auroc(scores: ScoreLike, labels: Sequence[int]) -> float:
    """Exact area under the ROC curve (Mann-Whitney U with average ranks, so a tied positive and
    negative count one half); NaN when only one class is present."""
    values = _chain_scores(scores)
    truth = _labels(labels, len(values))
    positives, negatives = int(truth.sum()), int(len(truth) - truth.sum())
    if positives == 0 or negatives == 0:
        return math.nan
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2  # 1-based rank of each distinct value
    rank_sum = average_rank[inverse][truth == 1].sum()
    return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))


def chain_metrics(scores: ScoreLike, labels: Sequence[int], probability: bool = True) -> ChainMetrics:
    """AUROC of chain scores against 0/1 labels, plus accuracy at 0.5 and MSE when they are probabilities."""
    values = _chain_scores(scores)
    truth = _labels(labels, len(values))
    area = auroc(values, truth)
    accuracy = float(((values >= 0.5) == truth).mean()) if probability and len(values) else None
    mse = float(((values - truth) ** 2).mean()) if probability and len(values) else None
    return ChainMetrics(len(values), int(truth.sum()), area, accuracy, mse)


def meta_metrics(step_scores: Sequence[ScoreLike], labels: Sequence[int]) -> dict[str, ChainMetrics]:
    """:func:`chain_metrics` of every aggregation of each chain's step scores."""
    chains = [as_step_scores(scores, f"chain {i}") for i, scores in enumerate(step_scores)]
    values = aggregate_all(chains)
    return {name: chain_metrics(values[name], labels, name in PROBABILITY_VALUED) for name in AGGREGATIONS}
