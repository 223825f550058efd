"""Readers of published PRM formats: exact contents, malformed records, missing images, detection."""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path

import pytest
from PIL import Image

from prm.data.errors import RecordError, SkipReport
from prm.data.images import load_image, resolve_images
from prm.data.native import write_native
from prm.data.readers import (
    FORMATS,
    SeedProblem,
    detect_format,
    load_json_records,
    read_bestofn_test,
    read_conversations,
    read_dreamprm_meta,
    read_dreamprm_train,
    read_mmprm,
    read_mmprm_seeds,
    read_processbench,
    read_records,
    read_trl,
)
from prm.data.records import BestOfNProblem, Candidate, LabelledChain, StepChain

FIXTURES = Path(__file__).parent / "fixtures"
PUBLISHED = FIXTURES / "published"
OWN = FIXTURES / "formats"
DREAMPRM_META = PUBLISHED / "dreamprm_meta_sample.json"
DREAMPRM15_META = PUBLISHED / "dreamprm15_meta_sample.json"
PROCESSBENCH = PUBLISHED / "processbench_gsm8k_sample.json"


def _images(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), "white").save(root / name)


def _write(path: Path, records: list, jsonl: bool = False) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in records) if jsonl else json.dumps(records)
    path.write_text(text, encoding="utf-8")
    return path


def _own(name: str) -> list[dict]:
    return load_json_records(OWN / name)


# --------------------------------------------------------------------------- loading and detection


def test_json_array_and_json_lines_load_the_same(tmp_path):
    records = _own("mmprm_train.jsonl")
    (tmp_path / "lines").mkdir()
    array = _write(tmp_path / "train.json", records)
    lines = _write(tmp_path / "lines" / "train.json", records, jsonl=True)
    lines.write_text("\n" + lines.read_text() + "\n\n")  # blank lines are ignored
    assert load_json_records(array) == load_json_records(lines) == records
    assert read_mmprm(array, missing_image="blank") == read_mmprm(lines, missing_image="blank")


def test_invalid_json_names_file_and_record(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(RecordError, match=r"bad\.jsonl, record 1: invalid JSON on line 2") as caught:
        load_json_records(path)
    assert (caught.value.index, caught.value.field) == (1, None)


@pytest.mark.parametrize(
    "path, expected",
    [
        (OWN / "dreamprm_train.json", "dreamprm_train"),
        (DREAMPRM_META, "dreamprm_meta"),
        (DREAMPRM15_META, "conversations"),
        (OWN / "visualprm_train.jsonl", "conversations"),
        (OWN / "bestofn_test.json", "bestofn"),
        (OWN / "mmprm_train.jsonl", "mmprm"),
        (OWN / "mmprm_seeds.json", "mmprm_seeds"),
        (OWN / "trl_stepwise.jsonl", "trl"),
        (OWN / "prm800k.jsonl", "prm800k"),
        (OWN / "math_shepherd.jsonl", "math_shepherd"),
        (PROCESSBENCH, "processbench"),
    ],
)
def test_detect_format(path, expected):
    assert detect_format(path) == expected


def test_detect_native_and_read_through_read_records(tmp_path):
    _images(tmp_path, "img/a.png")
    chain = StepChain(id="c", question="q", steps=["s"], labels=[1.0], images=["img/a.png"])
    lost = StepChain(id="d", question="q", steps=["s"], labels=[0.5], images=["img/gone.png"])
    path = tmp_path / "native.jsonl"
    write_native(path, [chain, lost])
    assert detect_format(path) == "native"
    report = SkipReport(str(path))
    records = read_records(path, missing_image="skip", report=report)
    assert [r.id for r in records] == ["c"]
    assert records[0].images == [str(tmp_path / "img/a.png")]
    assert (report.read, report.kept, dict(report.skipped)) == (2, 1, {"missing_image": 1})


def test_formats_cover_every_reader():
    assert set(FORMATS) == {
        "native",
        "dreamprm_train",
        "dreamprm_meta",
        "conversations",
        "bestofn",
        "mmprm",
        "mmprm_seeds",
        "prm800k",
        "trl",
        "math_shepherd",
        "processbench",
        "prmbench",
        "visualprocessbench",
    }


def test_detect_format_failures_name_the_file(tmp_path):
    expected = r"odd\.json, record 0: cannot detect the format from keys \['x', 'y'\]"
    with pytest.raises(RecordError, match=expected):
        detect_format(_write(tmp_path / "odd.json", [{"x": 1, "y": 2}]))
    with pytest.raises(RecordError, match="empty file"):
        detect_format(_write(tmp_path / "empty.jsonl", []))


def test_read_records_auto_equals_explicit_reader_and_passes_options():
    auto = read_records(OWN / "visualprm_train.jsonl", missing_image="blank", domain="vqa")
    explicit = read_conversations(OWN / "visualprm_train.jsonl", missing_image="blank", domain="vqa")
    assert auto == explicit and auto[0].domain == "vqa"
    with pytest.raises(ValueError, match="unknown format 'csv'"):
        read_records(OWN / "trl_stepwise.jsonl", format="csv")


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="missing_image must be one of"):
        read_trl(OWN / "trl_stepwise.jsonl", missing_image="ignore")
    with pytest.raises(ValueError, match="kind must be one of"):
        read_conversations(OWN / "visualprm_train.jsonl", kind="test")
    with pytest.raises(ValueError, match="no_steps must be one of"):
        read_dreamprm_meta(DREAMPRM_META, no_steps="drop")


