"""TRL's stepwise supervision format (Hugging Face TRL ``PRMTrainer`` data sets), text-only.

``trl``: ``prompt, completions: [str], labels: [bool]`` -> step chains, one completion per step.
The sets TRL published on the Hub (``trl-lib/math_shepherd``, ``trl-lib/prm800k``, Parquet under
``data/``) have exactly these columns (prompt a string, completions a list of strings, labels a list
of booleans); they are read from Parquet or a snapshot folder like any format
(:mod:`prm.data.formats.inputs`). TRL's dataset-format guide (``docs/source/dataset_formats.md``)
documents a standard form of this type only (its conversational cell is empty), so a list of
messages as ``prompt`` is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prm.data.errors import SkipReport
from prm.data.formats.registry import has_keys, register_format
from prm.data.formats.source import Row, Source
from prm.data.records import StepChain


@register_format("trl", signature=has_keys("prompt", "completions", "labels"), priority=30)
def read_trl(
    path: str | Path,
    data_root: str | Path | None = None,
    missing_image: str = "error",
    report: SkipReport | None = None,
    *,
    allow_outside_paths: bool = False,
    domain: str | None = None,
) -> list[StepChain]:
    """TRL stepwise supervision: ``prompt, completions: [str], labels: [bool]`` -> text-only chains.

    Only the standard (string) prompt is read; one completion is one step, labelled 1.0 / 0.0.
    ``data_root`` / ``missing_image`` / ``allow_outside_paths`` are accepted for a uniform signature
    and ignored (no images).
    """
    source = Source(path, data_root, missing_image, report, domain, allow_outside_paths=allow_outside_paths)

    def build(row: Row) -> StepChain:
        prompt = row.get("prompt", str)
        completions = row.get_list("completions", str)
        labels = row.get_list("labels", bool)
        if len(labels) != len(completions):
            raise row.error("labels", f"{len(labels)} labels for {len(completions)} completions")
        if not completions:
            raise row.error("completions", "no completions")
        steps = [completion.strip() for completion in completions]
        if "" in steps:
            raise row.error(f"completions[{steps.index('')}]", "empty completion")
        meta: dict[str, Any] = {}
        return StepChain(
            id=row.unique_id(meta),
            question=prompt,
            steps=steps,
            labels=[float(x) for x in labels],
            domain=source.domain,
            meta=meta,
        )

    return source.read(build)
