"""The native format: JSON Lines, one record per line, each with a ``kind`` field.

``kind`` is ``step_chain`` (training), ``labelled_chain`` (meta / validation) or ``best_of_n``
(test). Every field is type-checked before a record is built (``"steps": "abc"``, a string or
boolean label, a string where the list of images belongs are errors naming file, record and
field), and ids must be unique within a file (an error naming both records): per-instance weights
are keyed by id, so two chains under one id would share one weight. Writes are atomic (temporary
file + rename) so an interrupted write never leaves half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prm.data.errors import RecordError
from prm.data.records import RECORD_TYPES, Record


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# (type test, description, required) of each field; lists are checked item by item below.
_STR = (lambda v: isinstance(v, str), "a string")
_OPT_STR = (lambda v: v is None or isinstance(v, str), "a string or null")
_OPT_INT = (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)), "an integer or null")
_DICT = (lambda v: isinstance(v, dict), "an object")
_STR_LIST = "list of strings"
_FIELDS: dict[str, dict[str, tuple]] = {
    "step_chain": {
        "id": _STR,
        "question": _STR,
        "steps": (_STR_LIST,),
        "labels": ("list of labels",),
        "images": (_STR_LIST,),
        "domain": _STR,
        "meta": _DICT,
    },
    "labelled_chain": {
        "id": _STR,
        "question": _STR,
        "steps": (_STR_LIST,),
        "label": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v in (0, 1), "0 or 1"),
        "images": (_STR_LIST,),
        "domain": _STR,
        "final_answer": _OPT_STR,
        "first_error": _OPT_INT,
        "meta": _DICT,
    },
    "best_of_n": {
        "id": _STR,
        "question": _STR,
        "candidates": ("list of candidates",),
        "images": (_STR_LIST,),
        "domain": _STR,
        "answer": _OPT_STR,
        "meta": _DICT,
    },
}
_CANDIDATE = {
    "steps": (_STR_LIST,),
    "final_answer": _OPT_STR,
    "correct": (lambda v: isinstance(v, bool), "true or false"),
    "first_error": _OPT_INT,
}


def _check_fields(spec: dict, obj: dict, path: object, index: int | None, prefix: str = "") -> None:
    """Type-check ``obj``'s fields against ``spec``; absent fields are left to the dataclass."""
    for name, value in obj.items():
        if name not in spec:
            continue  # the dataclass reports unexpected fields
        field_name = f"{prefix}{name}"
        check = spec[name]
        if len(check) == 2:
            test, description = check
            if not test(value):
                message = f"expected {description}, got {type(value).__name__}: {value!r}"
                raise RecordError(path, index, field_name, message)
            continue
        what = check[0]
        if not isinstance(value, list):
            message = f"expected a {what}, got {type(value).__name__}: {value!r}"
            raise RecordError(path, index, field_name, message)
        for position, item in enumerate(value):
            where = f"{field_name}[{position}]"
            if what == _STR_LIST and not isinstance(item, str):
                raise RecordError(path, index, where, f"expected a string, got {item!r}")
            if what == "list of labels" and not (item is None or _number(item)):
                message = f"expected a number in [0, 1] or null, got {type(item).__name__}: {item!r}"
                raise RecordError(path, index, where, message)
            if what == "list of candidates":
                if not isinstance(item, dict):
                    raise RecordError(path, index, where, f"expected an object, got {item!r}")
                _check_fields(_CANDIDATE, item, path, index, f"{where}.")


def record_from_dict(obj: dict, path: object = "<memory>", index: int | None = None) -> Record:
    """One native record from its JSON object, every field type-checked; raises :class:`RecordError`."""
    if not isinstance(obj, dict):
        raise RecordError(path, index, None, f"expected a JSON object, got {type(obj).__name__}")
    kind = obj.get("kind")
    if kind not in RECORD_TYPES:
        raise RecordError(
            path, index, "kind", f"unknown record kind {kind!r}; expected one of {sorted(RECORD_TYPES)}"
        )
    fields = {key: value for key, value in obj.items() if key != "kind"}
    _check_fields(_FIELDS[kind], fields, path, index)
    try:
        return RECORD_TYPES[kind](**fields)
    except TypeError as error:  # missing or unexpected field
        raise RecordError(path, index, None, f"bad fields for {kind}: {error}") from None
    except ValueError as error:
        raise RecordError(path, index, None, str(error)) from None


def read_native(path: str | Path) -> list[Record]:
    """The records of a native JSON Lines file; raises :class:`RecordError` for a bad or repeated one."""
    records = []
    first_index: dict[str, int] = {}
    with open(path, encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as error:
                raise RecordError(path, index, None, f"invalid JSON: {error}") from None
            record = record_from_dict(obj, path, index)
            if record.id in first_index:
                message = (
                    f"id {record.id!r} repeats the id of record {first_index[record.id]}; ids must be unique"
                )
                raise RecordError(path, index, "id", message)
            first_index[record.id] = index
            records.append(record)
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