# --------------------------------------------------------------------------- DreamPRM train


def test_dreamprm_train_groups_prefixes_into_chains(tmp_path):
    _images(tmp_path, "images/chart7.png", "images/cell9.png", "images/shapes.png")
    report = SkipReport("train")
    chains = read_dreamprm_train(OWN / "dreamprm_train.json", data_root=tmp_path, report=report)
    assert [c.id for c in chains] == ["7", "9", "6"]
    seven, nine, solo = chains
    # id 7: ordered by sid (file order is 2, 1, 3, 4); steps are what each cumulative add adds.
    assert seven.steps == ["Step 1: Read the axis.", "Step 2: The tallest bar is C.", "Step 3: C reads 12."]
    assert seven.labels == [0.75, 0.5, 0.25]
    assert seven.meta == {"sids": [1, 2, 3], "ground_truth": "12"}
    assert seven.domain == "chartqa"
    assert seven.question.endswith("What is the value of the tallest bar?")
    assert seven.images == [str(tmp_path / "images/chart7.png")]
    # id 9: no sid, file order, interleaved with id 7 in the file.
    assert nine.steps == ["Step 1: Find the cell.", "Step 2: Arrow A points at the wall."]
    assert nine.labels == [1.0, 0.0]
    assert nine.domain == "ai2d" and nine.meta == {"ground_truth": "B"}
    # A record without id is a chain of its own, named by its index.
    assert (solo.id, solo.steps, solo.labels) == ("6", ["Step 1: Count them: 3."], [0.6363])
    assert (solo.domain, solo.meta) == ("geo170k", {})
    # Counts are prefix records: 7 read, 6 in chains, 1 empty prefix (sid 4, add "").
    assert (report.read, report.kept, dict(report.skipped)) == (7, 6, {"empty_prefix": 1})
    assert report.examples["empty_prefix"] == "record 5"


def test_dreamprm_train_missing_images_under_each_policy():
    path = OWN / "dreamprm_train.json"
    with pytest.raises(RecordError) as caught:
        read_dreamprm_train(path)
    error = caught.value
    assert (error.path, error.index, error.field) == (str(path), 0, "image_path")
    assert "image not found" in str(error) and "chart7.png" in str(error)
    skip = SkipReport("train")
    assert read_dreamprm_train(path, missing_image="skip", report=skip) == []
    # A skipped chain counts all its prefixes: 3 + 2 + 1, plus the empty prefix.
    assert (skip.read, skip.kept, dict(skip.skipped)) == (7, 0, {"missing_image": 6, "empty_prefix": 1})
    blank = SkipReport("train")
    chains = read_dreamprm_train(path, missing_image="blank", report=blank)
    assert [len(c.steps) for c in chains] == [3, 2, 1] and all(c.images == [] for c in chains)
    assert (blank.read, blank.kept, dict(blank.skipped)) == (7, 6, {"empty_prefix": 1})
    assert dict(blank.changed) == {"blank_image": 6}


