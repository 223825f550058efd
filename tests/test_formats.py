"""The format registry and the shared record loop: a format registered outside the package is
detected and read, detection order is the priorities', skips are counted once, MM-PRM round trip."""

from __future__ import annotations

import json
import pkgutil
import sys
from pathlib import Path

import pytest

import prm.data.formats as formats_package
import prm.data.readers as readers
from prm.data.errors import RecordError, SkipReport
from prm.data.formats import registry
from prm.data.formats.mmprm import PRM_MARKER, read_mmprm, write_mmprm
from prm.data.formats.registry import detect_format, format_names, has_keys, read_records, register_format
from prm.data.formats.source import Row, Source
from prm.data.records import StepChain
from prm.data.sources import DataSources

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def isolated_registry(monkeypatch):
    """The registry as it is, restored after the test (formats registered here do not leak)."""
    monkeypatch.setattr(registry, "_FORMATS", dict(registry._FORMATS))


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def read_pairs(path, data_root=None, missing_image="error", report=None, *, allow_outside_paths=False):
    """A format of this test module: ``{"q": str, "a": [str], "ok": [bool]}`` -> step chains;
    records whose ``a`` is empty are left out as ``empty``."""
    source = Source(path, data_root, missing_image, report, allow_outside_paths=allow_outside_paths)

    def build(row: Row) -> StepChain | None:
        question = row.get("q", str)
        steps = row.get_list("a", str)
        labels = row.get_list("ok", bool)
        if not steps:
            return row.skip("empty")
        meta: dict = {}
        return StepChain(row.unique_id(meta), question, steps, [float(x) for x in labels], meta=meta)

    return source.read(build)


PAIRS = [
    {"q": "1 + 1?", "a": ["1 + 1 = 2"], "ok": [True]},
    {"q": "skip me", "a": [], "ok": []},
    {"id": 7, "q": "2 * 3?", "a": ["2 * 3 = 5", "so 5"], "ok": [False, False]},
    {"id": 7, "q": "again", "a": ["x"], "ok": [True]},
]


def test_the_built_in_formats_in_detection_order():
    assert format_names() == (
        "native",
        "conversations",
        "dreamprm_train",
        "bestofn",
        "mmprm",
        "prmbench",
        "mmprm_seeds",
        "prm800k",
        "visualprocessbench",
        "trl",
        "math_shepherd",
        "processbench",
        "dreamprm_meta",
    )
    assert readers.FORMATS == formats_package.FORMATS == format_names()
    modules = {entry.name: entry.module for entry in registry.registered_formats()}
    assert modules["dreamprm_meta"] == modules["dreamprm_train"] == "prm.data.formats.dreamprm"
    assert modules["mmprm_seeds"] == modules["mmprm"] == "prm.data.formats.mmprm"


def test_every_module_of_the_package_is_imported_with_it():
    # Registration is by import: a new module in prm/data/formats needs no table elsewhere.
    names = [module.name for module in pkgutil.iter_modules(formats_package.__path__)]
    assert {"dreamprm", "mmprm", "trl", "processbench", "registry", "source"} <= set(names)
    assert all(f"prm.data.formats.{name}" in sys.modules for name in names)


def test_a_format_registered_elsewhere_is_detected_and_read(tmp_path, isolated_registry):
    register_format("pairs", signature=has_keys("q", "a", "ok"), priority=5)(read_pairs)
    path = _write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    assert detect_format(path) == "pairs"
    assert format_names()[-1] == "pairs" and readers.FORMATS[-1] == "pairs"  # after dreamprm_meta (10)
    report = SkipReport(str(path))
    chains = read_records(path, report=report)
    assert chains == [
        StepChain("0", "1 + 1?", ["1 + 1 = 2"], [1.0]),
        StepChain("7", "2 * 3?", ["2 * 3 = 5", "so 5"], [0.0, 0.0]),
        StepChain("7#2", "again", ["x"], [1.0], meta={"source_id": "7"}),
    ]
    assert (report.read, report.kept, dict(report.skipped)) == (4, 3, {"empty": 1})
    assert report.examples == {"empty": "record 1"}


def test_a_data_config_selects_a_registered_format_by_name(tmp_path, isolated_registry):
    # What conf/data/<name>.yaml builds: `train_format: pairs` reaches the registry, no table between.
    register_format("pairs", signature=has_keys("q", "a", "ok"), priority=5)(read_pairs)
    path = _write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    sources = DataSources(name="pairs", train=str(path), train_format="pairs")
    assert [chain.id for chain in sources.load("train")] == ["0", "7", "7#2"]
    assert (sources.reports["train"].read, sources.reports["train"].kept) == (4, 3)


def test_an_unregistered_format_is_refused_with_the_registered_names(tmp_path):
    path = _write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    with pytest.raises(RecordError, match=r"cannot detect the format from keys \['a', 'ok', 'q'\]"):
        detect_format(path)
    with pytest.raises(ValueError, match=r"unknown format 'pairs'; expected 'auto' or one of \('native', "):
        read_records(path, "pairs")


