"""PRMBench's PRMScore and VisualProcessBench's macro F1 against hand computation.

Convention (prm.evaluation.step_f1): a step scored strictly below the threshold is predicted
erroneous; positive class = correct step; F1 = 2TP / (2TP + FP + FN), negative F1 = 2TN / (2TN + FN + FP).
"""

from __future__ import annotations

import json
import math
import random
from fractions import Fraction as F

import pytest

from prm.data.records import PRMBENCH_CLASSES, PRMBenchRecord, VisualProcessBenchRecord
from prm.evaluation.prmbench import (
    PRMBENCH_CATEGORIES,
    PRMBENCH_REFERENCE,
    choose_prmbench_threshold,
    prmbench,
    prmbench_markdown,
)
from prm.evaluation.report import write_json
from prm.evaluation.step_f1 import StepConfusion, choose_macro_f1_threshold, f1_from_counts, step_confusion
from prm.evaluation.visualprocessbench import (
    VISUALPROCESSBENCH_REFERENCE,
    choose_visualprocessbench_threshold,
    visualprocessbench,
    visualprocessbench_markdown,
)

EXACT = {"rel": 1e-12, "abs": 0}


def pb(rid: str, classification: str, errors: list[int], n: int) -> PRMBenchRecord:
    return PRMBenchRecord(rid, "q", [f"s{i}" for i in range(n)], errors, classification)


def vpb(rid: str, source: str, labels: list[int]) -> VisualProcessBenchRecord:
    return VisualProcessBenchRecord(rid, "q", [f"s{i}" for i in range(len(labels))], labels, source)


# --- shared step counting -----------------------------------------------------------------------


def test_f1_from_counts():
    assert f1_from_counts(2, 1, 1) == pytest.approx(float(F(4, 6)), **EXACT)  # 2*2 / (4 + 1 + 1)
    assert f1_from_counts(0, 3, 2) == 0.0  # no hit: 0 (the PRMBench code would give -1 here)
    assert math.isnan(f1_from_counts(0, 0, 0))  # class absent from labels and predictions


def test_step_confusion_threshold_is_inclusive_for_correct_and_skips_unlabelled():
    # 0.9 correct -> TP; 0.4 correct -> FN; 0.5 erroneous, not below 0.5 -> predicted correct: FP;
    # the None step is not counted.
    c = step_confusion(_t([0.9, 0.4, 0.5, 0.2]), [True, True, False, None], 0.5)
    assert c == StepConfusion(tp=1, fp=1, tn=0, fn=1)
    with pytest.raises(ValueError, match="3 step scores but 2 step labels"):
        step_confusion(_t([0.1, 0.2, 0.3]), [True, False], 0.5)


def _t(values):
    import torch

    return torch.tensor(values, dtype=torch.float64)


# --- PRMBench ------------------------------------------------------------------------------------


def prmbench_case() -> tuple[list[list[float]], list[PRMBenchRecord]]:
    """Six records at threshold 0.5 (error steps 0-based):

    r1 confidence, errors [2], scores .9 .8 .3 .6  -> TP TP TN TP          : TP3 TN1
    r2 confidence, errors [1,2], scores .4 .7 .2   -> FN FP TN             : FN1 FP1 TN1
       CI pool TP3 FP1 TN2 FN1: F1 = 6/8 = 3/4, negF1 = 4/6 = 2/3, PRMScore = 3/8 + 1/3 = 17/24
    r3 multi_solutions, no error, scores .9 .45 .8 -> TP FN TP             : F1 = 4/5 = PRMScore (F1 only)
    r4 redundency, errors [1], scores .6 .55       -> TP FP                : F1 = 2/3, negF1 = 0, PRMScore 1/3
    r5 circular, errors [0], scores .1 .9          -> TN TP                : F1 = negF1 = 1, PRMScore 1
    r6 correct (unmodified process), scores .3 .9  -> FN TP                : 2/3 and 0 -> 1/3, not in overall
    overall (r1-r5) TP7 FP2 TN3 FN2: F1 = 14/18 = 7/9, negF1 = 6/10 = 3/5, PRMScore = 7/18 + 3/10 = 31/45
    (the mean of the class scores would be (17/24 + 4/5 + 1/3 + 1) / 4, a different number)
    simplicity = (NR 1/3 + NCL 1) / 2 = 2/3; soundness and sensitivity have absent classes: NaN.
    """
    records = [
        pb("r1", "confidence", [2], 4),
        pb("r2", "confidence", [1, 2], 3),
        pb("r3", "multi_solutions", [], 3),
        pb("r4", "redundency", [1], 2),
        pb("r5", "circular", [0], 2),
        pb("r6", "correct", [], 2),
    ]
    scores = [[0.9, 0.8, 0.3, 0.6], [0.4, 0.7, 0.2], [0.9, 0.45, 0.8], [0.6, 0.55], [0.1, 0.9], [0.3, 0.9]]
    return scores, records


