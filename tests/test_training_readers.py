"""Training sets in: PRM800K and Math-Shepherd readers, TRL stepwise sets, and every reader's inputs
beyond JSON (Parquet, ``save_to_disk`` folders, Hub snapshot folders), images stored as bytes in
rows, and streaming. The Parquet / ``datasets`` inputs are generated here from the JSONL fixtures."""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from prm.data.errors import RecordError, SkipReport
from prm.data.formats import detect_format, read_records
from prm.data.formats.inputs import BATCH_ROWS, iter_records, load_json_records
from prm.data.formats.math_shepherd import STEP_TAG, read_math_shepherd
from prm.data.formats.prm800k import read_prm800k
from prm.data.formats.source import Source
from prm.data.image_cache import using_image_cache
from prm.data.images import resolve_images
from prm.data.records import StepChain
from prm.data.sources import DataSources
from prm.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
OWN = ROOT / "tests" / "fixtures" / "formats"
PROCESSBENCH = ROOT / "tests" / "fixtures" / "published" / "processbench_gsm8k_sample.json"

datasets.disable_progress_bars()


def _records(name: str) -> list[dict]:
    return load_json_records(OWN / name)


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _error(call, *args, **kwargs) -> RecordError:
    with pytest.raises(RecordError) as caught:
        call(*args, **kwargs)
    return caught.value


# --------------------------------------------------------------------------- PRM800K

# The fixture's four records, by hand: record 0 rates its three chosen steps +1; record 1 rates
# +1, 0 and ends in a step with no chosen completion whose first -1 completion is completions[0];
# record 2 takes a neutral (flagged) step, a human completion (rating null -> +1) and a +1 step;
# record 3 gives up at its only step, which has no -1 completion: no step left -> no_steps.
PRM800K_QUESTIONS = [
    "What is $3 \\cdot 7 - 4$?",
    "How many positive divisors does $12$ have?",
    "Solve for $x$: $2x + 5 = 11$.",
]
PRM800K_STEPS = [
    ["First, $3 \\cdot 7 = 21$.", "Then $21 - 4 = 17$.", "# Answer\n\n17"],
    [
        "I factor $12 = 2^2 \\cdot 3$.",
        "I could also list the divisors one by one.",
        "So the number of divisors is $2 \\cdot 1 = 2$.",
    ],
    [
        "This is a linear equation in $x$.",
        "Subtracting $5$ from both sides gives $2x = 6$.",
        "Dividing by $2$ gives $x = 3$.\n\n# Answer\n\n3",
    ],
]
PRM800K_META = [
    {"finish_reason": "solution", "answer": "17"},
    {"finish_reason": "found_error", "answer": "6"},
    {"finish_reason": "solution", "answer": "3", "flagged_steps": [0]},
]


def _prm800k_chains(neutral: float | None, domain: str = "prm800k") -> list[StepChain]:
    # The neutral steps are record 1's step 1 and record 2's step 0; everything else is +1 / -1.
    labels = [[1.0, 1.0, 1.0], [1.0, neutral, 0.0], [neutral, 1.0, 1.0]]
    return [
        StepChain(
            str(i), PRM800K_QUESTIONS[i], PRM800K_STEPS[i], labels[i], domain=domain, meta=PRM800K_META[i]
        )
        for i in range(3)
    ]


@pytest.mark.parametrize(
    "neutral, value",
    [(None, 1.0), ("positive", 1.0), ("negative", 0.0), ("unsupervised", None), ("half", 0.5)],
)
def test_prm800k_exact_chains_under_each_neutral_policy(neutral, value):
    report = SkipReport("prm800k")
    options = {} if neutral is None else {"neutral": neutral}  # None: the default policy
    chains = read_prm800k(OWN / "prm800k.jsonl", report=report, **options)
    assert chains == _prm800k_chains(value)
    assert (report.read, report.kept, dict(report.skipped)) == (4, 3, {"no_steps": 1})
    assert report.examples["no_steps"] == "record 3"


