"""The suite's own format (:mod:`prm.data.native`: one record per line, each with a ``kind``).

``native``: each record checked and built by :func:`prm.data.native.record_from_dict` (the records
``write_native`` writes), read through :class:`Source` (so from JSON Lines, Parquet or a
``datasets`` folder alike), then its image paths resolved under the same policy as the published
formats'.
"""

from __future__ import annotations

from pathlib import Path

from prm.data.errors import RecordError, SkipReport
from prm.data.formats.registry import has_keys, register_format
from prm.data.formats.source import Row, Source
from prm.data.image_cache import holds_image_data
from prm.data.native import record_from_dict
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
    :class:`prm.data.errors.RecordError` (``error``), as in every published format. Ids must be
    unique in the file (an error naming both records): per-instance weights are keyed by id.
    """
    source = Source(path, data_root, missing_image, report, allow_outside_paths=allow_outside_paths)
    first_index: dict[str, int] = {}

    def build(row: Row) -> Record | None:
        obj = row.obj
        if holds_image_data(obj.get("images")):
            obj = {**obj, "images": row.image_field("images")}  # images given as bytes: cached paths
        record = record_from_dict(obj, source.path, row.index)
        if record.id in first_index:
            first = first_index[record.id]
            message = f"id {record.id!r} repeats the id of record {first}; ids must be unique"
            raise RecordError(source.path, row.index, "id", message)
        first_index[record.id] = row.index
        images = row.resolve(record.images, "images")
        if images is None:
            return None
        record.images = images
        return record

    return source.read(build)