def test_prmbench_pooled_overall_and_per_class_scores():
    scores, records = prmbench_case()
    result = prmbench(scores, records, threshold=0.5)
    assert result.overall.confusion == StepConfusion(tp=7, fp=2, tn=3, fn=2)
    assert result.overall.chains == 5  # the `correct` record stays out
    assert result.prm_score == pytest.approx(float(F(31, 45)), **EXACT)
    assert result.prm_score != pytest.approx(float((F(17, 24) + F(4, 5) + F(1, 3) + 1) / 4))
    ci = result.classes["confidence"]
    assert (ci.chains, ci.confusion) == (2, StepConfusion(tp=3, fp=1, tn=2, fn=1))
    assert ci.confusion.f1_correct == pytest.approx(0.75, **EXACT)
    assert ci.confusion.f1_erroneous == pytest.approx(float(F(2, 3)), **EXACT)
    assert ci.score == pytest.approx(float(F(17, 24)), **EXACT)
    ms = result.classes["multi_solutions"]
    assert ms.confusion.f1_erroneous == 0.0 and ms.score == pytest.approx(0.8, **EXACT)  # F1 alone
    assert result.classes["redundency"].score == pytest.approx(float(F(1, 3)), **EXACT)
    assert result.classes["circular"].score == 1.0
    assert result.classes["correct"].score == pytest.approx(float(F(1, 3)), **EXACT)
    assert result.categories["simplicity"] == pytest.approx(float(F(2, 3)), **EXACT)


def test_prmbench_absent_class_is_nan_and_listed():
    scores, records = prmbench_case()
    result = prmbench(scores, records, threshold=0.5)
    assert list(result.classes) == [*PRMBENCH_CLASSES, "correct"]
    for name in (
        "counterfactual",
        "step_contradiction",
        "domain_inconsistency",
        "missing_condition",
        "deception",
    ):
        assert result.classes[name].chains == 0 and math.isnan(result.classes[name].score)
    assert math.isnan(result.categories["soundness"]) and math.isnan(result.categories["sensitivity"])
    assert set(result.categories) == set(PRMBENCH_CATEGORIES)
    without_correct = prmbench(scores[:5], records[:5], 0.5)
    assert "correct" not in without_correct.classes
    assert without_correct.prm_score == result.prm_score  # `correct` records never reach the overall pool


def test_prmbench_to_dict_is_strict_json(tmp_path):
    scores, records = prmbench_case()
    data = prmbench(scores, records, 0.5).to_dict()
    assert data["classes"]["confidence"]["tp"] == 3 and data["overall"]["chains"] == 5
    write_json(tmp_path / "r.json", data)  # NaN -> null
    loaded = json.loads((tmp_path / "r.json").read_text())
    assert loaded["classes"]["deception"]["score"] is None


