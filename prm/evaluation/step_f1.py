"""Step-level binary classification of a PRM's step scores: the confusion counts, the F1 on correct
steps, the F1 on erroneous steps, their mean (macro F1), and the threshold that maximises it.

PRMBench's "PRMScore" and VisualProcessBench's "macro F1" are both this macro F1 of step counts
pooled over a set of chains (:mod:`prm.evaluation.prmbench`, :mod:`prm.evaluation.visualprocessbench`
give the pooling and the sources).

Conventions, shared with ProcessBench here (:func:`prm.evaluation.processbench.predict_first_error`):
a step is *predicted erroneous* when its score is strictly below the threshold, *predicted correct*
otherwise. The positive class is "correct step":

- TP: correct step predicted correct, FN: correct step predicted erroneous,
- TN: erroneous step predicted erroneous, FP: erroneous step predicted correct.

F1 on correct steps = 2 TP / (2 TP + FP + FN); F1 on erroneous steps = 2 TN / (2 TN + FN + FP). This
is 2PR / (P + R) written without the ratios, so it is exact whenever precision and recall exist, 0
when the class has no hit but some miss or false alarm, and NaN only when the class is absent from
both labels and predictions (0 / 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


def f1_from_counts(hits: int, false_alarms: int, misses: int) -> float:
    """F1 = 2 hits / (2 hits + false alarms + misses); NaN when all three are 0."""
    denominator = 2 * hits + false_alarms + misses
    return math.nan if denominator == 0 else 2 * hits / denominator


@dataclass(frozen=True)
class StepConfusion:
    """Step counts of one pool of chains at one threshold (positive class: correct step)."""

    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0

    def __add__(self, other: StepConfusion) -> StepConfusion:
        return StepConfusion(self.tp + other.tp, self.fp + other.fp, self.tn + other.tn, self.fn + other.fn)

    @property
    def correct_steps(self) -> int:
        return self.tp + self.fn

    @property
    def erroneous_steps(self) -> int:
        return self.tn + self.fp

    @property
    def f1_correct(self) -> float:
        """F1 on correct steps (NaN when no step is correct or predicted correct)."""
        return f1_from_counts(self.tp, self.fp, self.fn)

    @property
    def f1_erroneous(self) -> float:
        """F1 on erroneous steps (NaN when no step is erroneous or predicted erroneous)."""
        return f1_from_counts(self.tn, self.fn, self.fp)

    @property
    def macro_f1(self) -> float:
        """Mean of the two F1s; NaN when either is NaN."""
        return 0.5 * self.f1_correct + 0.5 * self.f1_erroneous

    def to_dict(self) -> dict[str, Any]:
        return {
            "tp": self.tp,
            "fp": self.fp,
            "tn": self.tn,
            "fn": self.fn,
            "correct_steps": self.correct_steps,
            "erroneous_steps": self.erroneous_steps,
            "f1_correct": self.f1_correct,
            "f1_erroneous": self.f1_erroneous,
            "macro_f1": self.macro_f1,
        }


@dataclass(frozen=True)
class PoolScore:
    """A pool of chains (a benchmark, a subset, an error class) scored at one threshold: how many
    chains, their pooled step counts, and the benchmark's headline score of those counts."""

    chains: int
    confusion: StepConfusion
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"chains": self.chains, "score": self.score, **self.confusion.to_dict()}


def step_confusion(scores: torch.Tensor, correct: Sequence[bool | None], threshold: float) -> StepConfusion:
    """Confusion counts of one chain: ``scores`` [steps] in [0, 1], ``correct[i]`` True for a correct
    step, False for an erroneous one, None for a step left out of the counts (e.g. a neutral label)."""
    if len(scores) != len(correct):
        raise ValueError(f"{len(scores)} step scores but {len(correct)} step labels")
    tp = fp = tn = fn = 0
    for score, label in zip(scores.tolist(), correct):
        if label is None:
            continue
        predicted_correct = not score < threshold
        if label:
            tp, fn = (tp + 1, fn) if predicted_correct else (tp, fn + 1)
        else:
            fp, tn = (fp + 1, tn) if predicted_correct else (fp, tn + 1)
    return StepConfusion(tp, fp, tn, fn)


def choose_macro_f1_threshold(
    scores: Sequence[float] | np.ndarray,
    correct: Sequence[bool] | np.ndarray,
    candidates: Sequence[float] | None = None,
) -> float:
    """The threshold with the highest pooled macro F1 on these steps; ties go to the smallest.

    ``scores`` and ``correct`` are flat over all counted steps of the split (one entry per step).
    ``candidates`` defaults to every distinct score plus the next float above the largest: the
    predictions only change at score values, so this set reaches every achievable macro F1 (the
    extra candidate predicts every step erroneous). Raises ValueError when the split lacks correct
    or erroneous steps (the macro F1 is then undefined at every threshold).

    Counting is vectorised: for a threshold t, TP(t) = #correct steps with score >= t, found by a
    binary search in the sorted scores of correct steps (likewise FP(t) for erroneous steps).
    """
    values = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(correct, dtype=bool)
    if values.shape != labels.shape or values.ndim != 1:
        raise ValueError(f"{values.shape} step scores but {labels.shape} step labels")
    positives, negatives = np.sort(values[labels]), np.sort(values[~labels])
    if not len(positives) or not len(negatives):
        raise ValueError("choosing a threshold needs both correct and erroneous steps")
    if candidates is None:
        top = float(values.max())
        candidates = np.unique(values).tolist() + [math.nextafter(top, math.inf)]
    grid = np.sort(np.asarray(candidates, dtype=np.float64))
    tp = len(positives) - np.searchsorted(positives, grid, side="left")
    fp = len(negatives) - np.searchsorted(negatives, grid, side="left")
    fn, tn = len(positives) - tp, len(negatives) - fp
    # Both denominators are > 0: 2TP + FP + FN >= TP + FN = #correct steps > 0, likewise for TN.
    macro = 0.5 * (2 * tp / (2 * tp + fp + fn)) + 0.5 * (2 * tn / (2 * tn + fn + fp))
    return float(grid[int(np.argmax(macro))])  # argmax takes the first maximum: the smallest threshold