def test_prm800k_options_and_no_steps_policy():
    with pytest.raises(ValueError, match=r"neutral must be one of \('positive', 'negative', 'unsupervised'"):
        read_prm800k(OWN / "prm800k.jsonl", neutral="zero")
    error = _error(read_prm800k, OWN / "prm800k.jsonl", no_steps="error")
    assert (error.index, error.field, error.message) == (3, "label.steps", "no steps found")


def _prm800k_record(steps: list[dict], **label) -> dict:
    return {"question": {"problem": "p"}, "label": {"steps": steps, "finish_reason": "solution", **label}}


def _step(*ratings, chosen=0, human=None) -> dict:
    completions = [{"text": f"c{i}", "rating": r, "flagged": None} for i, r in enumerate(ratings)]
    return {"completions": completions, "human_completion": human, "chosen_completion": chosen}


@pytest.mark.parametrize(
    "record, field, message",
    [
        (_prm800k_record([_step(1), _step(1, 2)]), "label.steps[1].completions[1].rating", "got 2"),
        (_prm800k_record([_step(True)]), "label.steps[0].completions[0].rating", "got True"),
        (_prm800k_record([_step("1")]), "label.steps[0].completions[0].rating", "got '1'"),
        (_prm800k_record([_step(1, chosen=3)]), "label.steps[0].chosen_completion", "index 3 outside the 1"),
        (_prm800k_record([_step(1, chosen="0")]), "label.steps[0].chosen_completion", "expected an integer"),
        (
            _prm800k_record([_step(-1, chosen=None), _step(1)]),
            "label.steps[0].chosen_completion",
            "path is broken",
        ),
        (
            _prm800k_record([_step(1, human="text", chosen=None)]),
            "label.steps[0].human_completion",
            "an object",
        ),
        (
            _prm800k_record([_step(-1, human={"rating": 1}, chosen=None)]),
            "label.steps[0].human_completion.text",
            "missing",
        ),
        (_prm800k_record(["step"]), "label.steps[0]", "expected an object, got str"),
        ({"question": {"problem": 3}, "label": {"steps": []}}, "question.problem", "expected a string"),
        ({"question": "p", "label": {"steps": []}}, "question", "expected an object, got str"),
        ({"question": {"problem": "p"}, "label": {"steps": "x"}}, "label.steps", "expected a list"),
    ],
)
def test_prm800k_malformed_records_name_file_record_and_field(tmp_path, record, field, message):
    good = _prm800k_record([_step(1)])
    path = _write_jsonl(tmp_path / "phase2.jsonl", [good, record])
    error = _error(read_prm800k, path)
    assert (error.index, error.field) == (1, field) and message in error.message
    assert str(error).startswith(f"{path}, record 1, field {field!r}: ")


def test_prm800k_rule_at_an_unchosen_last_step(tmp_path):
    records = [
        # The first -1 completion is taken, not the first completion: c1.
        _prm800k_record([_step(1), _step(0, -1, -1, chosen=None)], finish_reason="found_error"),
        # No -1 completion: the step is left out, the chain keeps step 0.
        _prm800k_record([_step(1), _step(0, None, chosen=None)], finish_reason="give_up"),
        # completions null (TRL's script notes it "happens sometimes"): the same.
        _prm800k_record(
            [_step(0), {"completions": None, "human_completion": None, "chosen_completion": None}]
        ),
        # A float rating equal to -1 / 0 / +1 (a Parquet float column) is accepted; null is unsupervised.
        _prm800k_record([_step(1.0), _step(None), _step(-1.0)]),
        # label.steps null or empty: no step, counted as no_steps.
        {"question": {"problem": "p"}, "label": {"steps": None, "finish_reason": "bad_problem"}},
        _prm800k_record([]),
    ]
    report = SkipReport("x")
    chains = read_prm800k(_write_jsonl(tmp_path / "x.jsonl", records), neutral="half", report=report)
    assert (report.read, report.kept, dict(report.skipped)) == (6, 4, {"no_steps": 2})
    assert [(c.steps, c.labels) for c in chains] == [
        (["c0", "c1"], [1.0, 0.0]),
        (["c0"], [1.0]),
        (["c0"], [0.5]),
        (["c0", "c0", "c0"], [1.0, None, 0.0]),
    ]


