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

Paths stay inside their root: an absolute path, a path starting with ``~`` and one whose ``..`` parts
lead out of the root are refused (a :class:`RecordError`) unless ``allow_outside_paths`` is set, and
so is a relative path that leaves the root through a symbolic link. A data file therefore cannot
make the suite read (or, in data generation, send to a model server) a file outside its root. The
one exception is the image cache (:mod:`prm.data.image_cache`), where images given as bytes inside
Parquet / ``datasets`` rows are written: an absolute path inside it counts as inside the root.

:func:`load_image` converts every Pillow mode to 8-bit RGB the same way everywhere (EXIF orientation
applied; 16-bit and float greyscale scaled to 0-255; transparency composited on white) and pads or
resizes geometry the Qwen2-VL processor refuses (a side under 28 pixels, an aspect ratio over 200).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from prm.config import MissingImage
from prm.data.errors import RecordError, SkipReport

MISSING_IMAGE_POLICIES = tuple(policy.value for policy in MissingImage)  # data.missing_image's choices
# Geometry the Qwen2-VL / Qwen2.5-VL image processors refuse: a side under 28 pixels (one merged
# 2x2 patch of 14-pixel patches) or an aspect ratio over 200 (their smart_resize raises).
MIN_IMAGE_SIDE = 28
MAX_ASPECT_RATIO = 200.0
BACKGROUND = (255, 255, 255)


def check_path(
    raw: str,
    root: Path,
    source_path: object,
    index: int | None,
    field: str,
    cache_root: Path | None = None,
) -> Path:
    """``raw`` resolved under ``root``, refused when it could leave it.

    Refused: an absolute path, a ``~`` path, a path whose ``..`` parts lead out of ``root`` (the
    published DreamPRM-1.5 ``../data/meta_images/x.png`` under a root named ``data`` stays inside and
    is accepted), and a path whose real location (symbolic links followed) is outside ``root``'s.
    Accepted as well: an absolute path whose real location is inside ``cache_root`` (the image
    cache, :mod:`prm.data.image_cache`), which counts as inside the root.
    Raises :class:`RecordError` naming the file, record, field and path.
    """
    if cache_root is not None and _inside(raw, cache_root):
        return Path(raw)
    reason = None
    if raw.startswith("~"):
        reason = "starts with '~'"
    elif Path(raw).is_absolute() or raw.startswith(("/", "\\")):
        reason = "is absolute"
    else:
        real_root, plain_root = os.path.realpath(root), os.path.abspath(root)
        if os.path.commonpath([plain_root, os.path.abspath(root / raw)]) != plain_root:
            reason = "leaves the image root through '..'"
        elif os.path.commonpath([real_root, os.path.realpath(root / raw)]) != real_root:
            reason = f"leaves the image root through a link (to {os.path.realpath(root / raw)})"
    if reason is not None:
        raise RecordError(
            source_path,
            index,
            field,
            f"image path {raw!r} {reason}: paths must stay under the image root {root}; "
            "set data.allow_outside_paths=true to allow it",
        )
    return root / raw


def _inside(raw: str, folder: Path) -> bool:
    """Whether ``raw`` is an absolute path whose real location (links followed) is in ``folder``."""
    if not Path(raw).is_absolute():
        return False
    real_folder = os.path.realpath(folder)
    return os.path.commonpath([real_folder, os.path.realpath(raw)]) == real_folder


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
    allow_outside_paths: bool = False,
    cache_root: Path | None = None,
) -> list[str] | None:
    """Resolve ``paths`` and apply the missing-image policy; None means "skip this record".

    Relative paths are joined to ``data_root`` (None: the folder of ``source_path``) and normalised.
    Absolute, ``~`` and ``..`` paths are refused with a :class:`RecordError` (see :func:`check_path`)
    unless ``allow_outside_paths``, when they are expanded and kept; absolute paths inside
    ``cache_root`` (the image cache) are always accepted. Returns the resolved paths, an
    empty list under ``blank`` when one is missing, or None under ``skip`` (the skip is counted here).
    """
    check_policy(policy)
    root = Path(data_root) if data_root is not None else Path(source_path).parent
    if allow_outside_paths:
        resolved = [os.path.normpath(root / Path(path).expanduser()) for path in paths]
    else:
        resolved = [
            os.path.normpath(check_path(path, root, source_path, index, field, cache_root)) for path in paths
        ]
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


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB, whatever its Pillow mode.

    - EXIF orientation is applied first (``ImageOps.exif_transpose``), so a photo is seen upright;
    - 16-bit / 32-bit integer (``I;16*``, ``I``) and float (``F``) greyscale are scaled linearly from
      their own range (0-65535 for 16-bit, the image's min-max for ``I`` / ``F``) to 0-255: Pillow's
      plain ``convert("RGB")`` clips them to 255 and returns an all-white image;
    - transparency (``RGBA``, ``LA``, ``PA``, ``P`` with a transparent index, ``RGB`` with a
      transparency key) is composited on white: a plain conversion would show the hidden colour;
    - everything else (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``) through Pillow's
      own conversion.
    """
    image = ImageOps.exif_transpose(image) or image
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16"):
            low, high = 0.0, 65535.0
        else:
            low, high = float(array.min()), float(array.max())
        scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
        grey = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
        return grey.convert("RGB")
    if mode == "P" or (mode in ("RGB", "L") and "transparency" in image.info):
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def geometry_problem(width: int, height: int) -> str | None:
    """Why the Qwen-VL processors would refuse a ``width`` x ``height`` image, or None."""
    if min(width, height) < MIN_IMAGE_SIDE:
        return f"side under {MIN_IMAGE_SIDE} pixels ({width}x{height})"
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        return f"aspect ratio over {MAX_ASPECT_RATIO:g} ({width}x{height})"
    return None


def fix_geometry(image: Image.Image) -> Image.Image:
    """Pad (white, centred) then enlarge ``image`` so that :func:`geometry_problem` finds nothing.

    The short side is padded up to ``long / 200`` (never distorting the content), then an image
    whose short side is under 28 pixels is enlarged (bicubic, aspect kept) until it is 28. A
    ``[w, h]`` image already accepted is returned unchanged.
    """
    width, height = image.size
    if geometry_problem(width, height) is None:
        return image
    short = max(min(width, height), int(-(-max(width, height) // MAX_ASPECT_RATIO)))
    new_w, new_h = (width, short) if width >= height else (short, height)
    if (new_w, new_h) != (width, height):
        canvas = Image.new("RGB", (new_w, new_h), BACKGROUND)
        canvas.paste(image, ((new_w - width) // 2, (new_h - height) // 2))
        image, width, height = canvas, new_w, new_h
    if min(width, height) < MIN_IMAGE_SIDE:
        scale = MIN_IMAGE_SIDE / min(width, height)
        size = (max(MIN_IMAGE_SIDE, round(width * scale)), max(MIN_IMAGE_SIDE, round(height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    return image


def load_image(path: str | Path) -> Image.Image:
    """Open an image fully (the file is closed on return) as RGB (:func:`to_rgb`), geometry fixed.

    Sizes the processors refuse are padded / enlarged by :func:`fix_geometry`; whether a record with
    such an image is used at all is the preflight's ``data.bad_image`` policy. Raises Pillow's
    ``UnidentifiedImageError`` / ``OSError`` for a file it cannot decode.
    """
    with Image.open(path) as image:
        image.load()
        return fix_geometry(to_rgb(image))