def test_choose_prmbench_threshold_tie_goes_to_smallest_and_ignores_correct_records():
    # Pool: correct steps .8 (r1), .6 (r2); erroneous .3 (r1), .6 (r2). Candidates .3 .6 .8 next(.8):
    #   t=.3: TP2 FP2 TN0 FN0 -> (2/3 + 0) / 2 = 1/3
    #   t=.6: TP2 FP1 TN1 FN0 -> (4/5 + 2/3) / 2 = 11/15
    #   t=.8: TP1 FP0 TN2 FN1 -> (2/3 + 4/5) / 2 = 11/15   (tie -> the smaller, .6)
    #   t>.8: TP0 FP0 TN2 FN2 -> (0 + 2/3) / 2 = 1/3
    # The `correct` record (.7 .7) would make .7 a candidate with (6/7 + 4/5) / 2 > 11/15 if counted.
    records = [pb("r1", "confidence", [1], 2), pb("r2", "deception", [1], 2), pb("r3", "correct", [], 2)]
    scores = [[0.8, 0.3], [0.6, 0.6], [0.7, 0.7]]
    assert choose_prmbench_threshold(scores, records) == 0.6
    assert choose_prmbench_threshold(scores[:2], records[:2], candidates=[0.8, 0.3]) == 0.8
    included = [pb("r3", "confidence", [], 2)]  # the same steps as an error-class record: now counted
    assert choose_prmbench_threshold(scores, records[:2] + included) == 0.7


def test_chosen_threshold_is_the_best_prmscore_by_brute_force():
    rng = random.Random(0)
    records, scores = [], []
    for i in range(30):
        n = rng.randint(1, 6)
        errors = sorted(rng.sample(range(n), rng.randint(0, n)))
        records.append(pb(f"r{i}", rng.choice(PRMBENCH_CLASSES), errors, n))
        scores.append([round(rng.random(), 2) for _ in range(n)])  # rounded: many tied scores
    chosen = choose_prmbench_threshold(scores, records)
    grid = sorted({s for chain in scores for s in chain} | {math.nextafter(max(max(c) for c in scores), 2)})
    best = max(prmbench(scores, records, t).prm_score for t in grid)
    assert prmbench(scores, records, chosen).prm_score == best
    assert chosen == min(t for t in grid if prmbench(scores, records, t).prm_score == best)


def test_choose_threshold_needs_both_kinds_of_step():
    with pytest.raises(ValueError, match="both correct and erroneous"):
        choose_prmbench_threshold([[0.5, 0.6]], [pb("r", "multi_solutions", [], 2)])
    with pytest.raises(ValueError, match="both correct and erroneous"):
        choose_macro_f1_threshold([0.1], [False])


def test_prmbench_bad_input_names_the_record():
    with pytest.raises(ValueError, match="2 PRMBench records but 1 step score lists"):
        prmbench([[0.5]], [pb("a", "confidence", [], 1), pb("b", "confidence", [], 1)], 0.5)
    with pytest.raises(ValueError, match="record 'b': 3 steps but 2 step scores"):
        prmbench([[0.5, 0.5]], [pb("b", "confidence", [0], 3)], 0.5)
    with pytest.raises(ValueError, match=r"record 'c'.*\[0, 1\]"):
        prmbench([[1.5]], [pb("c", "confidence", [], 1)], 0.5)
    with pytest.raises(ValueError, match="record 'd': classification 'typo' is not one of"):
        pb("d", "typo", [], 1)
    with pytest.raises(ValueError, match="record 'e': error step 3 is not a 0-based index of its 3 steps"):
        pb("e", "circular", [3], 3)  # a 1-based index left unconverted
    with pytest.raises(ValueError, match="record 'f': error step True"):
        pb("f", "circular", [True], 3)