def _train_records() -> list[dict]:
    return copy.deepcopy(_own("dreamprm_train.json"))


def _break(records: list[dict], index: int, **changes) -> list[dict]:
    for key, value in changes.items():
        if value is KeyError:
            del records[index][key]
        else:
            records[index][key] = value
    return records


@pytest.mark.parametrize(
    "index, changes, field, message",
    [
        (2, {"accuracy": 1.5}, "accuracy", "outside [0, 1]"),
        (2, {"accuracy": "0.75"}, "accuracy", "expected a number, got str"),
        (2, {"accuracy": True}, "accuracy", "expected a number, got bool"),
        (2, {"accuracy": 0.7}, "accuracy", "accuracy 0.7 != score / times = 6/8"),
        (4, {"score": 9}, "times", "need 0 <= score <= times"),
        (1, {"dataset": KeyError}, "dataset", "missing required field"),
        (6, {"add": KeyError}, "add", "missing required field"),
        (6, {"image_path": None}, "image_path", "missing required field"),
        (6, {"image_path": 3}, "image_path", "expected a path or a list of paths"),
        (4, {"sid": 2}, "sid", "sid 2 repeated in id '7'"),
        (4, {"sid": KeyError}, "sid", "some prefixes of id '7' have a sid"),
        (4, {"input": "another question"}, "input", "differs from record 0"),
        (3, {"image_path": "images/other.png"}, "image_path", "differs from record 1"),
    ],
)
def test_dreamprm_train_malformed(tmp_path, index, changes, field, message):
    path = _write(tmp_path / "train.json", _break(_train_records(), index, **changes))
    with pytest.raises(RecordError) as caught:
        read_dreamprm_train(path, missing_image="blank")
    assert (caught.value.index, caught.value.field) == (index, field)
    assert message in caught.value.message
    assert str(caught.value).startswith(f"{path}, record {index}, field {field!r}: ")


def test_dreamprm_train_accuracy_tolerance_accepts_rounded_values(tmp_path):
    records = _break(_train_records(), 6, score=7, times=11)  # accuracy 0.6363 vs 7/11 = 0.63636...
    chains = read_dreamprm_train(_write(tmp_path / "t.json", records), missing_image="blank")
    assert chains[2].labels == [0.6363]


def test_dreamprm_train_per_step_adds_are_taken_whole(tmp_path):
    records = [
        {
            "id": 1,
            "sid": sid,
            "input": "Q",
            "add": f"Step {sid}: part {sid}.",
            "image_path": "x.png",
            "dataset": "d",
            "accuracy": 1.0,
        }
        for sid in (1, 2)
    ]
    (chain,) = read_dreamprm_train(_write(tmp_path / "t.json", records), missing_image="blank")
    assert chain.steps == ["Step 1: part 1.", "Step 2: part 2."]


# --------------------------------------------------------------------------- DreamPRM meta


def test_dreamprm_meta_real_sample_blank_policy():
    report = SkipReport("meta")
    chains = read_dreamprm_meta(DREAMPRM_META, missing_image="blank", report=report)
    assert len(chains) == 10 and all(isinstance(c, LabelledChain) for c in chains)
    assert [c.id for c in chains] == ["2", "3", "5", "12", "27", "28", "30", "33", "34", "35"]
    assert all(c.label == 1 and len(c.steps) == 5 and c.images == [] for c in chains)
    assert [c.final_answer for c in chains] == ["B", "D", "B", "D", "C", "C", "C", "A", "A", "B"]
    first = chains[0]
    assert first.question == (
        "Question: The following diagram shows the bacteriorhodopsin protein.This "
        "protein have quaternary structure.\nOptions: (A) True (B) False"
    )
    assert first.steps[4].startswith("Step 5: Summarize and conclude with all the information.")
    assert first.domain == "dreamprm_meta_sample"
    # The 5 question-only records are counted, never silently dropped; blanking is counted too.
    assert (report.read, report.kept) == (15, 10)
    assert dict(report.skipped) == {"no_steps": 5}
    assert dict(report.changed) == {"blank_image": 10}
    assert report.examples["no_steps"] == "record 10"


