"""experiments/real_text_prm/prepare.py: ProcessBench records -> training chains and a held-out split."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from prm.data.readers import read_processbench, read_records, read_trl

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "processbench_tiny"


def _load_prepare():
    spec = importlib.util.spec_from_file_location(
        "real_text_prepare", ROOT / "experiments" / "real_text_prm" / "prepare.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prepare = _load_prepare()


def _records():
    return prepare.read_subset(FIXTURE / "gsm8k.json", "gsm8k") + prepare.read_subset(
        FIXTURE / "math.json", "math"
    )


def test_training_chain_keeps_steps_up_to_the_first_error():
    by_id = {r["id"]: r for r in _records()}
    # first error at step 1 of 3: steps 0-1 kept, labelled right, wrong
    assert prepare.training_chain(by_id["gsm8k-0"]) == {
        "id": "gsm8k-0",
        "prompt": "Tom has 3 apples and buys 2 more. How many apples does he have?",
        "completions": ["Tom starts with 3 apples.", "He buys 2 more, so 3 + 2 = 6."],
        "labels": [True, False],
    }
    # a correct chain keeps every step (stripped), all right
    assert prepare.training_chain(by_id["gsm8k-1"])["completions"] == [
        "Tom starts with 3 apples.",
        "3 + 2 = 5.",
        "The answer is \\boxed{5}.",
    ]
    assert prepare.training_chain(by_id["gsm8k-1"])["labels"] == [True, True, True]
    # first error at step 0: one step, wrong
    assert prepare.training_chain(by_id["gsm8k-2"])["labels"] == [False]
    # first error at step 2 of 4
    chain = prepare.training_chain(by_id["math-0"])
    assert chain["completions"] == ["Divide both sides by 2.", "So $x = 4$.", "Check: $2 \\cdot 4 = 9$."]
    assert chain["labels"] == [True, True, False]


def test_split_is_by_problem_and_fixed():
    records = _records()
    splits = prepare.split_by_problem(records, seed=0, counts={"test": 1, "threshold": 1, "meta": 1})
    assert sum(len(rows) for rows in splits.values()) == len(records) == 8
    problems = {name: {prepare.problem_key(r["problem"]) for r in rows} for name, rows in splits.items()}
    assert [len(problems[n]) for n in ("test", "threshold", "meta", "train")] == [1, 1, 1, 3]
    names = list(problems)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not problems[a] & problems[b], (a, b)
    # the two "Tom" records differ only by whitespace: one problem, one split
    tom = [name for name, rows in splits.items() for r in rows if r["problem"].startswith("Tom")]
    assert len(tom) == 2 and tom[0] == tom[1]
    # "Compute $3^2$." has two generators' chains: both land in the same split
    square = [name for name, rows in splits.items() for r in rows if r["problem"] == "Compute $3^2$."]
    assert len(square) == 2 and square[0] == square[1]
    # fixed by the seed (pinned), and another seed gives another split
    ids = {name: sorted(r["id"] for r in rows) for name, rows in splits.items()}
    assert ids == {
        "test": ["math-3"],
        "threshold": ["math-0"],
        "meta": ["math-1", "math-2"],
        "train": ["gsm8k-0", "gsm8k-1", "gsm8k-2", "gsm8k-3"],
    }
    assert prepare.split_by_problem(records, 0, {"test": 1, "threshold": 1, "meta": 1}) == splits
    with pytest.raises(ValueError, match="6 held-out problems asked for, only 6 exist"):
        prepare.split_by_problem(records, 0, {"test": 3, "threshold": 3})


def test_fit_chain_drops_trailing_whole_steps():
    chain = {"id": "x", "prompt": "abcd", "completions": ["aa", "bbb", "cccc"], "labels": [True, True, False]}

    def chars(question, steps):  # a stand-in token count: characters
        return len(question) + sum(len(step) for step in steps)

    def plus_one(question, steps):  # a second layout, one more per step
        return chars(question, steps) + len(steps)

    assert prepare.fit_chain(chain, [chars], 13) == chain
    cut = prepare.fit_chain(chain, [chars, plus_one], 13)  # 4+9+3 = 16 > 13; 4+5+2 = 11
    assert cut["completions"] == ["aa", "bbb"] and cut["labels"] == [True, True]
    assert prepare.fit_chain(chain, [chars], 6)["completions"] == ["aa"]
    assert prepare.fit_chain(chain, [chars], 5) is None


def test_prepare_writes_files_the_suite_reads(tmp_path):
    counts = dict(test_problems=1, threshold_problems=1, meta_problems=1)
    summary = prepare.prepare(FIXTURE, tmp_path / "a", seed=0, **counts)
    prepare.prepare(FIXTURE, tmp_path / "b", seed=0, **counts)
    for name in ("train.json", "test.json", "threshold.json", "meta.json", "split.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert summary["splits"]["train"] == {
        "problems": 3,
        "records": 4,
        "erroneous": 2,
        "correct": 2,
        "gsm8k": 4,
        "math": 0,
    }
    assert summary["train_chains"] == {"chains": 4, "steps": 8, "with_wrong_step": 2}

    chains = read_trl(tmp_path / "a" / "train.json")
    assert read_records(tmp_path / "a" / "train.json", "auto")[0].steps == chains[0].steps  # detected as trl
    by_id = {c.id: c for c in chains}
    assert by_id["gsm8k-0"].labels == [1.0, 0.0]
    assert by_id["gsm8k-3"].labels == [1.0, 1.0]
    assert sorted(by_id) == ["gsm8k-0", "gsm8k-1", "gsm8k-2", "gsm8k-3"]

    (held_out,) = read_processbench(tmp_path / "a" / "threshold.json")
    assert (held_out.id, held_out.first_error, held_out.label, len(held_out.steps)) == ("math-0", 2, 0, 4)
    meta = read_records(tmp_path / "a" / "meta.json", "auto")
    assert sorted((c.id, c.label, c.first_error) for c in meta) == [("math-1", 1, -1), ("math-2", 0, 0)]
    assert "subset" not in json.loads((tmp_path / "a" / "test.json").read_text())[0]


def test_bad_record_is_named(tmp_path):
    bad = tmp_path / "gsm8k.json"
    bad.write_text(json.dumps([{"id": "g-0", "problem": "p", "steps": ["a", "b"], "label": 2}]))
    with pytest.raises(
        ValueError, match=r"gsm8k.json: record 0 \(id 'g-0'\): field 'label' 2 outside \[-1, 1\]"
    ):
        prepare.read_subset(bad, "gsm8k")
    bad.write_text(json.dumps([{"id": "g-0", "problem": "p", "label": -1}]))
    with pytest.raises(ValueError, match="record 0: missing field 'steps'"):
        prepare.read_subset(bad, "gsm8k")
    only_gsm8k = tmp_path / "only_gsm8k"
    only_gsm8k.mkdir()
    (only_gsm8k / "gsm8k.json").write_text((FIXTURE / "gsm8k.json").read_text())
    with pytest.raises(FileNotFoundError, match="math.json: missing"):
        prepare.prepare(only_gsm8k, tmp_path / "out")