def test_detection_follows_priority_then_name_not_registration_order(tmp_path, isolated_registry):
    path = _write_jsonl(tmp_path / "x.jsonl", [{"q": "?", "a": [], "ok": [], "extra": 1}])
    register_format("loose", signature=has_keys("q"), priority=6)(read_pairs)
    register_format("strict", signature=has_keys("q", "a", "extra"), priority=7)(read_pairs)
    assert detect_format(path) == "strict"  # registered last, tried first
    register_format("b_tie", signature=has_keys("extra"), priority=8)(read_pairs)
    register_format("a_tie", signature=has_keys("q"), priority=8)(read_pairs)
    assert detect_format(path) == "a_tie"  # equal priorities: name order
    assert format_names()[:2] == ("native", "conversations")
    assert format_names()[-5:] == ("dreamprm_meta", "a_tie", "b_tie", "strict", "loose")


def test_a_name_is_registered_once(isolated_registry):
    with pytest.raises(ValueError, match="format 'trl' is registered twice: by prm.data.formats.trl and "):
        register_format("trl", signature=has_keys("x"), priority=1)(read_pairs)


def test_the_record_loop_names_file_record_and_field(tmp_path):
    path = _write_jsonl(tmp_path / "bad.jsonl", [PAIRS[0], {"q": "?", "a": ["s", 3], "ok": [True, True]}])
    with pytest.raises(RecordError, match=r"bad\.jsonl, record 1, field 'a\[1\]': expected a string, got 3"):
        read_pairs(path)
    path = _write_jsonl(tmp_path / "list.jsonl", [PAIRS[0], [1, 2]])
    with pytest.raises(RecordError, match=r"list\.jsonl, record 1: expected a JSON object, got list"):
        read_pairs(path)


def test_the_record_loop_refuses_a_record_dropped_without_a_counted_reason(tmp_path):
    path = _write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    source = Source(path, report=SkipReport(str(path)))
    with pytest.raises(RuntimeError, match=r"pairs\.jsonl, record 0: left out with 0 skip reasons counted"):
        source.read(lambda row: None)

    def counts_and_keeps(row: Row) -> int:
        row.skip("oops")
        return row.index

    with pytest.raises(RuntimeError, match=r"record 0: kept with 1 skip reasons counted"):
        Source(path).read(counts_and_keeps)

    def counts_twice(row: Row) -> None:
        row.skip("one")
        row.skip("two")

    with pytest.raises(RuntimeError, match=r"record 0: left out with 2 skip reasons counted"):
        Source(path).read(counts_twice)


def test_the_record_loop_adds_to_a_shared_report(tmp_path):
    first = _write_jsonl(tmp_path / "a.jsonl", PAIRS)
    second = _write_jsonl(tmp_path / "b.jsonl", PAIRS[:2])
    report = SkipReport("both")
    assert len(read_pairs(first, report=report)) == 3
    assert len(read_pairs(second, report=report)) == 1
    assert (report.read, report.kept, dict(report.skipped)) == (6, 4, {"empty": 2})


def test_mmprm_writer_round_trips_through_the_reader(tmp_path):
    (tmp_path / "img").mkdir()
    for name in ("a.png", "b.png"):
        (tmp_path / "img" / name).write_bytes(b"")
    chains = [
        StepChain(
            "p-0", "How many?", ["Count: 2.", "So 2."], [1.0, 0.75], ["img/a.png"], meta={"answer": "2"}
        ),
        StepChain("p-1", "Text only", ["One step."], [0.0], meta={"answer": "x"}),
        StepChain("p-2", "Two images", ["Compare."], [0.5], ["img/a.png", "img/b.png"], meta={"answer": "y"}),
    ]
    path = tmp_path / "train_mmprm.jsonl"
    write_mmprm(path, chains)
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert lines[0] == {
        "id": "p-0",
        "question": "How many?",
        "answer": "2",
        "image_path": "img/a.png",
        "process": "Count: 2.<prm>So 2.<prm>",
        "labels": [1.0, 0.75],
    }
    assert [line["image_path"] for line in lines] == ["img/a.png", None, ["img/a.png", "img/b.png"]]
    read = read_mmprm(path)
    for chain in chains:
        chain.images = [str(tmp_path / image) for image in chain.images]
        chain.domain = "train_mmprm"
    assert read == chains


@pytest.mark.parametrize(
    "chain, message",
    [
        (StepChain("c", "q", ["a<prm>b"], [1.0]), r"chain 'c': step 0 contains the marker <prm>"),
        (StepChain("c", "q", ["a", "b"], [None, 1.0]), r"chain 'c': step 0 has no label"),
    ],
)
def test_mmprm_writer_refuses_what_the_format_cannot_hold(tmp_path, chain, message):
    with pytest.raises(ValueError, match=message):
        write_mmprm(tmp_path / "x.jsonl", [chain])
    assert not (tmp_path / "x.jsonl").exists()


def test_the_mmprm_marker_is_written_in_one_place():
    holders = [
        path.relative_to(ROOT).as_posix()
        for path in sorted((ROOT / "prm").rglob("*.py"))
        if f'"{PRM_MARKER}"' in path.read_text(encoding="utf-8")
    ]
    assert holders == ["prm/data/formats/mmprm.py"]
