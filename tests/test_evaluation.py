"""Evaluation metrics against hand-computed values: picks, the tie rule, baselines, AUROC, ProcessBench."""

from __future__ import annotations

import json
import logging
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose_config

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


def test_weighted_vote_sums_scores_per_answer_by_hand():
    # "7": 0.9 (wrong); "1000" twice in two notations: 0.5 + 0.6 = 1.1 (right): the PRM pick (max
    # score) takes the wrong 0.9, the weighted vote the right "1000". min/max/last/mean/log_mean of a
    # one-step chain equal its score, prod too: every probability-valued aggregation agrees here.
    answers = ["7", "1000", "$1,000$", None]
    correct = [False, True, True, True]
    scores = [[[0.9], [0.5], [0.6], [0.99]]]
    result = best_of_n([problem(correct, answers)], scores)
    assert result.aggregations["mean"].accuracy == 1.0  # the unanswered 0.99 is picked, right
    assert set(result.weighted_vote) == set(PROBABILITY_VALUED)
    for name in PROBABILITY_VALUED:
        assert result.weighted_vote[name].accuracy == 1.0
        assert result.weighted_vote[name].ties == 0
    # Without the second "1000" voter the sums are 0.9 against 0.5: "7" wins, credit 0.
    lone = best_of_n([problem(correct[:2], answers[:2])], [scores[0][:2]])
    assert lone.weighted_vote["mean"].accuracy == 0.0


def test_weighted_vote_uses_the_aggregate_and_the_tie_rule():
    # Two-step chains: "3" [0.9, 0.1] (right), "4" [0.5, 0.5] (wrong), "3" [0.2, 0.2] (wrong).
    # min: 3 -> 0.1 + 0.2 = 0.3, 4 -> 0.5: "4" wins, 0.  max: 3 -> 0.9 + 0.2 = 1.1, 4 -> 0.5: "3"
    # wins, its voters' share of correct 1/2.  mean: 3 -> 0.5 + 0.2 = 0.7 > 0.5: 1/2.
    answers = ["3", "4", "3"]
    correct = [True, False, False]
    result = best_of_n([problem(correct, answers)], [[[0.9, 0.1], [0.5, 0.5], [0.2, 0.2]]])
    assert result.weighted_vote["min"].accuracy == 0.0
    assert result.weighted_vote["max"].accuracy == 0.5
    assert result.weighted_vote["mean"].accuracy == 0.5
    # Equal sums tie: "3" 0.25 + 0.25 against "4" 0.5; credit (1/2 + 0) / 2.
    tied = best_of_n([problem(correct, answers)], [[[0.25], [0.5], [0.25]]])
    assert tied.weighted_vote["mean"].accuracy == 0.25
    assert tied.weighted_vote["mean"].ties == 1
    # Nobody answers: all candidates tie, as in the majority vote.
    silent = best_of_n([problem([True, False, False, False])], [[[0.9], [0.1], [0.1], [0.1]]])
    assert silent.weighted_vote["mean"].accuracy == 0.25


def test_weighted_vote_is_in_the_table_and_the_curve(tmp_path):
    answers = ["1", "2", "1"]
    result = best_of_n([problem([True, False, True], answers)], [[[0.4], [0.7], [0.4]]])
    curve = accuracy_vs_n([problem([True, False, True], answers)], [[[0.4], [0.7], [0.4]]])
    assert curve.weighted_vote["mean"] == [1.0, 0.0, 1.0]  # "1" alone, then 0.4 < 0.7, then 0.8 > 0.7
    assert curve.weighted_vote["mean"][-1] == result.weighted_vote["mean"].accuracy
    markdown = write_best_of_n(result, tmp_path / "eval", curve)
    assert "| mean | weighted vote | 100.00 | 0 |" in markdown
    assert "weighted vote: the same over the answers" in markdown


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


# ---------------------------------------------------------------------------------------------------
# Which data a checkpoint is evaluated on (evaluate.py checkpoint=<run> [data=...])

