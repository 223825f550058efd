"""Where the data of a run comes from: the object ``conf/data/*.yaml`` builds.

A run has up to three splits: ``train`` (step-labelled chains, lower level), ``meta`` (whole-chain
labels, upper level and validation) and ``test`` (best-of-N problems or ProcessBench chains).
Each split is a file in any supported format (``format: auto`` detects it), or comes from a
generator such as the demo benchmark, which writes its files on first use. Loading logs one line
per file with the records read, kept and skipped (by reason), so nothing disappears silently.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from prm.config import SPLITS, DataOptions
from prm.data.errors import SkipReport
from prm.data.formats import read_records
from prm.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["SPLITS", "DataSources"]


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
        if not path.is_file():
            raise UserError(f"data.{split}={path}: no such file")
        report = SkipReport(str(path))
        records = read_records(
            path,
            getattr(self, f"{split}_format") or self.format,
            data_root=self.image_root,
            missing_image=self.missing_image,
            report=report,
            allow_outside_paths=self.allow_outside_paths,
        )
        self.reports[split] = report
        report.log()
        return self._limited(split, records)

    def _limited(self, split: str, records: list) -> list:
        """At most ``limit`` records of ``split``: indices floor(i * n / limit), i < limit (logged)."""
        limit = self.limit.get(split) if isinstance(self.limit, Mapping) else self.limit
        if limit is None or len(records) <= int(limit):
            return records
        limit = int(limit)  # >= 1: the config check refuses anything else (prm.config)
        kept = [records[i * len(records) // limit] for i in range(limit)]
        log.info("data.limit: %s split: kept %d of %d records (evenly spaced)", split, limit, len(records))
        return kept
