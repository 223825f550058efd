"""The suite's own format (:mod:`prm.data.native`: one record per line, each with a ``kind``).

``native``: read by :func:`prm.data.native.read_native` (written by ``write_native``), then its
image paths resolved under the same policy as the published formats'.
"""

from __future__ import annotations

from pathlib import Path

from prm.data.errors import SkipReport
from prm.data.formats.registry import has_keys, register_format
from prm.data.formats.source import Source
from prm.data.native import read_native
from prm.data.records import Record


# Highest priority: ``kind`` is the suite's own field, checked before any published signature.
@register_format("native", signature=has_keys("kind"), priority=90)
def read_native_resolved(
    path: str | Path,
    data_root: str | Path | None = None,
    missing_image: str = "error",
    report: SkipReport | None = None,
    allow_outside_paths: bool = False,
) -> list[Record]:
    """Native records with their image paths resolved under the missing-image policy.

    A record whose image is missing is skipped (``skip``), kept without images (``blank``) or raises
    :class:`prm.data.errors.RecordError` (``error``), as in every published format.
    """
    source = Source(path, data_root, missing_image, report, allow_outside_paths=allow_outside_paths)
    records = read_native(path)
    source.report.read += len(records)
    kept = []
    for index, record in enumerate(records):
        images = source.resolve(record.images, index, "images")
        if images is not None:
            record.images = images
            kept.append(record)
    return source.done(kept)