ROOT = Path(__file__).resolve().parent.parent
# The run's data: demo_shift_hard, made tiny; max_length 300 differs from demo's 512 and from the default.
SHIFT_OVERRIDES = [
    "data=demo_shift_hard",
    "data.generator.train_per_domain=6",
    "data.generator.meta_size=8",
    "data.generator.test_problems=3",
    "data.generator.n_candidates=3",
    "data.limit=null",
    "data.max_length=300",
]


@pytest.fixture(scope="module")
def shifted_run(tmp_path_factory):
    """A tiny text-only PRM trained 2 steps on (a small) data=demo_shift_hard; its demo cache folder.
    Built once for the module (about 10 s)."""
    from prm.training import train

    folder = tmp_path_factory.mktemp("shifted")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PRM_CACHE_DIR", str(folder / "cache"))  # resolved into the run's config.yaml
        overrides = ["experiment=smoke", "backbone=tiny_qwen2", "train.steps=2", "logger=none"]
        train(compose_config(*overrides, *SHIFT_OVERRIDES), run_dir=folder / "run")
    return folder / "run"


def run_evaluate(overrides: list[str], out_dir: Path) -> dict:
    """evaluate() as evaluate.py calls it with these command-line overrides."""
    from prm.evaluation.run import evaluate

    return evaluate(compose_config(*overrides, name="evaluate"), out_dir=out_dir, overrides=overrides)


def test_checkpoint_is_evaluated_on_its_own_data_config(shifted_run, tmp_path, caplog):
    from omegaconf import OmegaConf

    overrides = [f"checkpoint={shifted_run}", "device=cpu", "logger=none"]
    with caplog.at_level(logging.INFO, logger="evaluate"):
        summary = run_evaluate(overrides, tmp_path / "eval")
    data = summary["preflight"]["data"]
    assert (data["name"], data["max_length"]) == ("demo_shift_hard", 300)
    # the run's own generated test file (under its cache folder), not the demo's
    assert Path(data["test"]).parent.parent == shifted_run.parent / "cache" / "demo"
    assert data["source"].startswith("data=demo_shift_hard: data from the checkpoint's config.yaml")
    assert "data from the checkpoint's config.yaml" in caplog.text
    best = json.loads((tmp_path / "eval" / "best_of_n.json").read_text())
    assert best["problems"] == 3  # the run's test_problems, not demo's 150
    saved = (tmp_path / "eval" / "data.yaml").read_text()
    assert saved.startswith("# data=demo_shift_hard: data from the checkpoint's config.yaml")
    assert OmegaConf.create(saved).max_length == 300


def test_data_on_the_command_line_wins_over_the_checkpoints(shifted_run, tmp_path, caplog):
    overrides = [
        f"checkpoint={shifted_run}",
        "device=cpu",
        "logger=none",
        "data=demo",
        "data.generator.train_per_domain=4",
        "data.generator.meta_size=4",
        "data.generator.test_problems=2",
        "data.generator.n_candidates=2",
        f"data.generator.root={tmp_path / 'demo'}",
    ]
    with caplog.at_level(logging.INFO, logger="evaluate"):
        summary = run_evaluate(overrides, tmp_path / "eval")
    data = summary["preflight"]["data"]
    assert (data["name"], data["max_length"]) == ("demo", 512)
    assert Path(data["test"]).parent.parent == tmp_path / "demo"
    assert data["source"] == "data=demo: data= given on the command line"
    assert "data= given on the command line" in caplog.text
    assert json.loads((tmp_path / "eval" / "best_of_n.json").read_text())["problems"] == 2