# --------------------------------------------------------------------------- Math-Shepherd


def _shepherd(question: str, steps: list[str], marks: str, tag: str = STEP_TAG, task: str = "GSM8K") -> dict:
    """A Math-Shepherd row as the card describes it: the label is the input with each tag replaced."""
    text = question + "\n" + "\n".join(f"{step} {tag}" for step in steps)
    label = question + "\n" + "\n".join(f"{step} {mark}" for step, mark in zip(steps, marks))
    return {"input": text, "label": label, "task": task}


MATH_SHEPHERD_CHAINS = [
    StepChain(
        "0",
        "Tom has 3 boxes of 4 pencils and gives away 5 pencils. How many pencils does he have left?",
        [
            "Step 1: He has 3 * 4 = <<3*4=12>>12 pencils.",
            "Step 2: After giving 5 away he has 12 - 5 = <<12-5=7>>7.",
            "Step 3: The answer is: 7",
        ],
        [1.0, 1.0, 1.0],  # + + +
        domain="GSM8K",
    ),
    StepChain(
        "1",
        "What is the sum of the first four positive odd integers?",  # "? Step 1:" on one line
        [
            "Step 1: The first four positive odd integers are 1, 3, 5 and 7.",
            "Step 2: Their sum is 1 + 3 + 5 + 7 = 15.",  # the "+" signs of the text are not labels
            "Step 3: The answer is: 15",
        ],
        [1.0, 0.0, 0.0],  # + - -
        domain="MATH",
    ),
]


def test_math_shepherd_exact_chains_and_the_unsplit_row():
    report = SkipReport("ms")
    assert read_math_shepherd(OWN / "math_shepherd.jsonl", report=report) == MATH_SHEPHERD_CHAINS
    # Record 2 has a step tag inside its question (no "Step 1:" before the first tag): counted.
    assert (report.read, report.kept, dict(report.skipped)) == (3, 2, {"unsplit_question": 1})
    error = _error(read_math_shepherd, OWN / "math_shepherd.jsonl", unsplit="error")
    assert (error.index, error.field) == (2, "input")
    assert error.message == "no 'Step 1:' before the first step tag: cannot tell the question from step 1"


def test_math_shepherd_step_tag_option_and_lower_case_step_one(tmp_path):
    rows = [
        _shepherd("Q1?", ["Step 1: a", "Step 2: b"], "+-", tag="<step>", task="MATH"),
        _shepherd("Q2?", ["step 1: c"], "-", tag="<step>"),
    ]
    chains = read_math_shepherd(_write_jsonl(tmp_path / "t.jsonl", rows), step_tag="<step>")
    assert [(c.question, c.steps, c.labels, c.domain) for c in chains] == [
        ("Q1?", ["Step 1: a", "Step 2: b"], [1.0, 0.0], "MATH"),
        ("Q2?", ["step 1: c"], [0.0], "GSM8K"),
    ]
    with pytest.raises(ValueError, match="step_tag must not be empty"):
        read_math_shepherd(tmp_path / "t.jsonl", step_tag="")


def _broken_shepherd(case: str) -> dict:
    row = _shepherd("Q?", ["Step 1: a", "Step 2: b"], "++")
    if case == "short_label":
        row["label"] = row["label"][:-1]  # one mark fewer than tags
    elif case == "long_label":
        row["label"] += " +"
    elif case == "bad_mark":
        row = _shepherd("Q?", ["Step 1: a", "Step 2: b"], "+?")
    elif case == "no_tag":
        row = {"input": "Q? Step 1: a", "label": "Q? Step 1: a", "task": "MATH"}
    elif case == "tail":
        row["input"] += " trailing"
        row["label"] += " trailing"
    elif case == "empty_step":
        row = _shepherd("Q?", ["Step 1: a", " "], "++")
    elif case == "no_question":
        row = _shepherd("", ["Step 1: a"], "+")
    elif case == "no_label":
        del row["label"]
    return row


