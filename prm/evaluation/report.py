"""Evaluation results on disk: JSON for programs, a Markdown table for people.

Files are written to a temporary file in the target folder and moved into place with
``os.replace``, so a reader (or a crashed run) never sees a half-written report. Non-finite numbers
become JSON ``null``: strict JSON has no NaN.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prm.data.native import atomic_write_text
from prm.evaluation.best_of_n import AccuracyCurve, BestOfNResult, MethodResult
from prm.evaluation.processbench import ProcessBenchResult


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def write_json(path: str | Path, data: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(_finite(dict(data)), indent=2, allow_nan=False) + "\n")


def _percent(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{100 * value:.2f}"


def _row(name: str, kind: str, result: MethodResult, best: bool) -> str:
    label = f"**{name}** (best)" if best else name
    ties = "-" if result.ties is None else str(result.ties)
    return f"| {label} | {kind} | {_percent(result.accuracy)} | {ties} |"


def best_of_n_markdown(result: BestOfNResult) -> str:
    """One row per aggregation (the PRM's pick), per PRM-weighted vote (probability-valued
    aggregations) and per baseline: accuracy (%) and the number of problems with a tie."""
    lines = [
        f"Best-of-N on {result.problems} problems (up to {result.max_candidates} candidates each).",
        "",
        "| method | kind | accuracy (%) | ties |",
        "|---|---|---:|---:|",
    ]
    lines += [
        _row(name, "aggregation", method, name in result.best_aggregations)
        for name, method in result.aggregations.items()
    ]
    lines += [_row(name, "weighted vote", method, False) for name, method in result.weighted_vote.items()]
    lines += [_row(name, "baseline", method, False) for name, method in result.baselines.items()]
    lines += ["", f"Tie rule: {result.tie_rule}."]
    return "\n".join(lines) + "\n"


def processbench_markdown(results: Mapping[str, ProcessBenchResult]) -> str:
    """One row per ProcessBench subset (and their mean when there are several)."""
    lines = [
        "| subset | threshold | error acc. (%) | correct acc. (%) | F1 (%) | erroneous | correct |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for subset, r in results.items():
        lines.append(
            f"| {subset} | {r.threshold:.4g} | {_percent(r.error_accuracy)} | "
            f"{_percent(r.correct_accuracy)} | {_percent(r.f1)} | {r.erroneous} | {r.correct} |"
        )
    if len(results) > 1:
        mean = {
            field: sum(getattr(r, field) for r in results.values()) / len(results)
            for field in ("error_accuracy", "correct_accuracy", "f1")
        }
        lines.append(
            f"| mean | | {_percent(mean['error_accuracy'])} | "
            f"{_percent(mean['correct_accuracy'])} | {_percent(mean['f1'])} | | |"
        )
    return "\n".join(lines) + "\n"


def write_best_of_n(result: BestOfNResult, directory: str | Path, curve: AccuracyCurve | None = None) -> str:
    """Write ``best_of_n.json`` (with ``accuracy_vs_n`` if given) and ``best_of_n.md``; return the latter."""
    directory = Path(directory)
    data = result.to_dict()
    if curve is not None:
        data["accuracy_vs_n"] = curve.to_dict()
    write_json(directory / "best_of_n.json", data)
    markdown = best_of_n_markdown(result)
    atomic_write_text(directory / "best_of_n.md", markdown)
    return markdown


def write_processbench(results: Mapping[str, ProcessBenchResult], directory: str | Path) -> str:
    """Write ``processbench.json`` and ``processbench.md`` (subset -> result); return the Markdown."""
    directory = Path(directory)
    write_json(directory / "processbench.json", {subset: r.to_dict() for subset, r in results.items()})
    markdown = processbench_markdown(results)
    atomic_write_text(directory / "processbench.md", markdown)
    return markdown
