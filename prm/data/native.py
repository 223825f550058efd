"""The native format: JSON Lines, one record per line, each with a ``kind`` field.

``kind`` is ``step_chain`` (training), ``labelled_chain`` (meta / validation) or ``best_of_n``
(test). Writes are atomic (temporary file + rename) so an interrupted write never leaves half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from prm.data.errors import RecordError
from prm.data.records import RECORD_TYPES, Record


def record_from_dict(obj: dict, path: object = "<memory>", index: int | None = None) -> Record:
    if not isinstance(obj, dict):
        raise RecordError(path, index, None, f"expected a JSON object, got {type(obj).__name__}")
    kind = obj.get("kind")
    if kind not in RECORD_TYPES:
        raise RecordError(
            path, index, "kind", f"unknown record kind {kind!r}; expected one of {sorted(RECORD_TYPES)}"
        )
    fields = {key: value for key, value in obj.items() if key != "kind"}
    try:
        return RECORD_TYPES[kind](**fields)
    except TypeError as error:  # missing or unexpected field
        raise RecordError(path, index, None, f"bad fields for {kind}: {error}") from None
    except ValueError as error:
        raise RecordError(path, index, None, str(error)) from None


def read_native(path: str | Path) -> list[Record]:
    records = []
    with open(path, encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as error:
                raise RecordError(path, index, None, f"invalid JSON: {error}") from None
            records.append(record_from_dict(obj, path, index))
    return records


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_native(path: str | Path, records: Iterable[Record]) -> None:
    lines = [json.dumps(record.to_dict(), ensure_ascii=False, sort_keys=True) for record in records]
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
