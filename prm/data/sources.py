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
from typing import Any

from prm.config import DEFAULT_MAX_LENGTH
from prm.data.errors import SkipReport
from prm.data.formats import read_records
from prm.errors import UserError

log = logging.getLogger(__name__)

SPLITS = ("train", "meta", "test")


@dataclass
class DataSources:
    """Split files, their formats, the image root and the loader settings of one run."""

    name: str = "custom"
    train: str | None = None
    meta: str | None = None
    test: str | None = None
    format: str = "auto"
    train_format: str | None = None
    meta_format: str | None = None
    test_format: str | None = None
    image_root: str | None = None
    missing_image: str = "error"
    allow_outside_paths: bool = False  # accept absolute, "~" and root-leaving ".." image paths
    # Preflight policies (prm.preflight): each case is counted in the preflight report.
    too_long: str = "truncate"  # error | truncate (drop trailing steps) | skip
    bad_image: str = "fix"  # fix (pad / enlarge) | skip | error: sizes the processor refuses
    special_tokens: str = "neutralize"  # neutralize | error: special-token text inside questions / steps
    allow_one_class_meta: bool = False  # a meta split of one class: a warning instead of an error
    generator: Any = None  # an object with .build() -> DemoFiles-like (train, meta, test, image_root)
    batch_size: int = 8
    eval_batch_size: int = 16
    max_length: int | None = DEFAULT_MAX_LENGTH  # tokens per chain (prm.config: the one default)
    num_workers: int = 0
    # Speed (see PRMCollator and LengthGroupedSampler): batches of similar token length, grouped in
    # windows of length_window global batches of the seeded order; packing: no padding tokens.
    group_by_length: bool = False
    length_window: int = 64
    packing: bool = False
    # At most this many records per split (an int for every split, or {split: int}); null: all.
    # An evenly spaced subset, so files sorted by domain keep every domain; always logged.
    limit: Any = None

    def __post_init__(self) -> None:
        for name, choices in (
            ("too_long", ("error", "truncate", "skip")),
            ("bad_image", ("fix", "skip", "error")),
            ("special_tokens", ("neutralize", "error")),
        ):
            if getattr(self, name) not in choices:
                raise UserError(
                    f"data.{name} must be one of {'|'.join(choices)}, got {getattr(self, name)!r}"
                )
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
        limit = int(limit)
        if limit < 1:
            raise ValueError(f"data.limit for split {split!r} must be >= 1 or null, got {limit}")
        kept = [records[i * len(records) // limit] for i in range(limit)]
        log.info("data.limit: %s split: kept %d of %d records (evenly spaced)", split, limit, len(records))
        return kept
