"""Published PRM data formats: one module per publisher, each registering its reader(s).

Every reader takes ``(path, data_root=None, missing_image="error", report=None)`` plus options of
its own (``data.reader_options``), accepts a JSON array, JSON Lines, a Parquet file or a Hugging
Face ``datasets`` folder (:mod:`prm.data.formats.inputs`), and returns native records
(:mod:`prm.data.records`). Conventions shared by all of them (implemented once, in
:mod:`prm.data.formats.source`):

- A malformed record raises :class:`RecordError` naming the file, the record index (0-based, in
  file order) and the field; nothing is repaired by guessing.
- Nothing is dropped silently: a record left out (missing image under ``skip``, no steps) is counted
  in the :class:`SkipReport` by reason, and ``read`` / ``kept`` are added to (so one report can
  cover several files). Pass a report to log it yourself; without one, the reader logs its own.
  Skip reasons: ``missing_image``, ``no_steps`` (DreamPRM meta / conversations / PRM800K),
  ``empty_prefix`` (DreamPRM train), ``unsplit_question`` (Math-Shepherd); records kept without their
  images count in ``changed`` under ``blank_image`` (see :mod:`prm.data.images`).
- Images given as bytes in Parquet / ``datasets`` rows become paths in the image cache
  (:mod:`prm.data.image_cache`) when a reader reads the field with :meth:`Row.image_field`.
- Ids are strings: the record's ``id`` when it has one, else its index. A repeated id gets a suffix
  (``x#2``, ``x#3``, ...) and keeps the original in ``meta["source_id"]``, because per-instance
  weights are keyed by id.
- ``domain``: the format's own domain field (DreamPRM ``dataset``), else the ``domain`` argument,
  else the file's stem (published files come one per source, e.g. ProcessBench ``gsm8k.json``).
- Text-only formats (TRL, ProcessBench) accept ``data_root`` / ``missing_image`` for a uniform
  signature and ignore them.

Adding a format: a module in this package whose reader is decorated with
:func:`register_format` (name, detection signature, priority), and a ``conf/data/<name>.yaml``
selecting it by ``train_format`` / ``meta_format`` / ``test_format``. Every module of this package
is imported below, so the module registers itself: no table elsewhere names it.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from prm.data.formats.registry import (
    Format,
    detect_format,
    format_names,
    has_keys,
    read_records,
    register_format,
    registered_formats,
)
from prm.data.formats.source import Row, Source, load_json_records

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

# FORMATS (module __getattr__ below) is importable by name but not listed: it is computed on access.
__all__ = [
    "Format",
    "Row",
    "Source",
    "detect_format",
    "format_names",
    "has_keys",
    "load_json_records",
    "read_records",
    "register_format",
    "registered_formats",
]


def __getattr__(name: str) -> Any:
    # FORMATS: the registered names in detection order, read at access time so that formats
    # registered after import (plugins, tests) are listed too.
    if name == "FORMATS":
        return format_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