def test_dreamprm_meta_missing_images_error_and_skip():
    with pytest.raises(RecordError) as caught:
        read_dreamprm_meta(DREAMPRM_META)
    assert (caught.value.index, caught.value.field) == (0, "image_path")
    assert str(caught.value).startswith(f"{DREAMPRM_META}, record 0, field 'image_path': image not found: ")
    report = SkipReport("meta")
    assert read_dreamprm_meta(DREAMPRM_META, missing_image="skip", report=report) == []
    assert (report.read, report.kept, dict(report.skipped)) == (15, 0, {"missing_image": 10, "no_steps": 5})


def test_dreamprm_meta_with_images_under_data_root(tmp_path):
    ids = [2, 3, 5, 12, 27, 28, 30, 33, 34, 35]
    _images(tmp_path, *[f"dataset/MMMU/images/test/{i}.png" for i in ids])
    chains = read_dreamprm_meta(DREAMPRM_META, data_root=tmp_path)
    assert [c.images for c in chains] == [[str(tmp_path / f"dataset/MMMU/images/test/{i}.png")] for i in ids]


def test_dreamprm_meta_no_steps_can_be_an_error():
    with pytest.raises(RecordError, match=r"record 10, field 'input': no steps found"):
        read_dreamprm_meta(DREAMPRM_META, missing_image="blank", no_steps="error")


@pytest.mark.parametrize(
    "changes, field, message",
    [
        ({"true_false": "yes"}, "true_false", "expected true/false"),
        ({"true_false": KeyError}, "true_false", "missing required field"),
        ({"input": KeyError}, "input", "missing required field"),
        ({"image_path": KeyError}, "image_path", "missing required field"),
        ({"id": [1]}, "id", "expected a string or an integer"),
    ],
)
def test_dreamprm_meta_malformed(tmp_path, changes, field, message):
    records = _break(load_json_records(DREAMPRM_META)[:3], 1, **changes)
    with pytest.raises(RecordError) as caught:
        read_dreamprm_meta(_write(tmp_path / "meta.json", records), missing_image="blank")
    assert (caught.value.index, caught.value.field) == (1, field) and message in caught.value.message


# --------------------------------------------------------------------------- conversations


def test_dreamprm15_meta_real_sample(tmp_path):
    report = SkipReport("meta15")
    # Its paths are "../data/meta_images/x.png": under a root named "data" they stay inside it.
    root = tmp_path / "data"
    chains = read_conversations(DREAMPRM15_META, root, missing_image="blank", report=report)
    raw = load_json_records(DREAMPRM15_META)
    assert len(chains) == 20 and all(isinstance(c, LabelledChain) for c in chains)
    assert [c.label for c in chains] == [int(r["true_false"]) for r in raw]
    for chain, record in zip(chains, raw):
        assert chain.steps == [t["value"] for t in record["conversations"][2:] if t["from"] == "human"]
        assert chain.question == record["conversations"][1]["value"][len("### Question:\n") :].strip()
        assert chain.final_answer == record["response"].split("Answer:")[-1].strip()
    assert [len(c.steps) for c in chains[:4]] == [1, 4, 2, 1]
    assert chains[0].question.startswith("Question: <image 1> of Louis Black")
    # Two records repeat earlier ids: suffixed, original kept.
    assert [c.id for c in chains[12:14]] == ["test_History_134#2", "test_Literature_19#2"]
    assert chains[12].meta == {"source_id": "test_History_134"}
    assert len({c.id for c in chains}) == 20
    assert (report.read, report.kept, dict(report.skipped)) == (20, 20, {})
    assert dict(report.changed) == {"blank_image": 20}


def test_dreamprm15_meta_images_resolve_against_the_file_folder(tmp_path):
    # Published paths are "../data/meta_images/x.png": relative to the data file's own folder.
    data = tmp_path / "data"
    data.mkdir()
    raw = load_json_records(DREAMPRM15_META)
    path = _write(data / "meta.json", raw)
    _images(data, *[f"meta_images/{r['id']}.png" for r in raw])
    chains = read_conversations(path)
    assert chains[0].images == [str(data / "meta_images/test_Art_113.png")]


def test_dreamprm15_meta_missing_image_policies():
    with pytest.raises(RecordError, match=r"record 0, field 'image': image not found: .*test_Art_113\.png"):
        read_conversations(DREAMPRM15_META, allow_outside_paths=True)
    report = SkipReport("meta15")
    assert (
        read_conversations(DREAMPRM15_META, allow_outside_paths=True, missing_image="skip", report=report)
        == []
    )
    assert dict(report.skipped) == {"missing_image": 20}


