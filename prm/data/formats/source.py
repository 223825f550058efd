"""One data source being read: field checks and the record loop, over any input kind.

A format module (:mod:`prm.data.formats`) reads a source through a :class:`Source` (the path, the
missing-image policy, the skip report, the ids already used, the image cache) and each record
through a :class:`Row` (its index and object), whose checks raise :class:`RecordError` naming the
file, the record index (0-based, in file order) and the field. :meth:`Source.read` is the loop
every record-per-record format shares: it counts the records read and kept and refuses a record
dropped without a counted reason, so nothing is left out silently.

The records come from :func:`prm.data.formats.inputs.iter_records`: a JSON array or JSON Lines
file, a Parquet file, or a Hugging Face ``datasets`` folder (``save_to_disk`` or a Hub snapshot),
one at a time (:meth:`Source.rows` is an iterator), so every format reads all of them. Images given
as bytes in Parquet / ``datasets`` rows become paths in the image cache when a reader asks for the
field (:meth:`Row.image_field`, :mod:`prm.data.image_cache`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from prm.data.errors import RecordError, SkipReport
from prm.data.formats.inputs import first_record, iter_records, load_json_records
from prm.data.image_cache import ImageCache, UndecodableImage, current_image_cache, holds_image_data
from prm.data.images import check_policy, image_paths, resolve_images

T = TypeVar("T")

__all__ = ["Row", "Source", "check_choice", "first_record", "is_kind", "iter_records", "load_json_records"]

_TYPE_NAMES = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    list: "a list",
    dict: "an object",
}


def is_kind(value: Any, kind: type) -> bool:
    """isinstance, except that a boolean is not a number; ``float`` accepts integers."""
    if kind in (int, float):
        return isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
    return isinstance(value, kind)


class ReaderOptionError(ValueError):
    """A reader option given a value outside its choices; ``option`` names it."""

    def __init__(self, option: str, message: str):
        self.option = option
        super().__init__(message)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise :class:`ReaderOptionError` (a ValueError) unless ``value`` is one of ``choices`` (a
    reader option such as ``no_steps``)."""
    if value not in choices:
        raise ReaderOptionError(name, f"{name} must be one of {choices}, got {value!r}")


class Source:
    """One source being read: its path, image policy, skip report, domain, the ids already used and
    the image cache.

    ``path``: any input of :func:`prm.data.formats.inputs.iter_records`. ``report``: counts are added
    to it (one report can cover several files); None: the source keeps its own and logs it when
    done. ``domain``: the records' domain, default the path's stem. ``image_cache``: the folder where
    images given as bytes are written (None: :func:`prm.data.image_cache.current_image_cache`).
    Raises ValueError for an unknown ``missing_image`` policy.
    """

    def __init__(
        self,
        path: str | Path,
        data_root: str | Path | None = None,
        missing_image: str = "error",
        report: SkipReport | None = None,
        domain: str | None = None,
        allow_outside_paths: bool = False,
        image_cache: str | Path | None = None,
    ):
        check_policy(missing_image)
        self.image_cache = ImageCache(image_cache if image_cache is not None else current_image_cache())
        self.allow_outside_paths = allow_outside_paths
        self.path, self.data_root, self.missing_image = Path(path), data_root, missing_image
        self.own_report = report is None
        self.report = report if report is not None else SkipReport(str(path))
        self.domain = domain or self.path.stem
        self.seen_ids: dict[str, int] = {}

    def error(self, index: int | None, field_name: str | None, message: str) -> RecordError:
        return RecordError(self.path, index, field_name, message)

    def rows(self) -> Iterator[Row]:
        """The records of the source, one at a time, each checked to be an object (a JSON object, a
        Parquet / ``datasets`` row) and counted in ``report.read`` when it is handed out."""
        for index, obj in enumerate(iter_records(self.path)):
            if not isinstance(obj, dict):
                raise self.error(index, None, f"expected a JSON object, got {type(obj).__name__}")
            self.report.read += 1
            yield Row(self, index, obj)

    def read(self, build: Callable[[Row], T | None]) -> list[T]:
        """The record loop: ``build`` each row into a record, or None for a record left out.

        A record left out must have counted exactly one skip reason in the report (through
        :meth:`Row.skip`, :meth:`Row.no_steps` or :meth:`Row.resolve` under ``skip``), and a kept one
        none: otherwise RuntimeError (a reader bug). Returns the kept records, in file order.
        """
        records = []
        for row in self.rows():
            before = self.report.total_skipped
            record = build(row)
            counted = self.report.total_skipped - before
            if counted != (record is None):
                what = "left out" if record is None else "kept"
                message = f"{self.path}, record {row.index}: {what} with {counted} skip reasons counted"
                raise RuntimeError(f"{message}; a record left out counts exactly one")
            if record is not None:
                records.append(record)
        return self.done(records)

    def resolve(self, paths: list[str], index: int, name: str, weight: int = 1) -> list[str] | None:
        """Resolved paths under the policy; None when the record is skipped.

        ``weight`` is how many report units the record stands for (DreamPRM prefixes of one chain).
        """
        images = resolve_images(
            paths,
            self.data_root,
            self.missing_image,
            self.path,
            index,
            name,
            self.report,
            self.allow_outside_paths,
            self.image_cache.folder,
        )
        if weight > 1 and images is None:
            self.report.skipped["missing_image"] += weight - 1
        elif weight > 1 and paths and not images:
            self.report.changed["blank_image"] += weight - 1
        return images

    def unique(self, record_id: str, meta: dict) -> str:
        """``record_id``, suffixed ``#2``, ``#3``, ... when already used in this file.

        A suffixed id keeps the original in ``meta["source_id"]`` (per-instance weights are keyed by id).
        """
        count = self.seen_ids.get(record_id, 0) + 1
        self.seen_ids[record_id] = count
        if count == 1:
            return record_id
        meta["source_id"] = record_id
        return f"{record_id}#{count}"

    def done(self, records: list, kept: int | None = None) -> list:
        """``records``, counted in ``report.kept`` (``kept`` when a record stands for several units)."""
        self.report.kept += len(records) if kept is None else kept
        if self.own_report:
            self.report.log()
        return records


