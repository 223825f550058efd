"""Images stored as bytes inside data rows, written once to a content-addressed cache folder.

Hugging Face ``datasets`` keep an image column (its ``Image`` feature) as a struct of the encoded
file's ``bytes`` and an optional ``path``, and Parquet files written from them carry that struct
(or plain bytes) per row. The rest of the suite works with checked image *paths*
(:mod:`prm.data.images`), so each image is written once to ``<cache>/<aa>/<sha256>.<ext>``: the
SHA-256 of its bytes names the file (``aa`` its first two hex digits), so the same image under any
row, file, data set or run is one file, written once, and a file's name says its content. The
extension is Pillow's name for the detected format (``.png``, ``.jpg``, ...). Writes go through a
temporary file and an atomic rename, so a reader never sees half an image.

Where the cache is: ``data.image_cache`` (:class:`prm.config.DataOptions`), else
``$PRM_CACHE_DIR/images`` (``.cache/images`` without the variable, like the demo data's cache): a
folder the suite may write to, unlike a data set's own folder (which may be read-only or a Hub
snapshot). Removing it is always safe: it is filled again on the next read. The data loading
(:class:`prm.data.sources.DataSources`) selects the folder for the readers with
:func:`using_image_cache`; a reader called directly uses the default. Paths inside the cache count
as inside the image root (:func:`prm.data.images.check_path`).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

# Pillow format name -> file extension (the usual one; other formats: the lower-case format name).
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tiff"}

_FOLDER: contextvars.ContextVar[str | None] = contextvars.ContextVar("prm_image_cache", default=None)


def default_image_cache() -> Path:
    """``$PRM_CACHE_DIR/images``, ``.cache/images`` when the variable is unset (relative to the
    working directory, like the demo data's ``.cache/demo``)."""
    return Path(os.environ.get("PRM_CACHE_DIR") or ".cache") / "images"


def current_image_cache() -> Path:
    """The folder set by the innermost :func:`using_image_cache`, else :func:`default_image_cache`."""
    folder = _FOLDER.get()
    return Path(folder) if folder else default_image_cache()


@contextlib.contextmanager
def using_image_cache(folder: str | Path | None) -> Iterator[None]:
    """Within the block, readers write image bytes to ``folder`` (None: the default folder)."""
    token = _FOLDER.set(None if folder is None else str(folder))
    try:
        yield
    finally:
        _FOLDER.reset(token)


def is_image_data(value: Any) -> bool:
    """Whether ``value`` is an image given by content: bytes, or a ``datasets`` Image struct
    (a dict with a ``bytes`` key, and at most a ``path`` key besides)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return True
    return isinstance(value, dict) and "bytes" in value and set(value) <= {"bytes", "path"}


def holds_image_data(value: Any) -> bool:
    """Whether an image field holds image data (:func:`is_image_data`), itself or in its list."""
    if isinstance(value, list):
        return any(is_image_data(item) for item in value)
    return is_image_data(value)


class UndecodableImage(ValueError):
    """Bytes that Pillow does not recognise as an image (the message says why)."""


class ImageCache:
    """The content-addressed folder of images given as bytes (see the module docstring).

    Nothing is created until the first image is stored. ``writes`` counts the files this object
    wrote (an image already in the folder is not written again).
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).absolute()
        self.writes = 0
        self._known: dict[str, Path] = {}

    def store(self, data: bytes | bytearray | memoryview) -> Path:
        """The cached file holding ``data`` (written if absent). Raises :class:`UndecodableImage`
        when Pillow cannot identify or verify the bytes as an image."""
        data = bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        known = self._known.get(digest)
        if known is not None:
            return known
        try:
            with Image.open(io.BytesIO(data)) as image:
                image_format = image.format or "bin"
                image.verify()
        except UnidentifiedImageError:
            raise UndecodableImage(f"{len(data)} bytes in no image format Pillow knows") from None
        except (OSError, SyntaxError, ValueError) as error:
            raise UndecodableImage(f"{len(data)} bytes that are not a readable image ({error})") from None
        extension = EXTENSIONS.get(image_format, image_format.lower())
        target = self.folder / digest[:2] / f"{digest}.{extension}"
        if not (target.is_file() and target.stat().st_size == len(data)):
            target.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{digest}.", suffix=".tmp")
            try:
                with os.fdopen(handle, "wb") as out:
                    out.write(data)
                os.replace(temporary, target)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
            self.writes += 1
        self._known[digest] = target
        return target

    def image_path(self, value: Any) -> str | None:
        """One image value as a path: bytes (or a struct's ``bytes``) -> the cached file's absolute
        path; a struct without bytes -> its ``path`` as written (None when it has neither); any
        other value is returned unchanged for the path checks to judge."""
        if isinstance(value, dict) and is_image_data(value):
            if value.get("bytes") is not None:
                return str(self.store(value["bytes"]))
            return value.get("path")
        if is_image_data(value):
            return str(self.store(value))
        return value
