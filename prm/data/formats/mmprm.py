"""MM-PRM (Du et al., 2025): the ``<prm>``-marked training file (read and written) and the seed file.

``mmprm``: ``question, answer, image_path, process, labels``, where ``process`` is the step chunks
each ended by :data:`PRM_MARKER` and ``labels`` one soft Monte Carlo value per chunk;
``mmprm_seeds``: ``id, question, correct_answer, image_path``, the problems OmegaPRM search starts
from (:mod:`prm.generate`). :func:`write_mmprm` writes the training file that :func:`read_mmprm` reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prm.data.errors import SkipReport
from prm.data.formats.registry import has_keys, register_format
from prm.data.formats.source import Row, Source
from prm.data.native import atomic_write_text
from prm.data.records import StepChain

PRM_MARKER = "<prm>"  # ends each step chunk of ``process``


@dataclass
class SeedProblem:
    """An MM-PRM seed problem: the input of OmegaPRM data generation (no solution yet)."""

    id: str
    question: str
    correct_answer: str
    images: list[str] = field(default_factory=list)


@register_format("mmprm", signature=has_keys("process", "labels"), priority=50)
def read_mmprm(
    path: str | Path,
    data_root: str | Path | None = None,
    missing_image: str = "error",
    report: SkipReport | None = None,
    *,
    allow_outside_paths: bool = False,
    domain: str | None = None,
) -> list[StepChain]:
    """MM-PRM training file: ``question, answer, image_path, process, labels: [float]``.

    ``process`` is the step chunks each ended by ``<prm>``: the number of markers must equal
    ``len(labels)``, no text may follow the last marker and no chunk may be empty. Labels are soft
    Monte Carlo values in [0, 1]. ``answer`` (the reference answer) goes to ``meta["answer"]``.
    """
    source = Source(path, data_root, missing_image, report, domain, allow_outside_paths=allow_outside_paths)

    def build(row: Row) -> StepChain | None:
        question = row.get("question", str)
        process = row.get("process", str)
        labels = [
            row.unit_label(value, f"labels[{position}]")
            for position, value in enumerate(row.get_list("labels", float))
        ]
        answer = row.get("answer", str, required=False)
        *chunks, tail = process.split(PRM_MARKER)
        if not chunks:
            raise row.error("process", f"no {PRM_MARKER} marker")
        if len(chunks) != len(labels):
            raise row.error("labels", f"{len(labels)} labels for {len(chunks)} {PRM_MARKER} markers")
        if tail.strip():
            raise row.error("process", f"text after the last {PRM_MARKER}: {tail.strip()[:60]!r}")
        steps = [chunk.strip() for chunk in chunks]
        if "" in steps:
            raise row.error("process", f"step {steps.index('')} is empty")
        images = row.resolve(row.image_field("image_path"), "image_path")
        if images is None:
            return None
        meta: dict[str, Any] = {} if answer is None else {"answer": answer}
        return StepChain(
            id=row.unique_id(meta),
            question=question,
            steps=steps,
            labels=labels,
            images=images,
            domain=source.domain,
            meta=meta,
        )

    return source.read(build)


def mmprm_record(chain: StepChain) -> dict[str, Any]:
    """``chain`` as an MM-PRM training record, the inverse of :func:`read_mmprm`.

    ``answer`` is ``meta["answer"]`` (None when absent); ``image_path`` the one image path (None
    without images, the list with several); ``process`` each step followed by ``<prm>``. Raises
    ValueError for a step containing the marker or an unlabelled step (MM-PRM labels every chunk).
    """
    for position, (step, label) in enumerate(zip(chain.steps, chain.labels)):
        if PRM_MARKER in step:
            raise ValueError(f"chain {chain.id!r}: step {position} contains the marker {PRM_MARKER}")
        if label is None:
            raise ValueError(f"chain {chain.id!r}: step {position} has no label; MM-PRM labels every step")
    images = chain.images
    return {
        "id": chain.id,
        "question": chain.question,
        "answer": chain.meta.get("answer"),
        "image_path": (images[0] if len(images) == 1 else list(images)) if images else None,
        "process": "".join(f"{step}{PRM_MARKER}" for step in chain.steps),
        "labels": list(chain.labels),
    }


def write_mmprm(path: str | Path, chains: Iterable[StepChain]) -> None:
    """Write ``chains`` as an MM-PRM JSON Lines training file (atomically; see :func:`mmprm_record`)."""
    lines = "".join(json.dumps(mmprm_record(chain), ensure_ascii=False) + "\n" for chain in chains)
    atomic_write_text(path, lines)


@register_format("mmprm_seeds", signature=has_keys("correct_answer", "question"), priority=40)
def read_mmprm_seeds(
    path: str | Path,
    data_root: str | Path | None = None,
    missing_image: str = "error",
    report: SkipReport | None = None,
    allow_outside_paths: bool = False,
) -> list[SeedProblem]:
    """MM-PRM seed file for OmegaPRM: ``id, question, correct_answer, image_path``.

    ``id``, ``question`` and ``correct_answer`` are required (a number as answer is read as its text);
    ``image_path`` may be null for text-only seeds.
    """
    source = Source(path, data_root, missing_image, report, allow_outside_paths=allow_outside_paths)

    def build(row: Row) -> SeedProblem | None:
        if row.obj.get("id") is None:
            raise row.error("id", "missing required field")
        question = row.get("question", str)
        answer = row.obj.get("correct_answer")
        if answer is None or isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
            raise row.error("correct_answer", f"expected a string or a number, got {answer!r}")
        images = row.resolve(row.image_field("image_path"), "image_path")
        if images is None:
            return None
        return SeedProblem(id=row.unique_id({}), question=question, correct_answer=str(answer), images=images)

    return source.read(build)