@pytest.mark.parametrize(
    "case, field, message",
    [
        # Input "Q?\nStep 1: a ки\nStep 2: b ки": 2 + 1 + 9 + 1 + 2 + 1 + 9 + 1 + 2 = 28 characters,
        # 2 tags of 2 characters -> a label of 28 - 2 = 26; one mark fewer: 25; " +" more: 28.
        ("short_label", "label", "25 characters, expected 26: the input with each of its 2 step tags"),
        ("long_label", "label", "28 characters, expected 26"),
        # The second tag's place: len("Q?\nStep 1: a ") = 13, "+" at 13, then "\nStep 2: b " (11) -> 25.
        ("bad_mark", "label", "character 25 (where step tag 1 stands) is '?', expected '+' or '-'"),
        ("no_tag", "input", "no step tag 'ки'"),
        ("tail", "input", "text after the last step tag 'ки': 'trailing'"),
        ("empty_step", "input", "step 1 is empty"),
        ("no_label", "label", "missing required field"),
    ],
)
def test_math_shepherd_malformed_records(tmp_path, case, field, message):
    good = _shepherd("Q0?", ["Step 1: x"], "+")
    path = _write_jsonl(tmp_path / "ms.jsonl", [good, _broken_shepherd(case)])
    error = _error(read_math_shepherd, path, unsplit="error")
    assert (error.index, error.field) == (1, field) and message in error.message
    assert str(error).startswith(f"{path}, record 1, field {field!r}: ")


def test_math_shepherd_question_must_precede_step_one(tmp_path):
    path = _write_jsonl(tmp_path / "ms.jsonl", [_broken_shepherd("no_question")])
    report = SkipReport("ms")
    assert read_math_shepherd(path, report=report) == [] and dict(report.skipped) == {"unsplit_question": 1}
    error = _error(read_math_shepherd, path, unsplit="error")
    assert error.message == "no text before 'Step 1:': cannot tell the question from step 1"


# --------------------------------------------------------------------------- inputs: Parquet and datasets


def _inputs(tmp_path: Path, name: str, records: list[dict]) -> dict[str, Path]:
    """The same records as JSONL, Parquet, a save_to_disk folder, a DatasetDict folder and a Hub
    snapshot folder (``data/<split>-00000-of-00001.parquet``); the last two hold a second split
    (``test``: the first record) besides ``train``."""
    ds = datasets.Dataset.from_list(records)
    folder = tmp_path / name
    folder.mkdir()
    paths = {"jsonl": _write_jsonl(folder / f"{name}.jsonl", records), "parquet": folder / f"{name}.parquet"}
    ds.to_parquet(str(paths["parquet"]))
    paths["saved"] = folder / "saved"
    ds.save_to_disk(str(paths["saved"]))
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(folder / "dict"))
    paths["dict_split"] = folder / "dict" / "train"  # the split's own folder
    (folder / "hub" / "data").mkdir(parents=True)
    ds.to_parquet(str(folder / "hub" / "data" / "train-00000-of-00001.parquet"))
    ds.select([0]).to_parquet(str(folder / "hub" / "data" / "test-00000-of-00001.parquet"))
    paths["hub_split"] = folder / "hub" / "train"  # not a folder: the split of its parent
    return paths


@pytest.mark.parametrize(
    "fixture, expected_format",
    [("prm800k.jsonl", "prm800k"), ("math_shepherd.jsonl", "math_shepherd"), ("trl_stepwise.jsonl", "trl")],
)
def test_every_input_kind_gives_the_same_records(tmp_path, fixture, expected_format):
    paths = _inputs(tmp_path, Path(fixture).stem, _records(fixture))
    results = {}
    for kind, path in paths.items():
        assert detect_format(path) == expected_format, kind
        report = SkipReport(kind)
        results[kind] = (
            read_records(path, report=report, domain="d"),
            report.read,
            report.kept,
            report.skipped,
        )
    assert len(results["jsonl"][0]) >= 2
    for kind, result in results.items():
        assert result == results["jsonl"], kind


