"""Where the records of a data path come from: JSON, JSON Lines, Parquet and ``datasets`` folders.

:func:`iter_records` yields the records of any of these, one at a time, so a reader never holds a
file twice (once raw, once as records). Every format reader gets all of them through
:class:`prm.data.formats.source.Source`; the path decides:

- a ``.parquet`` file: read with pyarrow (the engine of Hugging Face ``datasets``), in batches of
  :data:`BATCH_ROWS` rows of its row groups, each row a dict;
- a folder written by ``Dataset.save_to_disk`` (``state.json``, ``dataset_info.json``, Arrow
  shards): ``datasets.load_from_disk``, memory-mapped, read in batches;
- a folder written by ``DatasetDict.save_to_disk`` (``dataset_dict.json`` and one folder per
  split): its one split, or the split named in the path, ``<folder>/<split>`` (which is also the
  split's own folder);
- any other folder, e.g. a Hugging Face Hub snapshot (``data/train-00000-of-00001.parquet``,
  ``README.md`` with ``configs``): ``datasets.load_dataset(<folder>, streaming=True)``, which reads
  the files lazily, offline, without a converted copy in the ``datasets`` cache. Its splits come from
  the file names (``train-*``, ``test-*``, ...) or the card's ``configs``; a folder with several is
  read as ``<folder>/<split>``, a path that does not exist but names a split of its parent folder;
- any other file: a JSON array (told apart by its first character ``[``; parsed whole, since a JSON
  array cannot be parsed in parts) or JSON Lines (parsed line by line; blank lines ignored).

A folder with several splits and no split in its path is an error listing the splits. Rows of
Parquet and ``datasets`` sources keep their column types (a ``datasets`` Image column stays the
struct ``{"bytes", "path"}``, undecoded: the readers turn it into a cached path,
:mod:`prm.data.image_cache`), except that JSON text of the ``datasets`` ``Json`` feature (objects
whose keys vary between rows) is decoded back into objects. Arrow fills a struct's absent keys with
null, which the readers treat as absent.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

from prm.data.errors import RecordError

BATCH_ROWS = 256  # rows of a Parquet / Arrow source turned into Python objects at a time
PARQUET_SUFFIXES = (".parquet",)


def iter_records(path: str | Path) -> Iterator[Any]:
    """The records of ``path`` (see the module docstring), one at a time, in file order.

    Raises :class:`RecordError` naming the path for invalid JSON (with the line and the record
    index), a file pyarrow cannot read as Parquet, a folder ``datasets`` cannot read, and a folder
    whose split is not given when it has several (the message lists them).
    """
    path = Path(path)
    if path.is_dir() or _split_of_parent(path) is not None:
        return _dataset_records(path)
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return _parquet_records(path)
    return _json_records(path)


def input_exists(path: str | Path) -> bool:
    """Whether ``path`` is a file, a folder, or ``<folder>/<split>`` (a split of an existing folder)."""
    path = Path(path)
    return path.exists() or _split_of_parent(path) is not None


def first_record(path: str | Path) -> Any:
    """The first record (None when there is none), reading no more of the source than it needs
    (all of a JSON array file)."""
    with closing(iter_records(path)) as records:
        return next(records, None)


def load_json_records(path: str | Path) -> list[Any]:
    """The records of a JSON array file or a JSON Lines file (told apart by the first character).

    Blank lines of a JSON Lines file are ignored. Raises :class:`RecordError` for invalid JSON (with
    the line number and the index of the record it would have been).
    """
    return list(_json_records(Path(path)))


# --------------------------------------------------------------------------- JSON and JSON Lines


def _json_records(path: Path) -> Iterator[Any]:
    with open(path, encoding="utf-8") as handle:
        lines = enumerate(handle, start=1)
        first = next(((number, line) for number, line in lines if line.strip()), None)
        if first is None:
            return
        if first[1].lstrip().startswith("["):
            try:
                records = json.loads(first[1] + handle.read())
            except json.JSONDecodeError as error:
                raise RecordError(path, None, None, f"invalid JSON array: {error}") from None
            yield from records
            return
        index = 0
        for number, line in itertools.chain([first], lines):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise RecordError(path, index, None, f"invalid JSON on line {number}: {error}") from None
            index += 1
            yield record


# --------------------------------------------------------------------------- Parquet


def _parquet_records(path: Path) -> Iterator[dict]:
    import pyarrow
    import pyarrow.parquet as parquet

    try:
        source = parquet.ParquetFile(path)
    except (pyarrow.ArrowException, OSError) as error:
        raise RecordError(path, None, None, f"cannot read as a Parquet file: {error}") from None
    with closing(source):
        yield from _arrow_rows(source.iter_batches(batch_size=BATCH_ROWS))


def _arrow_rows(batches: Iterator[Any]) -> Iterator[dict]:
    """The rows of pyarrow record batches / tables as dicts, JSON-typed values decoded."""
    decoders: dict[str, Callable[[Any], Any]] | None = None
    for batch in batches:
        if decoders is None:
            decoders = {}
            for field in batch.schema:
                decoder = _json_decoder(field.type)
                if decoder is not None:
                    decoders[field.name] = decoder
        for row in batch.to_pylist():
            for name, decode in decoders.items():
                row[name] = decode(row[name])
            yield row


def _json_decoder(arrow_type: Any) -> Callable[[Any], Any] | None:
    """How to decode a value of ``arrow_type`` holding JSON text anywhere inside it, or None when it
    holds none. ``datasets`` (5.x) stores objects whose keys vary between rows (PRM800K's
    ``question``) as JSON text in the Arrow ``arrow.json`` extension type (its ``Json`` feature);
    Parquet keeps the type, so they come back as strings unless decoded."""
    import pyarrow

    if isinstance(arrow_type, pyarrow.JsonType):
        return lambda value: None if value is None else json.loads(value)
    if pyarrow.types.is_list(arrow_type) or pyarrow.types.is_large_list(arrow_type):
        inner = _json_decoder(arrow_type.value_type)
        if inner is None:
            return None
        return lambda value: None if value is None else [inner(item) for item in value]
    if pyarrow.types.is_struct(arrow_type):
        fields = {}
        for index in range(arrow_type.num_fields):
            decoder = _json_decoder(arrow_type.field(index).type)
            if decoder is not None:
                fields[arrow_type.field(index).name] = decoder
        if not fields:
            return None

        def decode_struct(value: Any) -> Any:
            if value is None:
                return None
            return {key: fields[key](item) if key in fields else item for key, item in value.items()}

        return decode_struct
    return None


# --------------------------------------------------------------------------- datasets folders


def _is_saved_dataset(folder: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def _looks_like_dataset(folder: Path) -> bool:
    """A saved dataset, or a folder laid out like a Hub snapshot: a ``README.md`` (the dataset
    card), a ``data`` folder, or Parquet files of its own."""
    if not folder.is_dir():
        return False
    if _is_saved_dataset(folder) or (folder / "README.md").is_file() or (folder / "data").is_dir():
        return True
    return any(folder.glob("*.parquet"))


def _split_of_parent(path: Path) -> str | None:
    """The split named by ``path`` when it does not exist and its parent looks like a dataset folder
    (:func:`_looks_like_dataset`): its last part, a name without a suffix (``train``, ``test``,
    ...); None otherwise (so a mistyped file name stays "no such file")."""
    if path.exists() or path.suffix or not path.name or not _looks_like_dataset(path.parent):
        return None
    return path.name


def _open_dataset(path: Path) -> Any:
    """The ``datasets`` Dataset / IterableDataset at ``path`` (a folder, or ``<folder>/<split>``)."""
    import datasets

    split = _split_of_parent(path)
    folder = path.parent if split is not None else path
    try:
        if _is_saved_dataset(folder):
            loaded = datasets.load_from_disk(str(folder))
        else:
            loaded = datasets.load_dataset(str(folder), streaming=True)
    except Exception as error:  # datasets raises many types (FileNotFoundError, DataFilesNotFoundError, ...)
        message = f"cannot read as a Hugging Face dataset folder: {type(error).__name__}: {error}"
        raise RecordError(path, None, None, message) from None
    if isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        splits = sorted(loaded)
        if split is None and len(splits) == 1:
            return loaded[splits[0]]
        if split is None or split not in loaded:
            what = "has splits" if split is None else f"has no split {split!r}; its splits are"
            example = folder / splits[0]
            message = f"the dataset folder {what} {splits}: name one as <folder>/<split>, e.g. {example}"
            raise RecordError(path, None, None, message)
        return loaded[split]
    if split is not None:
        raise RecordError(path, None, None, f"no such file; {folder} is a dataset without splits")
    return loaded


def _dataset_records(path: Path) -> Iterator[dict]:
    dataset = _open_dataset(path)
    # The Arrow format hands out pyarrow tables: no feature decoding (an Image column stays bytes).
    yield from _arrow_rows(dataset.with_format("arrow").iter(batch_size=BATCH_ROWS))
