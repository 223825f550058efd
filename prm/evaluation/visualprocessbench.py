"""VisualProcessBench's step-level macro F1 (Wang et al. 2025, VisualPRM, arXiv 2503.10291).

Sources:

- The paper, Sec. 3.3 "Metrics": "we first compute the F1 scores separately for correct and
  incorrect steps and then take their average"; Sec. 4.2: steps labelled neutral are excluded from
  the F1; Table 3: "The overall score is the micro average of the score from different data
  sources", with one column per data source (MMMU, MathVision, MathVerse-VO, DynaMath, WeMath).
- The dataset card of OpenGVLab/VisualProcessBench: ``response.process_correctness`` holds 1, 0,
  -1 for correct, neutral, incorrect steps; ``data_source`` names the benchmark of the question.
- The InternVL team's VLMEvalKit dataset class ``VL_PRMBenchmark`` (found in the code index by
  content; its repository was not named there): per record it counts TP (label 1, predicted 1),
  TN (-1, -1), FP (-1, 1), FN (1, -1), so neutral steps match no case and are skipped; it sums the
  counts over all records and computes F1_correct = 2PR/(P+R) from TP/FP/FN and F1_wrong from
  TN/FN/FP.

So the score is the macro F1 of :mod:`prm.evaluation.step_f1` on steps pooled over the records
(overall: all records; per source: the records of that ``data_source``), neutral steps left out.
"Micro average" is read as this pooling of steps, which is what the counting code does; that the
per-source columns of Table 3 come from the same counting on each source's records is inferred, not
seen in code.

Not verified: the PRM threshold of the paper ("a step is considered correct if the probability of
outputting '+' exceeds that of outputting '-' by a certain threshold", value not given; here it is
chosen on a named split by :func:`choose_visualprocessbench_threshold`, and a step scored strictly
below it is predicted incorrect); the exact ``data_source`` strings of the published file (the
reference table below uses the paper's column names, matched case-insensitively, ``MathVerse-VO``
also as ``MathVerse``). Undefined F1 (a class absent from labels and predictions) is NaN here; the
reference code would divide by zero.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from prm.data.records import VisualProcessBenchRecord
from prm.evaluation.best_of_n import ScoreLike, as_step_scores
from prm.evaluation.step_f1 import PoolScore, StepConfusion, choose_macro_f1_threshold, step_confusion

VISUALPROCESSBENCH_REFERENCE_SOURCE = (
    "macro F1 (%) of correct and incorrect steps from VisualPRM (arXiv 2503.10291) Table 3, "
    "'Results on VisualProcessBench'"
)
VISUALPROCESSBENCH_REFERENCE_COLUMNS: tuple[str, ...] = (
    "MMMU",
    "MathVision",
    "MathVerse-VO",
    "DynaMath",
    "WeMath",
    "overall",
)
_REFERENCE_ROWS: dict[str, tuple[float, ...]] = {
    "Random Guessing": (50.0, 50.0, 50.0, 50.0, 50.0, 50.0),
    "GPT-4o-Mini": (53.6, 58.9, 57.1, 56.7, 58.5, 57.9),
    "GPT-4o": (56.3, 60.2, 59.7, 59.0, 63.3, 60.3),
    "Gemini-2.0-Flash": (58.5, 60.1, 62.8, 66.7, 58.7, 62.3),
    "MiniCPM-V2.6-8B": (44.9, 50.9, 58.9, 46.7, 57.4, 50.4),
    "LLaVA-OV-7B": (45.7, 43.0, 42.2, 44.7, 52.5, 44.4),
    "LLaVA-OV-72B": (46.1, 48.4, 53.0, 57.0, 57.3, 52.3),
    "Qwen2.5-VL-7B": (53.1, 51.8, 47.8, 51.3, 54.2, 51.0),
    "Qwen2.5-VL-72B": (59.2, 59.0, 59.7, 62.9, 62.3, 60.5),
    "InternVL2.5-8B": (47.1, 45.5, 47.8, 50.3, 50.8, 48.0),
    "InternVL2.5-26B": (48.8, 47.4, 49.2, 50.4, 51.4, 49.2),
    "InternVL2.5-38B": (51.5, 48.4, 50.9, 51.8, 52.5, 50.8),
    "InternVL2.5-78B": (52.0, 51.7, 53.7, 50.8, 52.5, 52.6),
    "VisualPRM-8B": (58.5, 62.1, 61.0, 62.7, 61.8, 62.0),
}
VISUALPROCESSBENCH_REFERENCE: dict[str, dict[str, float]] = {
    model: dict(zip(VISUALPROCESSBENCH_REFERENCE_COLUMNS, row, strict=True))
    for model, row in _REFERENCE_ROWS.items()
}
"""Published macro F1 (%) per model and column (a data source or ``overall``); source:
:data:`VISUALPROCESSBENCH_REFERENCE_SOURCE`."""


@dataclass
class VisualProcessBenchResult:
    """VisualProcessBench at one threshold: the pool of all records and one pool per ``data_source``
    (in order of first appearance); each pool's score is its macro F1 (NaN when it lacks correct or
    incorrect steps among labels and predictions)."""

    threshold: float
    overall: PoolScore
    sources: dict[str, PoolScore]

    @property
    def macro_f1(self) -> float:
        return self.overall.score

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "macro_f1": self.macro_f1,
            "overall": self.overall.to_dict(),
            "sources": {name: pool.to_dict() for name, pool in self.sources.items()},
        }


def _checked(
    step_scores: Sequence[ScoreLike], records: Sequence[VisualProcessBenchRecord]
) -> list[tuple[torch.Tensor, VisualProcessBenchRecord]]:
    if len(step_scores) != len(records):
        raise ValueError(f"{len(records)} VisualProcessBench records but {len(step_scores)} step score lists")
    chains = []
    for scores, record in zip(step_scores, records):
        scores = as_step_scores(scores, f"VisualProcessBench record {record.id!r}")
        if len(scores) != len(record.steps):
            raise ValueError(
                f"VisualProcessBench record {record.id!r}: {len(record.steps)} steps but "
                f"{len(scores)} step scores"
            )
        chains.append((scores, record))
    return chains


def visualprocessbench(
    step_scores: Sequence[ScoreLike], records: Sequence[VisualProcessBenchRecord], threshold: float
) -> VisualProcessBenchResult:
    """Macro F1 of step scores at ``threshold``, overall and per data source.

    ``step_scores[i]`` holds one score in [0, 1] per step of ``records[i]``. Raises ValueError
    naming the record for a score count that differs from its steps, or a score outside [0, 1].
    """
    counts: dict[str, StepConfusion] = {}
    chains: dict[str, int] = {}
    for scores, record in _checked(step_scores, records):
        source = record.data_source
        counts[source] = counts.get(source, StepConfusion()) + step_confusion(
            scores, record.step_correct, threshold
        )
        chains[source] = chains.get(source, 0) + 1
    sources = {name: PoolScore(chains[name], c, c.macro_f1) for name, c in counts.items()}
    pooled = sum(counts.values(), StepConfusion())
    return VisualProcessBenchResult(threshold, PoolScore(len(records), pooled, pooled.macro_f1), sources)


def choose_visualprocessbench_threshold(
    step_scores: Sequence[ScoreLike],
    records: Sequence[VisualProcessBenchRecord],
    candidates: Sequence[float] | None = None,
) -> float:
    """The threshold with the best overall macro F1 on this split; ties go to the smallest.

    Neutral steps do not count; ``candidates`` defaults to every distinct score of a counted step
    plus the next float above the largest (:func:`prm.evaluation.step_f1.choose_macro_f1_threshold`).
    Raises ValueError when the split lacks correct or incorrect steps.
    """
    scores: list[float] = []
    correct: list[bool] = []
    for chain_scores, record in _checked(step_scores, records):
        for score, label in zip(chain_scores.tolist(), record.step_correct):
            if label is not None:
                scores.append(score)
                correct.append(label)
    return choose_macro_f1_threshold(scores, correct, candidates)


def _source_key(name: str) -> str:
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    return key.removesuffix("vo") if key == "mathversevo" else key


def reference_figure(model: str, source: str) -> float | None:
    """The published macro F1 (%) of ``model`` on data source ``source`` (``overall`` for all), the
    source name matched loosely (case and punctuation ignored, ``MathVerse-VO`` = ``mathverse``);
    None when the paper has no such figure or model."""
    figures = {
        _source_key(column): value for column, value in VISUALPROCESSBENCH_REFERENCE.get(model, {}).items()
    }
    return figures.get(_source_key(source))


def _percent(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{100 * value:.2f}"


def visualprocessbench_markdown(
    result: VisualProcessBenchResult, references: Sequence[str] = (), split: str | None = None
) -> str:
    """A Markdown table: one row per data source and one for all records; macro F1 and both F1s
    (%), chains and counted steps, and one column per published model named in ``references`` (keys
    of :data:`VISUALPROCESSBENCH_REFERENCE`, in %, blank where the paper has no such source).
    ``split`` names the split the threshold was chosen on, for the note under the table."""
    unknown = [model for model in references if model not in VISUALPROCESSBENCH_REFERENCE]
    if unknown:
        raise ValueError(
            f"no published VisualProcessBench figures for {unknown}; "
            f"known: {sorted(VISUALPROCESSBENCH_REFERENCE)}"
        )
    header = "| data source | macro F1 (%) | F1 correct (%) | F1 incorrect (%) | chains |"
    header += " correct steps | incorrect steps |"
    rule = "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(references)
    header += "".join(f" {model} (published) |" for model in references)

    def published(name: str) -> str:
        cells = []
        for model in references:
            value = reference_figure(model, name)
            cells.append(f" {value:.1f} |" if value is not None else " |")
        return "".join(cells)

    def pool_row(label: str, key: str, pool: PoolScore) -> str:
        c = pool.confusion
        return (
            f"| {label} | {_percent(pool.score)} | {_percent(c.f1_correct)} | {_percent(c.f1_erroneous)} | "
            f"{pool.chains} | {c.correct_steps} | {c.erroneous_steps} |" + published(key)
        )

    lines = [header, rule]
    lines += [pool_row(name, name, pool) for name, pool in result.sources.items()]
    lines.append(pool_row("**overall**", "overall", result.overall))
    where = f" chosen on split {split!r}" if split else ""
    lines += [
        "",
        f"Threshold {result.threshold:.4g}{where}: a step scored below it is predicted incorrect. "
        "Macro F1 = mean of the F1 on correct and on incorrect steps, pooled over steps; neutral steps "
        "are not counted.",
    ]
    if references:
        lines.append(f"Published figures: {VISUALPROCESSBENCH_REFERENCE_SOURCE}.")
    return "\n".join(lines) + "\n"
