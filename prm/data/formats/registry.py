"""The format registry: each format's name, reader and detection signature, and the dispatch.

A format module registers its reader with :func:`register_format`, giving the format's name (what
``data.format`` / ``data.<split>_format`` select), a signature (a predicate on the file's first
record, usually :func:`has_keys`) and a priority. :func:`detect_format` tries the signatures in
decreasing priority, ties broken by name, so detection order is explicit and does not depend on the
order in which modules were imported.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prm.data.errors import RecordError
from prm.data.formats.source import first_record

Reader = Callable[..., list]
Signature = Callable[[dict], bool]


@dataclass(frozen=True)
class Format:
    """A registered format: ``read(path, data_root=None, missing_image="error", report=None, **own)``
    returns native records; ``signature(first_record)`` says whether a file looks like this format."""

    name: str
    read: Reader
    signature: Signature
    priority: int
    module: str


_FORMATS: dict[str, Format] = {}


@dataclass(frozen=True)
class KeySignature:
    """A signature: the first record has every one of ``keys`` (other keys are allowed)."""

    keys: frozenset[str]

    def __call__(self, record: dict) -> bool:
        return self.keys <= record.keys()


def has_keys(*keys: str) -> KeySignature:
    """The signature of a format whose records always carry ``keys``."""
    return KeySignature(frozenset(keys))


def register_format(name: str, *, signature: Signature, priority: int) -> Callable[[Reader], Reader]:
    """Decorator registering the decorated reader as format ``name`` (the reader is returned as is).

    ``priority``: detection tries higher priorities first; give a format whose signature is implied
    by another's (a subset of its keys) the lower one. Raises ValueError when ``name`` is taken.
    """

    def register(read: Reader) -> Reader:
        if name in _FORMATS:
            message = f"format {name!r} is registered twice: by {_FORMATS[name].module} and {read.__module__}"
            raise ValueError(message)
        _FORMATS[name] = Format(name, read, signature, priority, read.__module__)
        return read

    return register


def registered_formats() -> list[Format]:
    """Every registered format, in detection order (decreasing priority, then name)."""
    return sorted(_FORMATS.values(), key=lambda entry: (-entry.priority, entry.name))


def format_names() -> tuple[str, ...]:
    """The names ``format=`` accepts besides ``"auto"``, in detection order."""
    return tuple(entry.name for entry in registered_formats())


def reader_options(name: str) -> tuple[str, ...]:
    """The keyword options the reader of format ``name`` takes (every parameter but the path), in
    signature order: ``data_root``, ``missing_image``, ``report``, then its own. Raises ValueError
    for an unknown format."""
    if name not in _FORMATS:
        raise ValueError(f"unknown format {name!r}; expected one of {format_names()}")
    parameters = list(inspect.signature(_FORMATS[name].read).parameters.values())[1:]
    return tuple(p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def detect_format(path: str | Path) -> str:
    """The format of a file (or ``datasets`` folder): the first registered signature its first
    record matches.

    Raises :class:`RecordError` for an empty file, a first record that is not a JSON object, or one
    that no signature matches.
    """
    first = first_record(path)
    if first is None:
        raise RecordError(path, None, None, "empty file: cannot detect its format")
    if not isinstance(first, dict):
        raise RecordError(path, 0, None, f"expected a JSON object, got {type(first).__name__}")
    for entry in registered_formats():
        if entry.signature(first):
            return entry.name
    message = f"cannot detect the format from keys {sorted(first)}; pass format= one of {format_names()}"
    raise RecordError(path, 0, None, message)


def read_records(path: str | Path, format: str = "auto", **options: Any) -> list:
    """Read ``path`` in ``format`` (``"auto"``: :func:`detect_format`), passing ``options`` on.

    Returns native records (:mod:`prm.data.records`). Raises ValueError for an unknown format.
    """
    if format == "auto":
        format = detect_format(path)
    if format not in _FORMATS:
        raise ValueError(f"unknown format {format!r}; expected 'auto' or one of {format_names()}")
    return _FORMATS[format].read(path, **options)
