"""The ProcessBench metric: locate the first wrong step (docs/methods.md#aggregations).

A PRM predicts the first wrong step of a chain as the first step whose score is strictly below a
threshold, or -1 when no score is. Accuracy is measured separately on erroneous chains (prediction
== true first error) and on correct chains (prediction == -1), and summarised by their harmonic mean
(F1), so a PRM cannot score well by flagging everything or nothing. The threshold is tuned on one
split with :func:`choose_threshold` and reused unchanged on the others.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from prm.evaluation.best_of_n import ScoreLike, as_step_scores

PROCESSBENCH_REFERENCE_SOURCE = (
    "published ProcessBench F1 (%): Zheng et al., ProcessBench (arXiv 2412.06559 v4) Tables 3, 5 and 7, "
    "and for Qwen2.5-Math-PRM-7B / -72B Zhang et al., The Lessons of Developing Process Reward Models "
    "(arXiv 2501.07301 v2) Table 7. Classifier PRMs flag the steps they classify as wrong; Skywork PRMs "
    "use the threshold with the best F1 on GSM8K for every subset; 'mean' is the unweighted mean of the "
    "four subset F1s"
)
PROCESSBENCH_REFERENCE: dict[str, dict[str, float]] = {
    # model: {subset: F1 (%)}; the subsets' error / correct accuracies are in the same tables
    "Math-Shepherd-PRM-7B": {
        "gsm8k": 47.9,
        "math": 29.5,
        "olympiadbench": 24.8,
        "omnimath": 23.8,
        "mean": 31.5,
    },
    "RLHFlow-PRM-Mistral-8B": {
        "gsm8k": 50.4,
        "math": 33.4,
        "olympiadbench": 13.8,
        "omnimath": 15.8,
        "mean": 28.4,
    },
    "RLHFlow-PRM-Deepseek-8B": {
        "gsm8k": 38.8,
        "math": 33.8,
        "olympiadbench": 16.9,
        "omnimath": 16.9,
        "mean": 26.6,
    },
    "Skywork-PRM-1.5B": {"gsm8k": 59.0, "math": 48.0, "olympiadbench": 19.3, "omnimath": 19.2, "mean": 36.4},
    "Skywork-PRM-7B": {"gsm8k": 70.8, "math": 53.6, "olympiadbench": 22.9, "omnimath": 21.0, "mean": 42.1},
    "Qwen2.5-Math-7B-PRM800K": {
        "gsm8k": 68.2,
        "math": 62.6,
        "olympiadbench": 50.7,
        "omnimath": 44.3,
        "mean": 56.5,
    },
    "Qwen2.5-Math-PRM-7B": {
        "gsm8k": 82.4,
        "math": 77.6,
        "olympiadbench": 67.5,
        "omnimath": 66.3,
        "mean": 73.5,
    },
    "Qwen2.5-Math-PRM-72B": {
        "gsm8k": 87.3,
        "math": 80.6,
        "olympiadbench": 74.3,
        "omnimath": 71.1,
        "mean": 78.3,
    },
}
"""Published ProcessBench F1 (%) per model and subset (``mean``: of the four subsets); source:
:data:`PROCESSBENCH_REFERENCE_SOURCE`."""


@dataclass
class ProcessBenchResult:
    """ProcessBench accuracies at one threshold; an accuracy is NaN when its class is absent."""

    threshold: float
    error_accuracy: float
    correct_accuracy: float
    f1: float
    erroneous: int
    correct: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def predict_first_error(step_scores: ScoreLike, threshold: float) -> int:
    """Index of the first step scored below ``threshold``, -1 when there is none."""
    below = torch.nonzero(as_step_scores(step_scores, "chain") < threshold)
    return int(below[0]) if len(below) else -1


def harmonic_mean(a: float, b: float) -> float:
    """F1 of two accuracies; 0 when both are 0, NaN when either is NaN."""
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def _checked(
    step_scores: Sequence[ScoreLike], first_errors: Sequence[int | None]
) -> list[tuple[torch.Tensor, int]]:
    if len(step_scores) != len(first_errors):
        raise ValueError(f"{len(step_scores)} chains but {len(first_errors)} first errors")
    chains = []
    for index, (scores, error) in enumerate(zip(step_scores, first_errors)):
        scores = as_step_scores(scores, f"chain {index}")
        if error is None or not -1 <= error < len(scores):
            raise ValueError(f"chain {index}: first error {error!r} outside [-1, {len(scores) - 1}]")
        chains.append((scores, int(error)))
    return chains


def processbench(
    step_scores: Sequence[ScoreLike], first_errors: Sequence[int | None], threshold: float
) -> ProcessBenchResult:
    """ProcessBench accuracies and F1 of step scores at ``threshold``.

    ``first_errors[i]`` is the index of chain i's first wrong step, -1 for a correct chain.
    """
    chains = _checked(step_scores, first_errors)
    hits = {True: [], False: []}  # erroneous? -> prediction right?
    for scores, error in chains:
        hits[error >= 0].append(predict_first_error(scores, threshold) == error)
    error_accuracy = float(np.mean(hits[True])) if hits[True] else math.nan
    correct_accuracy = float(np.mean(hits[False])) if hits[False] else math.nan
    return ProcessBenchResult(
        threshold,
        error_accuracy,
        correct_accuracy,
        harmonic_mean(error_accuracy, correct_accuracy),
        erroneous=len(hits[True]),
        correct=len(hits[False]),
    )


def choose_threshold(
    step_scores: Sequence[ScoreLike],
    first_errors: Sequence[int | None],
    candidates: Sequence[float] | None = None,
) -> float:
    """The threshold with the highest F1 on this split; ties go to the smallest threshold.

    ``candidates`` defaults to every distinct step score plus the next float above the largest:
    predictions only change at score values, so this set reaches every achievable F1 exactly.

    A chain is right exactly for thresholds in an interval ``(lo, hi]``: for an erroneous chain
    with first error e, ``lo`` = score of step e and ``hi`` = lowest score before it (+inf if e = 0);
    for a correct chain, ``(-inf, lowest score]``. Counting the intervals that hold each candidate
    with binary search scores all candidates at once, in O((chains + candidates) log chains).
    """
    chains = _checked(step_scores, first_errors)
    intervals: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for scores, error in chains:
        if error >= 0:
            before = scores[:error].min().item() if error > 0 else math.inf
            intervals[True].append((scores[error].item(), before))
        else:
            intervals[False].append((-math.inf, scores.min().item() if len(scores) else math.inf))
    if not intervals[True] or not intervals[False]:
        raise ValueError("choosing a threshold needs both erroneous and correct chains")
    if candidates is None:
        values = torch.cat([scores for scores, _ in chains])
        if not len(values):
            raise ValueError("no step scores to choose a threshold from")
        top = values.max().item()
        candidates = torch.unique(values).tolist() + [math.nextafter(top, math.inf)]
    grid = np.sort(np.asarray(candidates, dtype=np.float64))
    accuracy = {kind: _share_containing(pairs, grid) for kind, pairs in intervals.items()}
    a, b = accuracy[True], accuracy[False]
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(a + b > 0, 2 * a * b / (a + b), 0.0)
    return float(grid[int(np.argmax(f1))])  # argmax takes the first maximum: the smallest threshold


def _share_containing(pairs: list[tuple[float, float]], grid: np.ndarray) -> np.ndarray:
    """For each grid value t, the share of intervals (lo, hi] that contain t."""
    lo, hi = np.asarray(pairs, dtype=np.float64).T
    keep = lo < hi  # an empty interval holds nothing
    lo, hi = np.sort(lo[keep]), np.sort(hi[keep])
    inside = np.searchsorted(lo, grid, side="left") - np.searchsorted(hi, grid, side="left")
    return inside / len(pairs)