def test_parquet_rows_of_the_datasets_json_feature_are_decoded(tmp_path):
    # datasets stores objects whose keys vary between rows as JSON text (its Json feature): PRM800K's
    # "question" (pre_generated_* in phase 2 only) comes back as text unless decoded.
    records = _records("prm800k.jsonl")
    features = datasets.Dataset.from_list(records).features
    features["question"] = datasets.Json()
    ds = datasets.Dataset.from_list(records, features=features)
    ds.to_parquet(str(tmp_path / "json.parquet"))
    ds.save_to_disk(str(tmp_path / "json_saved"))
    assert pq.read_schema(tmp_path / "json.parquet").field("question").type == pa.json_()
    for path in (tmp_path / "json.parquet", tmp_path / "json_saved"):
        assert read_prm800k(path, domain="prm800k") == _prm800k_chains(1.0)


def test_a_folder_with_several_splits_needs_one_named(tmp_path):
    paths = _inputs(tmp_path, "trl", _records("trl_stepwise.jsonl"))
    for folder in (paths["dict_split"].parent, paths["hub_split"].parent):
        error = _error(read_records, folder)
        assert error.message.startswith("the dataset folder has splits ['test', 'train']: name one as")
        assert str(folder / "test") in error.message
        error = _error(read_records, folder / "valid")
        assert "has no split 'valid'; its splits are ['test', 'train']" in error.message
        # The named split: the test split holds the first record only.
        assert [c.question for c in read_records(folder / "test")] == [
            _records("trl_stepwise.jsonl")[0]["prompt"]
        ]
    # A saved Dataset has no splits; a mistyped file name stays a missing file.
    assert "is a dataset without splits" in _error(read_records, paths["saved"] / "train").message
    with pytest.raises(FileNotFoundError):
        read_records(tmp_path / "trl" / "nothing.jsonl", format="trl")
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    assert "cannot read as a Parquet file" in _error(read_records, bad, format="trl").message


def test_data_sources_read_folders_and_refuse_what_is_missing(tmp_path):
    paths = _inputs(tmp_path, "ms", _records("math_shepherd.jsonl"))
    sources = DataSources(
        name="x", train=str(paths["hub_split"]), meta=str(paths["saved"]), train_format="auto"
    )
    assert sources.load("train") == MATH_SHEPHERD_CHAINS
    assert (sources.reports["train"].read, sources.reports["train"].kept) == (3, 2)
    assert [c.labels for c in sources.load("meta")] == [c.labels for c in MATH_SHEPHERD_CHAINS]
    sources.train = str(tmp_path / "ms" / "missing.parquet")
    with pytest.raises(UserError, match=r"missing\.parquet: no such file or dataset folder"):
        sources.load("train")


# --------------------------------------------------------------------------- images stored as bytes