def test_data_key_overrides_apply_on_top_of_the_checkpoints_data(shifted_run, tmp_path):
    overrides = [f"checkpoint={shifted_run}", "device=cpu", "logger=none", "data.max_length=256"]
    summary = run_evaluate(overrides, tmp_path / "eval")
    data = json.loads((tmp_path / "eval" / "preflight.json").read_text())["data"]
    assert data == summary["preflight"]["data"]
    assert (data["name"], data["max_length"]) == ("demo_shift_hard", 256)
    assert data["source"].endswith("with data.max_length=256 from the command line")


def test_multirun_jobs_are_evaluated_on_their_own_data(shifted_run, tmp_path):
    """Two jobs of a (copied) sweep whose config.yaml differ in data.max_length: each keeps its own."""
    import shutil

    from omegaconf import OmegaConf

    from prm.checkpoint import checkpoint_step, latest_checkpoint, write_manifest

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("{}\n")
    for job, max_length in (("0", 300), ("1", 280)):
        shutil.copytree(shifted_run, sweep / job)
        (sweep / job / ".hydra").mkdir(exist_ok=True)
        (sweep / job / ".hydra" / "overrides.yaml").write_text(f"- job={job}\n")
        checkpoint = latest_checkpoint(sweep / job)
        saved = OmegaConf.load(checkpoint / "config.yaml")
        saved.data.max_length = max_length
        (checkpoint / "config.yaml").write_text(OmegaConf.to_yaml(saved))
        write_manifest(checkpoint, checkpoint_step(checkpoint))  # the edited file verifies again
    summary = run_evaluate([f"checkpoint={sweep}", "device=cpu", "logger=none"], tmp_path / "eval")
    assert {job: r["preflight"]["data"]["max_length"] for job, r in summary.items()} == {"0": 300, "1": 280}
    assert {r["preflight"]["data"]["name"] for r in summary.values()} == {"demo_shift_hard"}


@pytest.mark.slow
def test_evaluate_py_reads_data_overrides_from_the_hydra_command_line(shifted_run, tmp_path):
    """The real entry point: Hydra's task overrides decide (checkpoint's data + data.max_length=)."""
    from prm.checkpoint import latest_checkpoint

    out = tmp_path / "eval"
    command = [
        sys.executable,
        "evaluate.py",
        f"checkpoint={shifted_run}",
        "device=cpu",
        "logger=none",
        "data.max_length=288",
        f"hydra.run.dir={out}",
    ]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True, timeout=300)
    header = (out / "data.yaml").read_text().splitlines()[0]
    saved = latest_checkpoint(shifted_run) / "config.yaml"
    assert header == (
        f"# data=demo_shift_hard: data from the checkpoint's config.yaml ({saved}) "
        "with data.max_length=288 from the command line"
    )


