"""Errors and skip accounting for data loading.

Bad input must say where it is: every problem names the file, the record index and the field.
Records that a policy allows to skip (a missing image under ``missing_image=skip``) are counted by
reason in a :class:`SkipReport`, which the caller logs, so nothing disappears silently.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from prm.errors import UserError

log = logging.getLogger(__name__)


class RecordError(UserError, ValueError):
    """A malformed record: names the file, the record index and the field.

    A :class:`prm.errors.UserError` (one readable line, exit status 2) and, for older callers, a
    ``ValueError``.
    """

    def __init__(
        self,
        path: object,
        index: int | None,
        field_name: str | None,
        message: str,
        record_id: str | None = None,
    ):
        self.path, self.index, self.field, self.message = str(path), index, field_name, message
        self.record_id = record_id
        where = self.path
        if index is not None:
            where += f", record {index}"
        if record_id is not None:
            where += f" (id {record_id!r})"
        if field_name is not None:
            where += f", field {field_name!r}"
        super().__init__(f"{where}: {message}")


@dataclass
class SkipReport:
    """Counts of records read, kept and skipped (by reason) for one source file."""

    path: str
    read: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    changed: Counter = field(default_factory=Counter)  # kept, but altered (e.g. an image dropped)
    examples: dict[str, str] = field(default_factory=dict)

    def skip(self, reason: str, detail: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, detail)

    def change(self, reason: str, detail: str) -> None:
        """Count a record that is kept but altered, such as one whose missing image was blanked."""
        self.changed[reason] += 1
        self.examples.setdefault(reason, detail)

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        text = f"{self.path}: read {self.read} records, kept {self.kept}"
        if self.changed:
            text += (
                " ("
                + ", ".join(
                    f"{count} {reason}, e.g. {self.examples[reason]}"
                    for reason, count in self.changed.items()
                )
                + ")"
            )
        if self.skipped:
            reasons = ", ".join(
                f"{count} {reason} (e.g. {self.examples[reason]})" for reason, count in self.skipped.items()
            )
            text += f", skipped {self.total_skipped}: {reasons}"
        return text

    def log(self) -> None:
        (log.warning if self.skipped or self.changed else log.info)(self.summary())
