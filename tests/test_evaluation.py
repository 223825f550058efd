"""Evaluation metrics against hand-computed values: picks, the tie rule, baselines, AUROC, ProcessBench."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from prm.aggregation import AGGREGATIONS, PROBABILITY_VALUED
from prm.data.records import BestOfNProblem, Candidate
from prm.evaluation import (
    accuracy_vs_n,
    auroc,
    best_of_n,
    chain_metrics,
    choose_threshold,
    meta_metrics,
    normalise_answer,
    predict_first_error,
    processbench,
    write_best_of_n,
    write_processbench,
)


def problem(correct: list[bool], answers: list[str | None] | None = None, pid: str = "p") -> BestOfNProblem:
    answers = answers or [None] * len(correct)
    candidates = [Candidate(steps=["s"], final_answer=a, correct=c) for a, c in zip(answers, correct)]
    return BestOfNProblem(id=pid, question="q", candidates=candidates)


def one_correct(index: int, size: int) -> list[bool]:
    return [i == index for i in range(size)]


# Step scores of two problems, three candidates each, and each aggregation's pick worked out by hand
# (columns: min, max, last, mean, prod, log_mean, sum_logprob, sum_logit, mean_odd):
# P1  A [0.9, 0.1]   .1  .9   .1  .5    .09   .5   -2.41  0     4.56
#     B [0.6, 0.6]   .6  .6   .6  .6    .36   .6   -1.02  .81   1.5
#     C [0.5]        .5  .5   .5  .5    .5    .5   -0.69  0     1
# P2  D [.8, .8, .8] .8  .8   .8  .8    .512  .8   -0.67  4.16  4
#     E [0.7]        .7  .7   .7  .7    .7    .7   -0.36  .85   2.33
#     F [.95, .3]    .3  .95  .3  .625  .285  .74  -1.26  2.10  9.71
P1_SCORES = [[0.9, 0.1], [0.6, 0.6], [0.5]]
P2_SCORES = [[0.8, 0.8, 0.8], [0.7], [0.95, 0.3]]
P1_PICK = {
    "min": 1,
    "max": 0,
    "last": 1,
    "mean": 1,
    "prod": 2,
    "log_mean": 1,
    "sum_logprob": 2,
    "sum_logit": 1,
    "mean_odd": 0,
}
P2_PICK = {
    "min": 0,
    "max": 2,
    "last": 0,
    "mean": 0,
    "prod": 1,
    "log_mean": 0,
    "sum_logprob": 1,
    "sum_logit": 0,
    "mean_odd": 2,
}


@pytest.mark.parametrize("right1", range(3))
@pytest.mark.parametrize("right2", range(3))
def test_each_aggregation_picks_the_hand_computed_candidate(right1, right2):
    problems = [problem(one_correct(right1, 3)), problem(one_correct(right2, 3))]
    result = best_of_n(problems, [P1_SCORES, P2_SCORES])
    for name in AGGREGATIONS:
        expected = ((P1_PICK[name] == right1) + (P2_PICK[name] == right2)) / 2
        assert result.aggregations[name].accuracy == expected, name
        assert result.aggregations[name].ties == 0
    top = max(r.accuracy for r in result.aggregations.values())
    assert result.best_aggregations == [n for n, r in result.aggregations.items() if r.accuracy == top]


def test_tied_candidates_earn_the_share_of_correct_among_them():
    # Two identical chains, one right, and a worse one: every aggregation ties the first two.
    result = best_of_n([problem([True, False, False])], [[[0.7], [0.7], [0.2]]])
    for name in AGGREGATIONS:
        assert result.aggregations[name].accuracy == 0.5
        assert result.aggregations[name].ties == 1


def test_tie_rule_does_not_depend_on_candidate_order():
    scores = [[0.7], [0.7], [0.7], [0.1]]
    forward = best_of_n([problem([True, False, False, True])], [scores])
    backward = best_of_n([problem([True, False, False, True][::-1])], [scores[::-1]])
    for name in AGGREGATIONS:
        assert forward.aggregations[name].accuracy == pytest.approx(1 / 3)
        assert backward.aggregations[name].accuracy == forward.aggregations[name].accuracy


def test_values_equal_up_to_float_rounding_tie():
    # 0.1 + 0.2 + 0.3 != 0.3 + 0.2 + 0.1 in floats, yet the means are the same number.
    result = best_of_n([problem([True, False])], [[[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]]])
    assert result.aggregations["mean"].accuracy == 0.5
    assert result.aggregations["mean"].ties == 1
    assert result.aggregations["last"].accuracy == 1.0  # 0.3 > 0.1: no tie


def test_random_first_and_pass_at_n_baselines_are_exact():
    problems = [
        problem([True, False, False, False]),
        problem([False, True, True, True]),
        problem([False, False, False, False]),
    ]
    scores = [[[0.5]] * 4] * 3
    baselines = best_of_n(problems, scores).baselines
    assert baselines["random"].accuracy == pytest.approx((1 / 4 + 3 / 4 + 0) / 3)
    assert baselines["first"].accuracy == pytest.approx(1 / 3)
    assert baselines["pass_at_n"].accuracy == pytest.approx(2 / 3)
    assert baselines["random"].ties is None and baselines["pass_at_n"].ties is None


def test_random_baseline_one_quarter_and_three_quarters_gives_one_half():
    problems = [problem([True, False, False, False]), problem([True, True, True, False])]
    assert best_of_n(problems, [[[0.5]] * 4] * 2).baselines["random"].accuracy == 0.5


@pytest.mark.parametrize(
    "raw, key",
    [
        ("$1,000$", "1000"),
        ("1000.0", "1000"),
        ("\\boxed{1000}", "1000"),
        (" 3. ", "3"),
        ("0.50", "0.5"),
        ("(B)", "b"),
        ("b.", "b"),
        ("B)", "b"),
        ("x = 3", "x=3"),
        ("\\text{Yes}", "yes"),
        (None, None),
        ("  ", None),
    ],
)
def test_answer_normalisation(raw, key):
    assert normalise_answer(raw) == key


def test_majority_vote_groups_normalised_answers_and_ignores_missing_ones():
    # "1000" three times (two right) against "7" twice; the two unanswered candidates do not vote.
    answers = ["$1,000$", "7", None, "1000.0", "\\boxed{1000}", "7", None]
    correct = [True, False, True, True, False, False, True]
    result = best_of_n([problem(correct, answers)], [[[0.5]] * 7])
    assert result.baselines["majority_vote"].accuracy == pytest.approx(2 / 3)
    assert result.baselines["majority_vote"].ties == 0


def test_majority_vote_tie_rule():
    # "3" and "4" get two votes each: each tied answer earns its voters' share of correct.
    answers = ["3.0", " 3", "4", "4", None, "5"]
    correct = [True, True, True, False, True, False]
    result = best_of_n([problem(correct, answers)], [[[0.5]] * 6])
    assert result.baselines["majority_vote"].accuracy == pytest.approx((1.0 + 0.5) / 2)
    assert result.baselines["majority_vote"].ties == 1


def test_majority_vote_without_any_answer_is_a_tie_of_all():
    result = best_of_n([problem([True, False, False, False])], [[[0.5]] * 4])
    assert result.baselines["majority_vote"].accuracy == 0.25
    assert result.baselines["majority_vote"].ties == 1


def test_empty_candidate_never_wins():
    # The empty candidate is right, but min/max/last/mean/prod of [0.0] equal EMPTY_SCORE.
    result = best_of_n([problem([True, False])], [[[], [0.0]]])
    for name in AGGREGATIONS:
        assert result.aggregations[name].accuracy == 0.0, name
        assert result.aggregations[name].ties == 0


def test_all_empty_candidates_tie_without_nan():
    result = best_of_n([problem([True, False])], [[[], torch.tensor([])]])
    for name in AGGREGATIONS:
        assert result.aggregations[name].accuracy == 0.5, name
        assert result.aggregations[name].ties == 1


def test_saturated_scores_give_finite_results():
    # Clamping keeps [1, 1] above [0, 1] and [0] under every aggregation but max and last (1 = 1: a tie).
    result = best_of_n([problem([True, False, False])], [[[1.0, 1.0], [0.0, 1.0], [0.0]]])
    for name in AGGREGATIONS:
        assert math.isfinite(result.aggregations[name].accuracy)
        assert result.aggregations[name].accuracy == (0.5 if name in ("max", "last") else 1.0), name


@pytest.mark.parametrize("bad, message", [([0.5, math.nan], "NaN"), ([1.5], r"\[0, 1\]")])
def test_invalid_scores_raise(bad, message):
    with pytest.raises(ValueError, match=message):
        best_of_n([problem([True, False])], [[[0.5], bad]])


def test_mismatched_score_lists_raise():
    with pytest.raises(ValueError, match="2 candidates but 1"):
        best_of_n([problem([True, False])], [[[0.5]]])


def test_accuracy_vs_n_ends_at_the_headline_and_starts_at_the_first_candidate():
    rng = random.Random(0)
    problems, scores = [], []
    for index in range(6):
        size = rng.randint(2, 5)
        answers = [rng.choice(["1", "2", None]) for _ in range(size)]
        problems.append(problem([rng.random() < 0.4 for _ in range(size)], answers, f"p{index}"))
        scores.append([[rng.random() for _ in range(rng.randint(1, 4))] for _ in range(size)])
    headline = best_of_n(problems, scores)
    curve = accuracy_vs_n(problems, scores)
    assert curve.n == list(range(1, headline.max_candidates + 1))
    for name in AGGREGATIONS:
        assert curve.aggregations[name][-1] == headline.aggregations[name].accuracy
        assert curve.aggregations[name][0] == headline.baselines["first"].accuracy
    for name, method in headline.baselines.items():
        assert curve.baselines[name][-1] == method.accuracy
    assert all(a <= b for a, b in zip(curve.baselines["pass_at_n"], curve.baselines["pass_at_n"][1:]))
    assert json.loads(json.dumps(curve.to_dict()))["n"] == curve.n
    assert json.loads(json.dumps(headline.to_dict()))["problems"] == 6


def test_auroc_with_ties_by_hand():
    # Positives 0.4 and 0.8 against negatives 0.1 and 0.4: pairs 1 + 0.5 + 1 + 1 = 3.5 of 4.
    assert auroc([0.1, 0.4, 0.4, 0.8], [0, 0, 1, 1]) == 0.875
    assert auroc([0.9, 0.1], [0, 1]) == 0.0
    assert math.isnan(auroc([0.3, 0.4], [1, 1]))


def test_chain_metrics_by_hand():
    metrics = chain_metrics([0.1, 0.4, 0.4, 0.8], [0, 0, 1, 1])
    assert metrics.accuracy == 0.75  # 0.4 labelled 1 falls below 0.5
    assert metrics.mse == pytest.approx((0.01 + 0.16 + 0.36 + 0.04) / 4)
    assert (metrics.chains, metrics.positives, metrics.auroc) == (4, 2, 0.875)
    assert chain_metrics([-3.0, 2.0], [0, 1], probability=False).accuracy is None
    assert chain_metrics(torch.tensor([0.2, 0.9], requires_grad=True), [0.0, 1.0]).accuracy == 1.0
    with pytest.raises(ValueError, match="0 or 1"):
        chain_metrics([0.2, 0.9], [0.7, 1])
    with pytest.raises(ValueError, match="NaN"):
        chain_metrics([math.nan, 0.9], [0, 1])


def test_meta_metrics_cover_every_aggregation():
    metrics = meta_metrics([[0.9, 0.8], [0.2, 0.9], [], [0.6]], [1, 0, 0, 1])
    assert set(metrics) == set(AGGREGATIONS)
    for name, result in metrics.items():
        assert (result.accuracy is None) == (name not in PROBABILITY_VALUED)
    assert metrics["min"].auroc == 1.0  # min: 0.8, 0.2, empty 0.0, 0.6
    assert metrics["min"].accuracy == 1.0


# ProcessBench split at threshold 0.5:
#   [0.9, 0.2, 0.8] error 1 -> predicts 1 (right)     [0.9, 0.8, 0.3] error 1 -> predicts 2 (wrong)
#   [0.9, 0.7]      correct -> predicts -1 (right)    [0.4, 0.9]      correct -> predicts 0 (wrong)
#   [0.6, 0.6, 0.6] correct -> predicts -1 (right)
PB_SCORES = [[0.9, 0.2, 0.8], [0.9, 0.8, 0.3], [0.9, 0.7], [0.4, 0.9], [0.6, 0.6, 0.6]]
PB_ERRORS = [1, 1, -1, -1, -1]


def test_predict_first_error():
    assert predict_first_error([0.9, 0.2, 0.1], 0.5) == 1
    assert predict_first_error([0.9, 0.5], 0.5) == -1  # strictly below
    assert predict_first_error([], 0.5) == -1


def test_processbench_accuracies_and_f1_by_hand():
    result = processbench(PB_SCORES, PB_ERRORS, 0.5)
    assert result.error_accuracy == 0.5
    assert result.correct_accuracy == pytest.approx(2 / 3)
    assert result.f1 == pytest.approx(4 / 7)
    assert (result.erroneous, result.correct) == (2, 3)


def test_processbench_rejects_a_first_error_past_the_chain():
    with pytest.raises(ValueError, match="first error 3"):
        processbench([[0.5, 0.5]], [3], 0.5)


def test_choose_threshold_on_a_tiny_split():
    # F1 by threshold: 0.2 -> 0, 0.3 -> 2/3, 0.4 -> 2/3, 0.6 -> 4/7, 0.7 -> 0.4, 0.8 and 0.9 -> 0.
    assert choose_threshold(PB_SCORES, PB_ERRORS) == 0.3
    assert choose_threshold(PB_SCORES, PB_ERRORS, candidates=[0.5, 0.45, 0.35]) == 0.35
    with pytest.raises(ValueError, match="both"):
        choose_threshold(PB_SCORES[:2], PB_ERRORS[:2])


def test_choose_threshold_matches_brute_force():
    rng = random.Random(1)
    scores, errors = [], []
    for _ in range(40):
        length = rng.randint(1, 6)
        scores.append([rng.choice([0.1, 0.3, 0.5, 0.7, 0.9, rng.random()]) for _ in range(length)])
        errors.append(rng.randint(-1, length - 1))
    chosen = choose_threshold(scores, errors)
    grid = sorted({s for chain in scores for s in chain}) + [math.nextafter(max(map(max, scores)), math.inf)]
    f1 = [processbench(scores, errors, t).f1 for t in grid]
    assert chosen == grid[f1.index(max(f1))]


def test_reports_are_written_and_list_every_method(tmp_path):
    problems = [problem(one_correct(0, 3), ["1", "1", "2"]), problem(one_correct(1, 3), ["5", "6", "6"])]
    result = best_of_n(problems, [P1_SCORES, P2_SCORES])
    markdown = write_best_of_n(result, tmp_path / "eval", accuracy_vs_n(problems, [P1_SCORES, P2_SCORES]))
    saved = json.loads((tmp_path / "eval" / "best_of_n.json").read_text())
    assert saved["aggregations"]["max"]["accuracy"] == result.aggregations["max"].accuracy
    assert saved["accuracy_vs_n"]["n"] == [1, 2, 3]
    assert (tmp_path / "eval" / "best_of_n.md").read_text() == markdown
    for name in [*AGGREGATIONS, "random", "first", "majority_vote", "pass_at_n"]:
        assert f"| {name} |" in markdown or f"| **{name}** (best) |" in markdown
    for name in result.best_aggregations:
        assert f"| **{name}** (best) |" in markdown
    assert "Tie rule" in markdown
    assert [p.name for p in (tmp_path / "eval").iterdir()] and not list((tmp_path / "eval").glob("*.tmp"))

    subsets = {
        "gsm8k": processbench(PB_SCORES, PB_ERRORS, 0.5),
        "math": processbench(PB_SCORES[:2], PB_ERRORS[:2], 0.5),
    }
    markdown = write_processbench(subsets, tmp_path / "eval")
    saved = json.loads((tmp_path / "eval" / "processbench.json").read_text())
    assert saved["math"]["correct_accuracy"] is None  # NaN (no correct chain) is null in JSON
    assert "| gsm8k | 0.5 | 50.00 | 66.67 | 57.14 | 2 | 3 |" in markdown
    assert "| mean |" in markdown
