"""PRMBench's PRMScore (Song et al. 2025, arXiv 2501.03124): step-level macro F1 per error class.

Source: the reference toolkit ``mr_eval`` of github.com/ssmisya/PRMBench, read at commit cc7db59
(``mr_eval/tasks/prmtest_classified/task.py``: ``evaluate_function``, ``eval_on_hallucination_step``)
and 03a539b (``mr_visualize/eval_res_view/draw_tabs/form_latex_strs.ipynb``:
``get_prmscore_from_current_res_dict``, which makes the paper's table). What it computes:

1. Each step gets a binary prediction from the PRM's score at a threshold; positive = "correct
   step". The published ``error_steps`` are 1-based (the task subtracts 1); steps not listed are
   correct. Counts TP / FP / TN / FN as in :mod:`prm.evaluation.step_f1`.
2. Counts are **pooled over steps**: per class over the steps of every record of that class, and
   overall over the steps of every record of the nine error classes (records of the ``correct``
   class, the unmodified processes the task adds, get their own per-class counts but stay out of
   the overall pool).
3. F1 = F1 on correct steps, negative F1 = F1 on erroneous steps, and
   **PRMScore = 0.5 * F1 + 0.5 * negative F1** overall and per class, except for
   ``multi_solutions`` (no erroneous step by construction), whose PRMScore is F1 alone. The overall
   PRMScore is the pooled one, *not* the mean of the class scores.
4. The paper's Simplicity / Soundness / Sensitivity columns are the unweighted means of the class
   PRMScores of their classes (:data:`PRMBENCH_CATEGORIES`).

Deliberate differences, all in degenerate cases or conventions:

- Threshold: the reference predicts "correct" when score > threshold, with a threshold fixed per
  model; here a step is flagged erroneous when its score is strictly below the threshold (the
  ProcessBench convention of this suite), and the threshold is chosen on a named split by
  :func:`choose_prmbench_threshold` (best overall PRMScore, ties to the smallest threshold). Both
  split the same sorted scores, so every partition the reference can make is reachable here.
- Undefined F1: the reference returns -1 when precision + recall is 0 or a ratio is 0/0, and clips
  a negative PRMScore to 0. Here F1 = 2TP / (2TP + FP + FN): equal to the reference whenever both
  are defined; 0 (reference: -1) when TP = 0 with both FP and FN > 0; NaN (reference: -1) for a
  class absent from labels and predictions, e.g. an error class with no record, whose PRMScore is
  then NaN rather than 0.
- Step counts: the reference silently ignores steps beyond the model's labels and error steps
  beyond the process; here a score count that differs from the record's steps is an error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from prm.data.records import PRMBENCH_CLASSES, PRMBENCH_CORRECT, PRMBenchRecord
from prm.evaluation.best_of_n import ScoreLike, as_step_scores
from prm.evaluation.step_f1 import PoolScore, StepConfusion, choose_macro_f1_threshold, step_confusion

PRMBENCH_CLASS_NAMES: dict[str, tuple[str, str]] = {
    "redundency": ("NR", "Non-Redundancy"),
    "circular": ("NCL", "Non-Circular Logic"),
    "counterfactual": ("ES", "Empirical Soundness"),
    "step_contradiction": ("SC", "Step Consistency"),
    "domain_inconsistency": ("DC", "Domain Consistency"),
    "confidence": ("CI", "Confidence Invariance"),
    "missing_condition": ("PS", "Prerequisite Sensitivity"),
    "deception": ("DR", "Deception Resistance"),
    "multi_solutions": ("MS", "Multi-Solution Consistency"),
}
"""Published class name -> (the paper's abbreviation, its name)."""

PRMBENCH_CATEGORIES: dict[str, tuple[str, ...]] = {
    "simplicity": ("redundency", "circular"),
    "soundness": ("counterfactual", "step_contradiction", "domain_inconsistency", "confidence"),
    "sensitivity": ("missing_condition", "deception", "multi_solutions"),
}
"""The paper's three evaluation subjects and their classes (``classification_parallel_dict``)."""

F1_ONLY_CLASSES = frozenset({"multi_solutions"})
"""Classes scored by the F1 on correct steps alone (they have no erroneous step)."""

PRMBENCH_REFERENCE_SOURCE = (
    "PRMScore (%) published by the PRMBench authors: the 'Open-source Process Level Reward Models' "
    "block printed by mr_visualize/eval_res_view/draw_tabs/form_latex_strs.ipynb (cell 4 output) of "
    "github.com/ssmisya/PRMBench at commit 03a539b, the LaTeX of the paper's main results table "
    "(arXiv 2501.03124 v2+, table number not verified)"
)
PRMBENCH_REFERENCE_COLUMNS: tuple[str, ...] = (
    "overall",
    "redundency",
    "circular",
    "simplicity",
    "counterfactual",
    "step_contradiction",
    "domain_inconsistency",
    "confidence",
    "soundness",
    "missing_condition",
    "deception",
    "multi_solutions",
    "sensitivity",
)
_REFERENCE_ROWS: dict[str, tuple[float, ...]] = {
    "Skywork-PRM-1.5B": (61.1, 52.0, 56.4, 54.2, 64.8, 64.9, 63.3, 66.5, 64.9, 57.5, 63.3, 91.1, 70.7),
    "Skywork-PRM-7B": (65.1, 56.4, 62.8, 59.6, 69.4, 67.1, 67.7, 69.9, 68.5, 60.9, 65.8, 93.2, 73.3),
    "Llemma-PRM800k-7B": (52.0, 49.3, 53.4, 51.4, 56.4, 47.1, 46.7, 53.3, 50.9, 51.0, 53.5, 93.6, 66.0),
    "MathShepherd-Mistral-7B": (47.0, 44.0, 50.3, 47.1, 49.4, 44.5, 41.3, 47.7, 45.7, 47.2, 48.6, 86.1, 60.7),
    "ReasonEval-7B": (60.0, 61.0, 50.1, 55.5, 62.1, 65.9, 61.5, 66.0, 63.9, 55.6, 58.0, 99.5, 71.0),
    "ReasonEval-34B": (60.5, 54.8, 48.1, 51.5, 66.4, 60.3, 57.8, 67.5, 63.0, 57.7, 64.3, 97.2, 73.1),
    "RLHFlow-PRM-Mistral-8B": (54.4, 46.1, 47.3, 46.7, 56.6, 55.1, 54.4, 63.8, 57.5, 51.5, 56.2, 97.9, 68.5),
    "RLHFlow-PRM-Deepseek-8B": (54.2, 46.4, 48.9, 47.6, 55.7, 55.0, 53.2, 66.2, 57.5, 49.0, 55.4, 99.8, 68.1),
    "Qwen2.5-Math-PRM-7B": (65.5, 49.0, 55.1, 52.1, 71.8, 67.3, 66.3, 78.5, 71.0, 57.6, 69.1, 99.7, 75.5),
    "Qwen2.5-Math-PRM-72B": (68.2, 50.4, 58.8, 54.6, 73.7, 71.1, 72.2, 78.6, 73.9, 60.3, 71.2, 99.4, 77.0),
}
PRMBENCH_REFERENCE: dict[str, dict[str, float]] = {
    model: dict(zip(PRMBENCH_REFERENCE_COLUMNS, row, strict=True)) for model, row in _REFERENCE_ROWS.items()
}
"""Published PRMScore (%) per model and column (``overall``, a class, or a category); source:
:data:`PRMBENCH_REFERENCE_SOURCE`."""


def class_prm_score(classification: str | None, confusion: StepConfusion) -> float:
    """PRMScore of pooled step counts: 0.5 F1 + 0.5 negative F1, or F1 alone for
    :data:`F1_ONLY_CLASSES`; ``classification`` None means the overall pool."""
    return confusion.f1_correct if classification in F1_ONLY_CLASSES else confusion.macro_f1


@dataclass
class PRMBenchResult:
    """PRMBench at one threshold: the overall pool, one pool per class (all nine, in
    :data:`PRMBENCH_CLASSES` order, then ``correct`` when such records were given) and the category
    means. A class without records has 0 chains and NaN scores; a category mean is NaN when one of
    its classes is."""

    threshold: float
    overall: PoolScore
    classes: dict[str, PoolScore]
    categories: dict[str, float]

    @property
    def prm_score(self) -> float:
        return self.overall.score

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "prm_score": self.prm_score,
            "overall": self.overall.to_dict(),
            "classes": {name: pool.to_dict() for name, pool in self.classes.items()},
            "categories": dict(self.categories),
        }


