"""Image paths of a record: resolution against a data root, the missing-image policy, loading.

Published PRM files ship no images, only paths relative to wherever their authors kept them, so
every reader resolves paths against a ``data_root`` the user gives (default: the data file's
folder) and then applies one policy to a record whose images are not there:

- ``error`` (default): raise :class:`RecordError` naming the file, the record index, the field and
  the path, so a wrong ``data_root`` fails at once instead of after hours of training;
- ``skip``: drop the record, counted in the :class:`SkipReport` under ``missing_image``;
- ``blank``: keep the record without images (its list emptied, for text-only use), counted in
  ``SkipReport.changed`` under ``blank_image`` (kept but altered, not dropped).

A record with several images loses all of them under ``blank`` when any is missing: a partial set
would no longer match the question's ``<image k>`` references.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PIL import Image

from prm.data.errors import RecordError, SkipReport

MISSING_IMAGE_POLICIES = ("error", "skip", "blank")


def check_policy(policy: str) -> None:
    if policy not in MISSING_IMAGE_POLICIES:
        raise ValueError(f"missing_image must be one of {MISSING_IMAGE_POLICIES}, got {policy!r}")


def image_paths(value: Any, source_path: object, index: int | None, field: str) -> list[str]:
    """A record's image field as a list: one path, a list of paths, or null / absent (no image)."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise RecordError(
            source_path, index, field, f"expected a path or a list of paths, got {type(value).__name__}"
        )
    for position, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            message = f"image {position} is not a non-empty path: {item!r}"
            raise RecordError(source_path, index, field, message)
    return list(items)


def resolve_images(
    paths: list[str],
    data_root: str | Path | None,
    policy: str,
    source_path: str | Path,
    index: int | None,
    field: str,
    report: SkipReport,
) -> list[str] | None:
    """Resolve ``paths`` and apply the missing-image policy; None means "skip this record".

    Relative paths are joined to ``data_root`` (None: the folder of ``source_path``) and normalised,
    so ``../data/x.png`` stays readable; absolute paths are kept. Returns the resolved paths, an
    empty list under ``blank`` when one is missing, or None under ``skip`` (the skip is counted here).
    """
    check_policy(policy)
    root = Path(data_root) if data_root is not None else Path(source_path).parent
    resolved = [os.path.normpath(root / Path(path).expanduser()) for path in paths]
    missing = [(raw, path) for raw, path in zip(paths, resolved) if not Path(path).is_file()]
    if not missing:
        return resolved
    raw, path = missing[0]
    if policy == "error":
        raise RecordError(
            source_path,
            index,
            field,
            f"image not found: {path} (from {raw!r}, {len(missing)} of {len(paths)} missing); "
            "pass the right data_root, or missing_image='skip' / 'blank'",
        )
    if policy == "skip":
        report.skip("missing_image", f"record {index}: {path}")
        return None
    report.change("blank_image", f"record {index}: {path}")
    return []


def load_image(path: str | Path) -> Image.Image:
    """Open an image fully (the file is closed on return) and convert it to RGB."""
    with Image.open(path) as image:
        return image.convert("RGB")