def test_conversations_kind_train_uses_the_marks():
    chains = read_conversations(
        DREAMPRM15_META, allow_outside_paths=True, missing_image="blank", kind="train"
    )
    assert all(isinstance(c, StepChain) for c in chains)
    assert [c.labels for c in chains[:3]] == [[1.0], [1.0] * 4, [1.0] * 2]


def test_visualprm_training_conversations(tmp_path):
    _images(tmp_path, "images/vp0.png", "images/vp1a.png", "images/vp1b.png")
    chains = read_conversations(OWN / "visualprm_train.jsonl", data_root=tmp_path)
    assert [type(c) for c in chains] == [StepChain, StepChain]
    first, second = chains
    assert first.question == "What is 2 + 3?"
    assert first.steps == ["Add 2 and 3.", "2 + 3 = 6.", "Answer: 6"]
    assert first.labels == [1.0, 0.0, 0.0]
    assert (first.id, first.domain) == ("vp-0", "visualprm_train")
    assert second.question == "Do both images show a cat?"
    assert (second.steps, second.labels) == (["Both images show a cat."], [1.0])
    assert second.images == [str(tmp_path / "images/vp1a.png"), str(tmp_path / "images/vp1b.png")]


def test_visualprm_multi_image_record_loses_all_images_when_one_is_missing(tmp_path):
    _images(tmp_path, "images/vp0.png", "images/vp1a.png")
    report = SkipReport("vp")
    chains = read_conversations(
        OWN / "visualprm_train.jsonl", data_root=tmp_path, missing_image="blank", report=report
    )
    assert [c.images for c in chains] == [[str(tmp_path / "images/vp0.png")], []]
    assert dict(report.changed) == {"blank_image": 1}
    assert report.examples["blank_image"] == f"record 1: {tmp_path / 'images/vp1b.png'}"


def _conversation(*turns: tuple[str, str], **extra) -> dict:
    return {"id": "x", "conversations": [{"from": role, "value": value} for role, value in turns], **extra}


Q = ("human", "### Question:\nWhat?")


@pytest.mark.parametrize(
    "record, field, message",
    [
        (
            _conversation(Q, ("human", "s1"), ("gpt", "yes")),
            "conversations[2]",
            "exactly '+' or '-', got 'yes'",
        ),
        (
            _conversation(Q, ("human", "s1"), ("gpt", "+ ")),
            "conversations[2]",
            "exactly '+' or '-', got '+ '",
        ),
        (
            _conversation(Q, ("human", "s1"), ("human", "s2"), ("gpt", "+")),
            "conversations[2]",
            "two step turns",
        ),
        (_conversation(Q, ("gpt", "+")), "conversations[1]", "gpt turn without a step"),
        (_conversation(Q, ("human", "s1")), "conversations[1]", "last step has no gpt"),
        (
            _conversation(("system", "sys"), ("human", "What?"), ("human", "s"), ("gpt", "+")),
            "conversations[1]",
            "must be human and start with '### Question:'",
        ),
        (_conversation(Q, ("human", "  "), ("gpt", "+")), "conversations[1]", "empty step"),
        (_conversation(Q, ("assistant", "s")), "conversations[1]", "expected {from: system|human|gpt"),
        ({"id": "x"}, "conversations", "missing required field"),
        (
            _conversation(Q, ("human", "s1"), ("gpt", "+"), true_false="no"),
            "true_false",
            "expected true/false",
        ),
        (
            _conversation(Q, ("human", "s1"), ("gpt", "+"), image=["a.png", ""]),
            "image",
            "image 1 is not a non-empty",
        ),
    ],
)
def test_conversations_malformed(tmp_path, record, field, message):
    valid = _conversation(Q, ("human", "ok"), ("gpt", "+"))
    path = _write(tmp_path / "conv.jsonl", [valid, record], jsonl=True)
    with pytest.raises(RecordError) as caught:
        read_conversations(path, missing_image="blank")
    assert (caught.value.index, caught.value.field) == (1, field)
    assert message in caught.value.message


