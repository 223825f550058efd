"""ProcessBench (Zheng et al., 2024): text-only chains with the index of their first wrong step.

``processbench``: ``id, generator, problem, steps, final_answer_correct, label`` -> labelled chains.
Published one file per source (``gsm8k.json``, ``math.json``, ...): the domain is the file's stem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prm.data.errors import SkipReport
from prm.data.formats.registry import has_keys, register_format
from prm.data.formats.source import Row, Source
from prm.data.records import LabelledChain
from prm.data.steps import extract_final_answer


@register_format("processbench", signature=has_keys("problem", "steps", "label"), priority=20)
def read_processbench(
    path: str | Path,
    data_root: str | Path | None = None,
    missing_image: str = "error",
    report: SkipReport | None = None,
    *,
    allow_outside_paths: bool = False,
    domain: str | None = None,
) -> list[LabelledChain]:
    """ProcessBench: ``id, generator, problem, steps, final_answer_correct, label`` -> labelled chains.

    ``label`` is the index of the first wrong step, ``-1`` when all are right: it becomes
    ``first_error``, and the chain label is 1 only when ``label == -1``. A chain can reach the right
    final answer through a wrong step (``final_answer_correct`` true, ``label`` >= 0): it is labelled
    0, since ProcessBench judges the process. ``generator`` and ``final_answer_correct`` are kept in
    ``meta``; the final answer is read from the last step. ``data_root`` / ``missing_image`` /
    ``allow_outside_paths`` are accepted for a uniform signature and ignored (no images).
    """
    source = Source(path, data_root, missing_image, report, domain, allow_outside_paths=allow_outside_paths)

    def build(row: Row) -> LabelledChain:
        if row.obj.get("id") is None:
            raise row.error("id", "missing required field")
        problem = row.get("problem", str)
        steps = row.get_list("steps", str)
        first_error = row.get("label", int)
        if not steps:
            raise row.error("steps", "no steps")
        if not -1 <= first_error < len(steps):
            raise row.error("label", f"first wrong step {first_error} outside [-1, {len(steps) - 1}]")
        meta: dict[str, Any] = {}
        for name, kind in (("generator", str), ("final_answer_correct", bool)):
            value = row.get(name, kind, required=False)
            if value is not None:
                meta[name] = value
        return LabelledChain(
            id=row.unique_id(meta),
            question=problem,
            steps=list(steps),
            label=int(first_error == -1),
            domain=source.domain,
            final_answer=extract_final_answer(steps[-1]),
            first_error=first_error,
            meta=meta,
        )

    return source.read(build)
