"""DreamPRM-1.5's best-of-N test file (Cao et al., 2025): N candidate responses per question.

``bestofn``: ``question, image_path, candidates: [str], true_false: [bool]`` -> best-of-N problems.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prm.data.errors import SkipReport
from prm.data.formats.registry import has_keys, register_format
from prm.data.formats.source import Row, Source
from prm.data.records import BestOfNProblem, Candidate
from prm.data.steps import split_candidate


@register_format("bestofn", signature=has_keys("candidates", "true_false"), priority=60)
def read_bestofn_test(
    path: str | Path,
    data_root: str | Path | None = None,
    missing_image: str = "error",
    report: SkipReport | None = None,
    *,
    allow_outside_paths: bool = False,
    domain: str | None = None,
) -> list[BestOfNProblem]:
    """DreamPRM-1.5 test file: ``question, image_path, candidates: [str], true_false: [bool]``.

    Each candidate is split by :func:`prm.data.steps.split_candidate`; ``candidates`` and
    ``true_false`` must have the same length. A candidate with no text keeps zero steps rather than
    being dropped: dropping it would change N and the random baseline.
    """
    source = Source(path, data_root, missing_image, report, domain, allow_outside_paths=allow_outside_paths)

    def build(row: Row) -> BestOfNProblem | None:
        question = row.get("question", str)
        texts = row.get_list("candidates", str)
        correct = row.get_list("true_false", bool)
        if len(texts) != len(correct):
            raise row.error("true_false", f"{len(correct)} labels for {len(texts)} candidates")
        if not texts:
            raise row.error("candidates", "no candidates")
        images = row.resolve(row.image_field("image_path"), "image_path")
        if images is None:
            return None
        candidates = [Candidate(*split_candidate(text), correct=flag) for text, flag in zip(texts, correct)]
        meta: dict[str, Any] = {}
        return BestOfNProblem(
            id=row.unique_id(meta),
            question=question,
            candidates=candidates,
            images=images,
            domain=source.domain,
            meta=meta,
        )

    return source.read(build)