def test_conversations_kind_meta_needs_true_false(tmp_path):
    path = _write(tmp_path / "conv.json", [_conversation(Q, ("human", "s"), ("gpt", "+"))])
    with pytest.raises(RecordError, match=r"record 0, field 'true_false': missing required field"):
        read_conversations(path, kind="meta")


def test_conversations_without_steps_are_counted(tmp_path):
    path = _write(tmp_path / "conv.json", [_conversation(Q), _conversation(Q, ("human", "s"), ("gpt", "-"))])
    report = SkipReport("conv")
    chains = read_conversations(path, report=report)
    assert [c.labels for c in chains] == [[0.0]]
    assert (report.read, report.kept, dict(report.skipped)) == (2, 1, {"no_steps": 1})
    with pytest.raises(RecordError, match=r"record 0, field 'conversations': no steps found"):
        read_conversations(path, no_steps="error")


# --------------------------------------------------------------------------- best-of-N test


def test_bestofn_test_file(tmp_path):
    _images(tmp_path, "images/b1.png")
    first, second = read_bestofn_test(OWN / "bestofn_test.json", data_root=tmp_path)
    assert isinstance(first, BestOfNProblem)
    assert (first.id, first.question, first.images) == (
        "mmmu-1",
        "Which bar is tallest?\nOptions: (A) A (B) B (C) C",
        [str(tmp_path / "images/b1.png")],
    )
    assert first.candidates == [
        Candidate(["Look at the chart.", "The bar for B is tallest.", "Answer: B"], "B", True),
        Candidate(["The chart shows A as tallest.", "So the answer is A.", "Answer: A"], "A", False),
        Candidate(["Answer: C"], "C", False),
        Candidate([], None, False),
    ]
    assert (second.id, second.images, [c.final_answer for c in second.candidates]) == ("1", [], ["4", "5"])
    assert [c.correct for c in second.candidates] == [True, False]


def test_bestofn_missing_image_policies():
    with pytest.raises(RecordError, match=r"record 0, field 'image_path': image not found"):
        read_bestofn_test(OWN / "bestofn_test.json")
    report = SkipReport("test")
    problems = read_bestofn_test(OWN / "bestofn_test.json", missing_image="skip", report=report)
    assert [p.id for p in problems] == ["1"]  # the text-only problem has no image to miss
    assert (report.read, report.kept, dict(report.skipped)) == (2, 1, {"missing_image": 1})


@pytest.mark.parametrize(
    "changes, field, message",
    [
        ({"true_false": [True]}, "true_false", "1 labels for 2 candidates"),
        ({"candidates": ["a", 3]}, "candidates[1]", "expected a string, got 3"),
        ({"true_false": [True, "false"]}, "true_false[1]", "expected a boolean"),
        ({"candidates": [], "true_false": []}, "candidates", "no candidates"),
        ({"question": KeyError}, "question", "missing required field"),
    ],
)
def test_bestofn_malformed(tmp_path, changes, field, message):
    records = _break(copy.deepcopy(_own("bestofn_test.json")), 1, **changes)
    with pytest.raises(RecordError) as caught:
        read_bestofn_test(_write(tmp_path / "t.json", records), missing_image="blank")
    assert (caught.value.index, caught.value.field) == (1, field) and message in caught.value.message


# --------------------------------------------------------------------------- MM-PRM


def test_mmprm_training_file(tmp_path):
    _images(tmp_path, "images/m0.png", "images/m1.png")
    first, second = read_mmprm(OWN / "mmprm_train.jsonl", data_root=tmp_path)
    assert first.steps == ["The sides are 3 and 4.", "Area = 3 * 4 = 12.", "The answer is 12."]
    assert first.labels == [1.0, 0.875, 0.5]
    assert (first.id, first.question, first.meta) == (
        "0",
        "<image>\nWhat is the area of the rectangle?",
        {"answer": "12"},
    )
    assert (second.id, second.steps, second.labels) == ("m-1", ["x + 1 = 6.", "So x = 4."], [0.25, 0.0])
    assert second.images == [str(tmp_path / "images/m1.png")]