@pytest.mark.slow
def test_evaluate_py_takes_a_split_limit_without_a_plus(shifted_run, tmp_path):
    """data.limit.test=N composes although data.limit is null in conf/evaluate.yaml's data (and in the
    run's): evaluate.py writes it ++data.limit.test=N before Hydra reads it."""
    out = tmp_path / "eval"
    command = [
        sys.executable,
        "evaluate.py",
        f"checkpoint={shifted_run}",
        "device=cpu",
        "logger=none",
        "data.limit.test=1",
        f"hydra.run.dir={out}",
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((out / "best_of_n.json").read_text())["problems"] == 1  # of the run's 3
    assert "data.limit.test=1 from the command line" in (out / "data.yaml").read_text().splitlines()[0]


# ---------------------------------------------------------------------------------------------------
# Packing with prefix sharing


def test_packing_with_prefix_sharing_packs_the_lone_chains_and_keeps_the_scores(monkeypatch, caplog):
    """Scores in float64: both paths compute the same sums in another order (~1e-16 apart); the
    float32 cast of the returned probabilities (in [0, 1]) then differs by at most one float32 ulp
    below 1, 2**-24."""
    import prm.evaluation.scoring as scoring
    from prm.data.dataset import flatten_candidates
    from prm.data.records import LabelledChain
    from prm.model.backbones import build_backbone
    from prm.model.prm import ProcessRewardModel

    backbone = build_backbone("qwen2", dtype="float64")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # larger weights: scores spread away from 0.5, so a mix-up shows
        for parameter in backbone.model.parameters():
            if parameter.dim() >= 2:
                parameter.copy_(
                    0.1 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
                )
    prm = ProcessRewardModel(backbone, "token")
    problems = [
        BestOfNProblem(
            id=f"p{p}",
            question=f"Problem {p}: how many?",
            candidates=[
                Candidate(
                    steps=[f"Step {s} of {c} gives {s * c}." for s in range(1 + (c + p) % 3)],
                    final_answer=str(c),
                    correct=c == 0,
                )
                for c in range(3)
            ],
        )
        for p in range(2)
    ]
    lone = [
        LabelledChain(id=f"lone{i}", question=f"Lone question {i}?", steps=["One."] * (i + 1), label=1)
        for i in range(3)
    ]
    chains = [*flatten_candidates(problems), *lone]
    fallback_packing = []
    unshared = scoring.score_whole_chains

    def spy(*args, **kwargs):
        fallback_packing.append(kwargs.get("packing"))
        return unshared(*args, **kwargs)

    monkeypatch.setattr(scoring, "score_whole_chains", spy)
    with caplog.at_level(logging.INFO, logger="prm.evaluation.scoring"):
        combined = scoring.score_chains(prm, chains, batch_size=4, prefix_sharing=True, packing=True)
    plain = unshared(prm, chains, batch_size=4)
    assert fallback_packing == [True]  # the 3 lone chains were scored whole, packed
    assert (
        "6 chains of 2 problems scored with a shared prefix, 3 without (no other chain with the same "
        "prefix: 3); data.packing: the 3 chains scored whole are packed, the 6 continuations of a shared "
        "prefix run padded" in caplog.text
    )
    assert [len(x) for x in combined] == [len(chain.steps) for chain in chains]
    for a, b in zip(combined, plain):
        assert torch.allclose(a.double(), b.double(), rtol=0, atol=2**-24)
    flat = torch.cat(plain)
    assert (flat[:, None] - flat[None, :]).abs().add(torch.eye(len(flat))).min() > 1e-4  # all distinct


def test_data_config_refuses_a_checkpoint_data_node_it_cannot_use(tmp_path):
    """No model is loaded: data_config reads only the checkpoint's config.yaml."""
    from prm.config import ConfigError
    from prm.evaluation.run import command_line_overrides, data_config

    checkpoint = tmp_path / "step-0000002"
    checkpoint.mkdir()
    overrides = [f"checkpoint={checkpoint}"]
    cfg = compose_config(*overrides, name="evaluate")
    (checkpoint / "config.yaml").write_text("data:\n  name: files\n  test: null\n  max_length: 64\n")
    with pytest.raises(ConfigError, match=r"data=files from .*config.yaml has no test split"):
        data_config(cfg, checkpoint, command_line_overrides(overrides))
    given = [*overrides, "data.test=/some/test.json"]  # the run's data, another test file
    job, reason = data_config(
        compose_config(*given, name="evaluate"), checkpoint, command_line_overrides(given)
    )
    assert (job.data.name, job.data.test, job.data.max_length) == ("files", "/some/test.json", 64)
    assert reason.endswith("with data.test=/some/test.json from the command line")
    (checkpoint / "config.yaml").write_text("data:\n  name: files\n  test: t.json\n  max_lenght: 64\n")
    with pytest.raises(ConfigError, match=r"config.yaml: its data node does not fit .*max_lenght"):
        data_config(cfg, checkpoint, command_line_overrides(overrides))
    (checkpoint / "config.yaml").write_text("data:\n  name: files\n  test: t.json\n  max_length: 0\n")
    with pytest.raises(ConfigError, match=r"the data node of .*config.yaml: data.max_length=0"):
        data_config(cfg, checkpoint, command_line_overrides(overrides))