def test_prmbench_markdown_rows_and_published_column():
    scores, records = prmbench_case()
    text = prmbench_markdown(prmbench(scores, records, 0.5), references=["Qwen2.5-Math-PRM-7B"], split="dev")
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert rows["**overall**"].endswith(f"| {100 * 31 / 45:.2f} | 77.78 | 60.00 | 5 | 9 | 5 | 65.5 |")
    assert rows["MS (Multi-Solution Consistency)"].startswith(
        "| MS (Multi-Solution Consistency) | 80.00 | 80.00 | 0.00 |"
    )
    assert rows["ES (Empirical Soundness)"].startswith("| ES (Empirical Soundness) | n/a |")
    assert rows["simplicity (mean)"].endswith("| 66.67 | | | | | | 52.1 |")
    assert "Threshold 0.5 chosen on split 'dev'" in text
    with pytest.raises(ValueError, match="no published PRMBench figures"):
        prmbench_markdown(prmbench(scores, records, 0.5), references=["nobody"])


def test_prmbench_reference_categories_are_the_means_of_their_classes():
    for model, figures in PRMBENCH_REFERENCE.items():
        for category, members in PRMBENCH_CATEGORIES.items():
            mean = sum(figures[name] for name in members) / len(members)
            assert abs(figures[category] - mean) <= 0.1 + 1e-9, (model, category)


# --- VisualProcessBench --------------------------------------------------------------------------


def vpb_case() -> tuple[list[list[float]], list[VisualProcessBenchRecord]]:
    """Three records at threshold 0.5 (labels 1 correct, 0 neutral, -1 incorrect):

    r1 MathVision, labels 1 -1 0 1, scores .9 .2 .1 .4 -> TP TN (skip) FN
    r2 WeMath,     labels 1 -1 -1, scores .7 .8 .3     -> TP FP TN
    r3 MathVision, labels 0 -1,    scores .95 .6       -> (skip) FP
    MathVision TP1 FP1 TN1 FN1: F1 = 2/4, negF1 = 2/4, macro 1/2
    WeMath     TP1 FP1 TN1 FN0: F1 = 2/3, negF1 = 2/3, macro 2/3
    overall    TP2 FP2 TN2 FN1: F1 = 4/7, negF1 = 4/7, macro 4/7 (the mean of sources would be 7/12)
    """
    records = [
        vpb("r1", "MathVision", [1, -1, 0, 1]),
        vpb("r2", "WeMath", [1, -1, -1]),
        vpb("r3", "MathVision", [0, -1]),
    ]
    return [[0.9, 0.2, 0.1, 0.4], [0.7, 0.8, 0.3], [0.95, 0.6]], records


def test_visualprocessbench_pooled_macro_f1_per_source_and_overall():
    scores, records = vpb_case()
    result = visualprocessbench(scores, records, 0.5)
    assert list(result.sources) == ["MathVision", "WeMath"]
    assert result.sources["MathVision"].confusion == StepConfusion(tp=1, fp=1, tn=1, fn=1)
    assert result.sources["MathVision"].chains == 2
    assert result.sources["MathVision"].score == 0.5
    assert result.sources["WeMath"].score == pytest.approx(float(F(2, 3)), **EXACT)
    assert result.overall.confusion == StepConfusion(tp=2, fp=2, tn=2, fn=1)
    assert result.macro_f1 == pytest.approx(float(F(4, 7)), **EXACT)
    assert result.to_dict()["sources"]["WeMath"]["tn"] == 1