def _checked(
    step_scores: Sequence[ScoreLike], records: Sequence[PRMBenchRecord]
) -> list[tuple[torch.Tensor, PRMBenchRecord]]:
    if len(step_scores) != len(records):
        raise ValueError(f"{len(records)} PRMBench records but {len(step_scores)} step score lists")
    chains = []
    for scores, record in zip(step_scores, records):
        scores = as_step_scores(scores, f"PRMBench record {record.id!r}")
        if len(scores) != len(record.steps):
            raise ValueError(
                f"PRMBench record {record.id!r}: {len(record.steps)} steps but {len(scores)} step scores"
            )
        chains.append((scores, record))
    return chains


def prmbench(
    step_scores: Sequence[ScoreLike], records: Sequence[PRMBenchRecord], threshold: float
) -> PRMBenchResult:
    """PRMScore of step scores at ``threshold``, overall, per class and per category.

    ``step_scores[i]`` holds one score in [0, 1] per step of ``records[i]``. Raises ValueError
    naming the record for a score count that differs from its steps, or a score outside [0, 1].
    """
    counts: dict[str, StepConfusion] = {name: StepConfusion() for name in PRMBENCH_CLASSES}
    chains: dict[str, int] = dict.fromkeys(PRMBENCH_CLASSES, 0)
    for scores, record in _checked(step_scores, records):
        name = record.classification
        counts[name] = counts.get(name, StepConfusion()) + step_confusion(
            scores, record.step_correct, threshold
        )
        chains[name] = chains.get(name, 0) + 1
    classes = {
        name: PoolScore(chains[name], counts[name], class_prm_score(name, counts[name])) for name in counts
    }
    pooled = sum((counts[name] for name in PRMBENCH_CLASSES), StepConfusion())
    overall = PoolScore(sum(chains[name] for name in PRMBENCH_CLASSES), pooled, pooled.macro_f1)
    categories = {
        category: sum(classes[name].score for name in members) / len(members)
        for category, members in PRMBENCH_CATEGORIES.items()
    }
    return PRMBenchResult(threshold, overall, classes, categories)