def _image_bytes(colour: str, image_format: str = "PNG", size=(30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=image_format)
    return buffer.getvalue()


def _cached(cache: Path, data: bytes, extension: str) -> str:
    digest = hashlib.sha256(data).hexdigest()
    return str(cache / digest[:2] / f"{digest}.{extension}")


def test_image_bytes_in_parquet_become_cached_paths_written_once(tmp_path, monkeypatch):
    red, blue = _image_bytes("red"), _image_bytes("blue", "JPEG")
    rows = _records("mmprm_train.jsonl")  # two MM-PRM records, image_path "images/m0.png" / "images/m1.png"
    rows = [
        {**rows[0], "image_path": {"bytes": red, "path": None}},
        {**rows[1], "image_path": {"bytes": blue, "path": "m1.jpg"}},
        {**rows[0], "id": "again", "image_path": {"bytes": red, "path": "elsewhere.png"}},  # same bytes
        {**rows[0], "id": "by-path", "image_path": {"bytes": None, "path": "img/x.png"}},
    ]
    features = datasets.Dataset.from_list([{**r, "image_path": None} for r in rows]).features
    features["image_path"] = datasets.Image()
    (tmp_path / "img").mkdir()
    Image.new("RGB", (30, 30), "green").save(tmp_path / "img" / "x.png")
    monkeypatch.chdir(tmp_path)  # datasets sizes the path-only image from the working directory
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(tmp_path / "train.parquet"))
    cache = tmp_path / "cache"
    with using_image_cache(cache):
        chains = read_records(tmp_path / "train.parquet")
    assert [c.images for c in chains] == [
        [_cached(cache, red, "png")],
        [_cached(cache, blue, "jpg")],  # the extension is the detected format's, not the stored name's
        [_cached(cache, red, "png")],
        [str(tmp_path / "img" / "x.png")],  # no bytes: the stored path, under the data root
    ]
    assert Path(chains[0].images[0]).read_bytes() == red and Path(chains[1].images[0]).read_bytes() == blue
    files = sorted(p for p in cache.rglob("*") if p.is_file())
    assert len(files) == 2  # red once, blue once
    written = {p: p.stat().st_mtime_ns for p in files}
    with using_image_cache(cache):
        assert read_records(tmp_path / "train.parquet") == chains
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()} == written  # not rewritten


def test_image_lists_raw_bytes_undecodable_bytes_and_the_config_key(tmp_path):
    red, green = _image_bytes("red"), _image_bytes("green")
    conversation = _records("visualprm_train.jsonl")[1]  # two images
    table = pa.Table.from_pylist([{**conversation, "image": [red, green]}])
    pq.write_table(table, tmp_path / "vp.parquet")
    cache = tmp_path / "cache"
    sources = DataSources(name="vp", train=str(tmp_path / "vp.parquet"), image_cache=str(cache))
    (chain,) = sources.load("train")
    assert chain.images == [_cached(cache, red, "png"), _cached(cache, green, "png")]
    bad = pa.Table.from_pylist([{**conversation, "image": [red, b"not an image"]}])
    pq.write_table(bad, tmp_path / "bad.parquet")
    with using_image_cache(cache):
        error = _error(read_records, tmp_path / "bad.parquet")
    assert (error.index, error.field) == (
        0,
        "image[1]",
    ) and "12 bytes in no image format Pillow knows" in error.message


def test_the_cache_counts_as_inside_the_image_root(tmp_path):
    cache, elsewhere = tmp_path / "cache", tmp_path / "elsewhere"
    for folder in (cache, elsewhere):
        folder.mkdir()
        Image.new("RGB", (4, 4)).save(folder / "a.png")
    report = SkipReport("r")
    root = tmp_path / "root"
    inside = resolve_images(
        [str(cache / "a.png")], root, "error", "f.jsonl", 0, "image", report, False, cache
    )
    assert inside == [str(cache / "a.png")]
    error = _error(
        resolve_images, [str(elsewhere / "a.png")], root, "error", "f.jsonl", 0, "image", report, False, cache
    )
    assert "is absolute: paths must stay under the image root" in error.message
    (cache / "link.png").symlink_to(elsewhere / "a.png")  # a link out of the cache is not inside it
    error = _error(
        resolve_images, [str(cache / "link.png")], root, "error", "f.jsonl", 0, "image", report, False, cache
    )
    assert "is absolute" in error.message


# --------------------------------------------------------------------------- streaming


def _trl_rows(count: int) -> list[dict]:
    return [
        {
            "prompt": f"Question {i}: what is {i} + {i}?",
            "completions": [f"{i} + {i} = {2 * i}.", "Done."],
            "labels": [True, True],
        }
        for i in range(count)
    ]


def test_rows_are_handed_out_one_at_a_time(tmp_path):
    rows = _trl_rows(1000)
    jsonl = _write_jsonl(tmp_path / "big.jsonl", rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "big.parquet")
    for path in (jsonl, tmp_path / "big.parquet"):
        assert inspect.isgenerator(iter_records(path))
        source = Source(path, report=SkipReport(str(path)))
        produced = source.rows()
        assert source.report.read == 0  # nothing read before the first row is asked for
        first = next(produced)
        assert (first.index, first.obj["prompt"], source.report.read) == (0, "Question 0: what is 0 + 0?", 1)
        assert sum(1 for _ in produced) == 999 and source.report.read == 1000


