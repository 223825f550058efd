"""Where the data of a run comes from: the object ``conf/data/*.yaml`` builds.

A run has up to three splits: ``train`` (step-labelled chains, lower level), ``meta`` (whole-chain
labels, upper level and validation) and ``test`` (best-of-N problems or ProcessBench chains).
Each split is a file in any supported format (``format: auto`` detects it) stored as JSON, JSON
Lines, Parquet or a Hugging Face ``datasets`` folder (:mod:`prm.data.formats.inputs`; images given
as bytes go to ``data.image_cache``), or comes from a generator such as the demo benchmark, which
writes its files on first use. Loading logs one line
per file with the records read, kept and skipped (by reason), so nothing disappears silently.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from prm.config import SPLITS, DataOptions
from prm.data.errors import SkipReport
from prm.data.formats import detect_format, read_records
from prm.data.formats.inputs import input_exists
from prm.data.formats.registry import reader_options
from prm.data.formats.source import ReaderOptionError
from prm.data.image_cache import using_image_cache
from prm.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["SPLITS", "DataSources"]

# Reader arguments DataSources.load sets from other data.* keys (not through data.reader_options).
_SET_HERE = ("data_root", "missing_image", "report", "allow_outside_paths")


@dataclass
class DataSources(DataOptions):
    """Split files, their formats, the image root and the loader settings of one run: the keys of
    :class:`prm.config.DataOptions`, with its defaults (the ``data`` node's schema, which refuses a
    value outside a policy's choices before this class is built)."""

    def __post_init__(self) -> None:
        self._built = False
        self.reports: dict[str, SkipReport] = {}

    def prepare(self) -> None:
        """Run the generator (if any) and fill in the split paths it produced. Idempotent."""
        if self._built or self.generator is None:
            return
        files = self.generator.build()
        for split in SPLITS:
            if getattr(self, split) is None:
                setattr(self, split, str(Path(getattr(files, split)).resolve()))
        if self.image_root is None:
            self.image_root = str(Path(files.image_root).resolve())
        self._built = True

    def path(self, split: str) -> Path | None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        self.prepare()
        value = getattr(self, split)
        return Path(value) if value is not None else None

    def load(self, split: str) -> list:
        """Read ``split`` into native records; the skip report is kept in ``self.reports[split]``."""
        path = self.path(split)
        if path is None:
            raise UserError(f"data.{split} is not set (data={self.name}); give data.{split}=<file>")
        if not input_exists(path):
            raise UserError(f"data.{split}={path}: no such file or dataset folder")
        report = SkipReport(str(path))
        format_name = getattr(self, f"{split}_format") or self.format
        options = self._reader_options(split, path, format_name)
        with using_image_cache(self.image_cache):
            try:
                records = read_records(
                    path,
                    format_name,
                    data_root=self.image_root,
                    missing_image=self.missing_image,
                    report=report,
                    allow_outside_paths=self.allow_outside_paths,
                    **options,
                )
            except ReaderOptionError as error:
                where = (
                    f"data.reader_options.{split}.{error.option}"
                    if error.option in options
                    else "a reader option"
                )
                raise UserError(f"{where}: {error}") from None
        self.reports[split] = report
        report.log()
        return self._limited(split, records)

    def _reader_options(self, split: str, path: Path, format_name: str) -> dict:
        """``data.reader_options.<split>``: the split's reader's own options (PRM800K's ``neutral``,
        Math-Shepherd's ``step_tag``, ...). Raises UserError for an option its format's reader does
        not take, or one this class sets itself."""
        options = dict((self.reader_options or {}).get(split) or {})
        if not options:
            return options
        name = detect_format(path) if format_name == "auto" else format_name
        own = [option for option in reader_options(name) if option not in _SET_HERE]
        unknown = sorted(set(options) - set(own))
        if unknown:
            raise UserError(
                f"data.reader_options.{split}: the {name} reader takes no option {', '.join(unknown)}; "
                f"its options: {', '.join(own) or 'none'}"
            )
        return options

    def _limited(self, split: str, records: list) -> list:
        """At most ``limit`` records of ``split``: indices floor(i * n / limit), i < limit (logged)."""
        limit = self.limit.get(split) if isinstance(self.limit, Mapping) else self.limit
        if limit is None or len(records) <= int(limit):
            return records
        limit = int(limit)  # >= 1: the config check refuses anything else (prm.config)
        kept = [records[i * len(records) // limit] for i in range(limit)]
        log.info("data.limit: %s split: kept %d of %d records (evenly spaced)", split, limit, len(records))
        return kept