class Row:
    """One record of a :class:`Source`: its index, its JSON object, and checks naming both in errors."""

    def __init__(self, source: Source, index: int, obj: dict):
        self.source, self.index, self.obj = source, index, obj

    def error(self, field_name: str | None, message: str) -> RecordError:
        return self.source.error(self.index, field_name, message)

    def get(self, name: str, kind: type, required: bool = True) -> Any:
        """``obj[name]`` checked against ``kind``; None when absent (or null) and not required.

        ``float`` accepts any number, ``int`` integers; neither accepts a boolean.
        """
        return self.check(self.obj.get(name), kind, name, required)

    def check(self, value: Any, kind: type, field_name: str, required: bool = True) -> Any:
        """``value`` (read from anywhere in the record) checked against ``kind`` as :meth:`get`
        checks a top-level field; errors name ``field_name``, the value's path in the record such as
        ``label.steps[3].chosen_completion``."""
        if value is None:
            if required:
                raise self.error(field_name, "missing required field")
            return None
        if not is_kind(value, kind):
            message = f"expected {_TYPE_NAMES[kind]}, got {type(value).__name__}: {value!r}"
            raise self.error(field_name, message)
        return value

    def get_path(self, dotted: str, kind: type, required: bool = True) -> Any:
        """A nested field by its dotted path (``question.problem``), checked like :meth:`get`. Each
        part before the last must be an object (else an error naming that part); an absent part
        makes the field absent."""
        value: Any = self.obj
        parts = dotted.split(".")
        for depth, part in enumerate(parts):
            if value is None:
                break
            if not isinstance(value, dict):
                where = ".".join(parts[:depth])
                raise self.error(where, f"expected an object, got {type(value).__name__}: {value!r}")
            value = value.get(part)
        return self.check(value, kind, dotted, required)

    def get_list(self, name: str, kind: type) -> list:
        """``obj[name]``, a required list whose items are all of ``kind``."""
        values = self.get(name, list)
        for position, value in enumerate(values):
            if not is_kind(value, kind):
                raise self.error(f"{name}[{position}]", f"expected {_TYPE_NAMES[kind]}, got {value!r}")
        return values

    def flag(self, name: str) -> int:
        """A 0/1 label given as a boolean (or the integers 0 / 1)."""
        value = self.obj.get(name)
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            return int(value)
        if value is None:
            raise self.error(name, "missing required field")
        raise self.error(name, f"expected true/false, got {value!r}")

    def unit_label(self, value: float, name: str) -> float:
        """``value`` as a float, checked to lie in [0, 1]."""
        if not 0.0 <= value <= 1.0:
            raise self.error(name, f"label {value!r} is outside [0, 1]")
        return float(value)

    def image_field(self, name: str, required: bool = False) -> list[str]:
        """The record's image paths as written, checked (resolved later, once the record is valid).

        Images given by content (bytes, or a ``datasets`` Image struct ``{"bytes", "path"}``, alone
        or in a list) are written to the image cache and stand as their cached file's path; a struct
        without bytes stands as its ``path``. Bytes that are not an image raise a
        :class:`RecordError` naming the field (``name[k]`` for the k-th image of a list).
        """
        value = self.obj.get(name)
        if holds_image_data(value):
            value = self._cached_images(value, name)
        paths = image_paths(value, self.source.path, self.index, name)
        if required and not paths:
            raise self.error(name, "missing required field")
        return paths

    def _cached_images(self, value: Any, name: str) -> Any:
        """``value`` with each image given by content replaced by its cached path."""
        items, single = (value, False) if isinstance(value, list) else ([value], True)
        converted = []
        for position, item in enumerate(items):
            try:
                converted.append(self.source.image_cache.image_path(item))
            except UndecodableImage as error:
                raise self.error(name if single else f"{name}[{position}]", str(error)) from None
        return converted[0] if single else converted

    def resolve(self, paths: list[str], name: str, weight: int = 1) -> list[str] | None:
        """:meth:`Source.resolve` for this record: resolved paths, or None when it is skipped."""
        return self.source.resolve(paths, self.index, name, weight)

    def record_id(self) -> str:
        """The record's ``id`` (a string or an integer) as a string; its index when it has none."""
        raw = self.obj.get("id")
        if raw is not None and (isinstance(raw, bool) or not isinstance(raw, (str, int))):
            raise self.error("id", f"expected a string or an integer, got {raw!r}")
        return str(self.index) if raw is None else str(raw)

    def unique_id(self, meta: dict) -> str:
        """:meth:`record_id`, made unique in the file (:meth:`Source.unique`)."""
        return self.source.unique(self.record_id(), meta)

    def skip(self, reason: str) -> None:
        """Count this record as left out for ``reason``; returns None (the record loop's "left out")."""
        self.source.report.skip(reason, f"record {self.index}")

    def no_steps(self, policy: str, field_name: str) -> None:
        """A record without steps: raise under ``policy="error"``, else skip it as ``no_steps``."""
        if policy == "error":
            raise self.error(field_name, "no steps found")
        self.skip("no_steps")