@pytest.mark.parametrize(
    "changes, field, message",
    [
        ({"labels": [0.25]}, "labels", "1 labels for 2 <prm> markers"),
        ({"labels": [0.25, 1.5]}, "labels[1]", "outside [0, 1]"),
        ({"labels": [0.25, None]}, "labels[1]", "expected a number"),
        ({"process": "x + 1 = 6.<prm>So x = 4.<prm>trailing"}, "process", "text after the last <prm>"),
        ({"process": "x + 1 = 6.<prm> <prm>"}, "process", "step 1 is empty"),
        ({"process": "no markers", "labels": []}, "process", "no <prm> marker"),
        ({"process": KeyError}, "process", "missing required field"),
    ],
)
def test_mmprm_malformed(tmp_path, changes, field, message):
    records = _break(_own("mmprm_train.jsonl"), 1, **changes)
    with pytest.raises(RecordError) as caught:
        read_mmprm(_write(tmp_path / "m.jsonl", records, jsonl=True), missing_image="blank")
    assert (caught.value.index, caught.value.field) == (1, field) and message in caught.value.message


def test_mmprm_seeds(tmp_path):
    report = SkipReport("seeds")
    seeds = read_mmprm_seeds(OWN / "mmprm_seeds.json", missing_image="skip", report=report)
    assert seeds == [SeedProblem(id="seed-2", question="What is 6 * 7?", correct_answer="42", images=[])]
    assert dict(report.skipped) == {"missing_image": 1}
    _images(tmp_path, "images/s1.png")
    seeds = read_mmprm_seeds(OWN / "mmprm_seeds.json", data_root=tmp_path)
    assert [(s.id, s.correct_answer, s.images) for s in seeds] == [
        ("seed-1", "B", [str(tmp_path / "images/s1.png")]),
        ("seed-2", "42", []),
    ]
    broken = _break(_own("mmprm_seeds.json"), 1, correct_answer=KeyError)
    with pytest.raises(RecordError, match=r"record 1, field 'correct_answer': expected a string or a number"):
        read_mmprm_seeds(_write(tmp_path / "s.json", broken), data_root=tmp_path)


# --------------------------------------------------------------------------- text-only formats


def test_trl_stepwise():
    first, second = read_trl(OWN / "trl_stepwise.jsonl")
    assert first.question == "Which number is larger, 9.11 or 9.9?"
    assert (len(first.steps), first.labels, first.images) == (2, [1.0, 1.0], [])
    assert second.steps[2] == "So 15% of 80 is 8 + 4 = 14."
    assert (second.id, second.labels, second.domain) == ("1", [1.0, 1.0, 0.0], "trl_stepwise")


@pytest.mark.parametrize(
    "changes, field, message",
    [
        ({"labels": [True, 1, False]}, "labels[1]", "expected a boolean, got 1"),
        ({"labels": [True]}, "labels", "1 labels for 3 completions"),
        ({"completions": ["a", " ", "c"]}, "completions[1]", "empty completion"),
        ({"prompt": [{"role": "user", "content": "hi"}]}, "prompt", "expected a string, got list"),
    ],
)
def test_trl_malformed(tmp_path, changes, field, message):
    records = _break(_own("trl_stepwise.jsonl"), 1, **changes)
    with pytest.raises(RecordError) as caught:
        read_trl(_write(tmp_path / "t.jsonl", records, jsonl=True))
    assert (caught.value.index, caught.value.field) == (1, field) and message in caught.value.message


def test_processbench_real_sample():
    report = SkipReport("pb")
    chains = read_processbench(PROCESSBENCH, report=report)
    raw = load_json_records(PROCESSBENCH)
    assert len(chains) == 20 and (report.read, report.kept) == (20, 20)
    assert [c.first_error for c in chains] == [r["label"] for r in raw]
    assert [c.label for c in chains] == [1] * 10 + [0] * 10
    assert [c.steps for c in chains] == [r["steps"] for r in raw]
    assert chains[0].id == "gsm8k-200" and chains[0].question == raw[0]["problem"]
    assert chains[0].meta == {"generator": "Qwen2-7B-Instruct", "final_answer_correct": True}
    assert chains[0].domain == "processbench_gsm8k_sample"
    assert [c.final_answer for c in chains[:3]] == [None, "6", "34"]
    assert chains[19].final_answer == "70\\%" and chains[19].first_error == 0