def _peak(work) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_reading_a_big_file_does_not_hold_it(tmp_path):
    rows = _trl_rows(20_000)
    jsonl = _write_jsonl(tmp_path / "big.jsonl", rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "big.parquet", row_group_size=4 * BATCH_ROWS)
    del rows
    for path in (jsonl, tmp_path / "big.parquet"):
        whole = _peak(lambda path=path: list(iter_records(path)))  # every record held at once
        streamed = _peak(lambda path=path: sum(1 for _ in Source(path, report=SkipReport("big")).rows()))
        # Records of ~0.5 kB as Python objects: 20k of them take several MB; a stream holds a batch.
        assert whole > 5_000_000, (path.suffix, whole)
        assert streamed < whole / 10, (path.suffix, streamed, whole)


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_train_reads_a_parquet_train_file_and_a_saved_meta_folder(tmp_path):
    rows = _records("math_shepherd.jsonl") * 4  # 12 rows: 8 chains, 4 unsplit rows counted
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "train.parquet"))
    datasets.Dataset.from_list(load_json_records(PROCESSBENCH)).save_to_disk(str(tmp_path / "meta"))
    run = tmp_path / "run"
    env = {
        "PRM_CACHE_DIR": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "hf"),
        "WANDB_MODE": "disabled",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    }
    subprocess.run(
        [
            sys.executable,
            "train.py",
            "experiment=smoke",
            "data=files",
            "backbone=tiny_qwen2",
            f"data.train={tmp_path / 'train.parquet'}",
            f"data.meta={tmp_path / 'meta'}",
            f"hydra.run.dir={run}",
        ],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    log = "".join(path.read_text() for path in run.glob("*.log"))
    assert "train.parquet: read 12 records, kept 8, skipped 4: 4 unsplit_question" in log
    preflight = json.loads((run / "preflight.json").read_text())
    assert (preflight["train"]["read"], preflight["train"]["kept"]) == (8, 8)
    assert (preflight["meta"]["read"], preflight["meta"]["kept"]) == (16, 16)  # data.limit.meta of 20
    assert (run / "checkpoints").is_dir()


# --------------------------------------------------------------------------- reader options from the config


def test_reader_options_reach_the_split_reader_and_unknown_ones_are_refused():
    from conftest import compose_config
    from hydra.utils import instantiate

    files = [f"data.train={OWN / 'prm800k.jsonl'}", f"data.meta={PROCESSBENCH}"]
    sources = instantiate(
        compose_config("data=prm800k", "data.reader_options.train.neutral=half", *files).data
    )
    assert sources.load("train") == _prm800k_chains(0.5)
    # data=files detects the format first, then checks the option against its reader.
    files_cfg = compose_config("data=files", "++data.reader_options.train.neutral=negative", *files)
    assert instantiate(files_cfg.data).load("train") == _prm800k_chains(0.0)
    sources.reader_options = {"train": {"neutral": "half", "step_tag": "x"}}
    with pytest.raises(
        UserError, match=r"reader_options\.train: the prm800k reader takes no option step_tag; "
    ):
        sources.load("train")
    sources.reader_options = {"train": {"missing_image": "skip"}}  # data.missing_image's job
    with pytest.raises(UserError, match=r"no option missing_image; its options: domain, neutral, no_steps$"):
        sources.load("train")


def test_a_bad_reader_option_value_names_the_key(tmp_path):
    from prm.data.sources import DataSources
    from prm.errors import UserError

    sources = DataSources(
        name="p", train=str(OWN / "prm800k.jsonl"), reader_options={"train": {"neutral": "banana"}}
    )
    with pytest.raises(UserError, match=r"data.reader_options.train.neutral: neutral must be one of"):
        sources.load("train")