def choose_prmbench_threshold(
    step_scores: Sequence[ScoreLike],
    records: Sequence[PRMBenchRecord],
    candidates: Sequence[float] | None = None,
) -> float:
    """The threshold with the best overall PRMScore on this split; ties go to the smallest.

    Only the steps of the overall pool count (records of the nine error classes, not ``correct``);
    ``candidates`` defaults to every distinct step score of that pool plus the next float above the
    largest (:func:`prm.evaluation.step_f1.choose_macro_f1_threshold`). Raises ValueError when the
    pool lacks correct or erroneous steps.
    """
    scores: list[float] = []
    correct: list[bool] = []
    for chain_scores, record in _checked(step_scores, records):
        if record.classification != PRMBENCH_CORRECT:
            scores += chain_scores.tolist()
            correct += record.step_correct
    return choose_macro_f1_threshold(scores, correct, candidates)


def _percent(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{100 * value:.2f}"


def prmbench_markdown(
    result: PRMBenchResult, references: Sequence[str] = (), split: str | None = None
) -> str:
    """A Markdown table: one row for the overall pool, one per class (the paper's abbreviation),
    one per category; PRMScore, both F1s (%), chains and step counts, and one column per published
    model named in ``references`` (keys of :data:`PRMBENCH_REFERENCE`, figures in %). ``split``
    names the split the threshold was chosen on, for the note under the table."""
    unknown = [model for model in references if model not in PRMBENCH_REFERENCE]
    if unknown:
        raise ValueError(f"no published PRMBench figures for {unknown}; known: {sorted(PRMBENCH_REFERENCE)}")
    header = "| subset | PRMScore (%) | F1 correct (%) | F1 erroneous (%) | chains |"
    header += " correct steps | erroneous steps |"
    rule = "|---|---:|---:|---:|---:|---:|---:|"
    header += "".join(f" {model} (published) |" for model in references)
    rule += "---:|" * len(references)

    def published(column: str) -> str:
        values = [PRMBENCH_REFERENCE[model].get(column) for model in references]
        return "".join(" |" if value is None else f" {value:.1f} |" for value in values)

    def pool_row(label: str, column: str, pool: PoolScore) -> str:
        c = pool.confusion
        return (
            f"| {label} | {_percent(pool.score)} | {_percent(c.f1_correct)} | {_percent(c.f1_erroneous)} | "
            f"{pool.chains} | {c.correct_steps} | {c.erroneous_steps} |" + published(column)
        )

    lines = [header, rule, pool_row("**overall**", "overall", result.overall)]
    for name, pool in result.classes.items():
        if name == PRMBENCH_CORRECT:
            lines.append(pool_row("correct (the unmodified processes; not in the overall pool)", name, pool))
            continue
        abbreviation, title = PRMBENCH_CLASS_NAMES[name]
        lines.append(pool_row(f"{abbreviation} ({title})", name, pool))
    for category, value in result.categories.items():
        lines.append(f"| {category} (mean) | {_percent(value)} | | | | | |" + published(category))
    where = f" chosen on split {split!r}" if split else ""
    lines += [
        "",
        f"Threshold {result.threshold:.4g}{where}: a step scored below it is flagged erroneous. "
        "PRMScore = 0.5 F1 (correct steps) + 0.5 F1 (erroneous steps) on pooled steps; "
        "MS: F1 alone; categories: mean of their classes.",
    ]
    if references:
        lines.append(f"Published figures: {PRMBENCH_REFERENCE_SOURCE}.")
    return "\n".join(lines) + "\n"