def test_visualprocessbench_threshold_choice_skips_neutral_steps_and_ties_to_smallest():
    # Counted steps: correct .9 (r1) and .5 (r2); incorrect .5 (r1) and .2 (r2); neutral .3 and .35.
    #   t=.2: TP2 FP2 -> (2/3 + 0)/2 = 1/3;  t=.5: TP2 FP1 TN1 -> (4/5 + 2/3)/2 = 11/15
    #   t=.9: TP1 FN1 TN2 -> (2/3 + 4/5)/2 = 11/15 (tie: .5 wins);  t>.9: 1/3
    records = [vpb("r1", "MMMU", [1, -1, 0]), vpb("r2", "MMMU", [1, -1, 0])]
    scores = [[0.9, 0.5, 0.3], [0.5, 0.2, 0.35]]
    assert choose_visualprocessbench_threshold(scores, records) == 0.5
    # Neutral scores are no candidates: correct .9, incorrect .2, neutral .5. Candidates .2 .9 next(.9):
    # t=.2 -> TP1 FP1: (2/3 + 0)/2 = 1/3; t=.9 -> TP1 TN1: 1. A candidate .5 would tie with .9 and win.
    assert choose_visualprocessbench_threshold([[0.9, 0.5, 0.2]], [vpb("r", "MMMU", [1, 0, -1])]) == 0.9
    # Nor counted in the score: at t=.9, TP1 TN1 -> macro 1; the neutral .5 counted as a correct step
    # would add FN1 (F1 2/3, negative F1 2/3), counted as an incorrect one TN1 (macro 1 as well).
    assert visualprocessbench([[0.9, 0.5, 0.2]], [vpb("r", "MMMU", [1, 0, -1])], 0.9).macro_f1 == 1.0
    with pytest.raises(ValueError, match="both correct and erroneous"):
        choose_visualprocessbench_threshold([[0.4, 0.6]], [vpb("r", "MMMU", [1, 0])])


def test_visualprocessbench_absent_class_gives_nan():
    # Only correct steps, all predicted correct: TN = FN = FP = 0 -> negative F1 0/0 -> NaN macro.
    result = visualprocessbench([[0.9, 0.8]], [vpb("r", "DynaMath", [1, 1])], 0.5)
    assert result.overall.confusion.f1_correct == 1.0
    assert math.isnan(result.macro_f1) and math.isnan(result.sources["DynaMath"].score)


def test_visualprocessbench_bad_input_names_the_record():
    with pytest.raises(
        ValueError, match="record 'x': process_correctness 2 of step 1 is not one of 1, 0, -1"
    ):
        vpb("x", "MMMU", [1, 2])
    with pytest.raises(ValueError, match="record 'y': process_correctness True"):
        vpb("y", "MMMU", [True])
    with pytest.raises(ValueError, match="record 'z': 2 steps but 1 process_correctness labels"):
        VisualProcessBenchRecord("z", "q", ["a", "b"], [1], "MMMU")
    with pytest.raises(ValueError, match="record 'w': 2 steps but 3 step scores"):
        visualprocessbench([[0.1, 0.2, 0.3]], [vpb("w", "MMMU", [1, -1])], 0.5)
    with pytest.raises(ValueError, match="1 VisualProcessBench records but 2 step score lists"):
        visualprocessbench([[0.1], [0.2]], [vpb("v", "MMMU", [1])], 0.5)


def test_visualprocessbench_markdown_matches_published_sources():
    scores, records = vpb_case()
    text = visualprocessbench_markdown(visualprocessbench(scores, records, 0.5), references=["VisualPRM-8B"])
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert rows["MathVision"] == "| MathVision | 50.00 | 50.00 | 50.00 | 2 | 2 | 2 | 62.1 |"
    assert rows["WeMath"].endswith("| 61.8 |")
    assert rows["**overall**"] == f"| **overall** | {100 * 4 / 7:.2f} | 57.14 | 57.14 | 3 | 3 | 4 | 62.0 |"
    mathverse = visualprocessbench([[0.9, 0.1]], [vpb("m", "mathverse", [1, -1])], 0.5)
    assert visualprocessbench_markdown(mathverse, ["GPT-4o"]).splitlines()[2].endswith("| 59.7 |")
    other = visualprocessbench([[0.9, 0.1]], [vpb("m", "ScienceQA", [1, -1])], 0.5)
    assert visualprocessbench_markdown(other, ["GPT-4o"]).splitlines()[2].endswith("| 1 | 1 | 1 | |")
    assert VISUALPROCESSBENCH_REFERENCE["VisualPRM-8B"]["overall"] == 62.0