def test_processbench_right_answer_through_a_wrong_step_is_labelled_wrong(tmp_path):
    record = {
        "id": "m-1",
        "generator": "g",
        "problem": "p",
        "steps": ["a", "b \\boxed{3}"],
        "final_answer_correct": True,
        "label": 0,
    }
    (chain,) = read_processbench(_write(tmp_path / "math.json", [record]))
    assert (chain.label, chain.first_error, chain.final_answer, chain.domain) == (0, 0, "3", "math")


@pytest.mark.parametrize(
    "changes, field, message",
    [
        ({"label": 8}, "label", "first wrong step 8 outside [-1, 6]"),
        ({"label": -2}, "label", "first wrong step -2 outside [-1, 6]"),
        ({"label": "1"}, "label", "expected an integer"),
        ({"steps": []}, "steps", "no steps"),
        ({"steps": ["a", 2]}, "steps[1]", "expected a string"),
        ({"problem": KeyError}, "problem", "missing required field"),
        ({"id": KeyError}, "id", "missing required field"),
    ],
)
def test_processbench_malformed(tmp_path, changes, field, message):
    records = _break(load_json_records(PROCESSBENCH)[10:12], 1, **changes)
    with pytest.raises(RecordError) as caught:
        read_processbench(_write(tmp_path / "pb.json", records))
    assert (caught.value.index, caught.value.field) == (1, field) and message in caught.value.message


# --------------------------------------------------------------------------- reports and images


def test_reader_logs_its_own_report_when_none_is_given(caplog):
    with caplog.at_level(logging.INFO, logger="prm.data.errors"):
        read_dreamprm_meta(DREAMPRM_META, missing_image="skip")
    assert any("read 15 records, kept 0, skipped 15: 10 missing_image" in m for m in caplog.messages)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="prm.data.errors"):
        read_dreamprm_meta(DREAMPRM_META, missing_image="skip", report=SkipReport("mine"))
    assert caplog.messages == []


def test_one_report_accumulates_over_files():
    report = SkipReport("all")
    read_trl(OWN / "trl_stepwise.jsonl", report=report)
    read_processbench(PROCESSBENCH, report=report)
    assert (report.read, report.kept, report.total_skipped) == (22, 22, 0)


def test_resolve_images_refuses_paths_outside_the_root_unless_allowed(tmp_path):
    _images(tmp_path, "a/x.png")
    report = SkipReport("r")
    absolute = str(tmp_path / "a/x.png")
    source = tmp_path / "f.json"
    for raw, reason in (
        (absolute, "is absolute"),
        ("../a/x.png", "leaves the image root through '..'"),
        ("~/x.png", "starts with '~'"),
    ):
        with pytest.raises(RecordError) as caught:
            resolve_images([raw], tmp_path / "b", "error", source, 3, "image", report)
        assert str(caught.value).startswith(f"{source}, record 3, field 'image': image path {raw!r} {reason}")
        assert "data.allow_outside_paths=true" in str(caught.value)
    assert resolve_images([absolute], "/elsewhere", "error", source, 0, "image", report, True) == [absolute]
    allowed = resolve_images(["../a/x.png"], tmp_path / "b", "error", "f.json", 0, "image", report, True)
    assert allowed == [absolute]
    # ".." that stays inside the root is fine; a link out of the root is not.
    assert resolve_images(["b/../a/x.png"], tmp_path, "error", source, 0, "image", report) == [absolute]
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "link.png").symlink_to(tmp_path / "a/x.png")
    with pytest.raises(RecordError, match="leaves the image root through a link"):
        resolve_images(["link.png"], tmp_path / "root", "error", source, 0, "image", report)
    assert resolve_images(["a/x.png"], None, "error", tmp_path / "f.json", 0, "image", report) == [absolute]
    assert report.total_skipped == 0


def test_load_image_converts_to_rgb(tmp_path):
    Image.new("RGBA", (30, 29), (255, 0, 0, 128)).save(tmp_path / "a.png")
    Image.new("P", (28, 28)).save(tmp_path / "p.png")
    for name in ("a.png", "p.png"):
        image = load_image(tmp_path / name)
        assert image.mode == "RGB"
    assert load_image(tmp_path / "a.png").size == (30, 29)
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "none.png")
    assert os.path.exists(tmp_path / "a.png")
