"""The PRMBench and VisualProcessBench readers: detection, exact chains from the hand-written
fixtures, the ``from_chain`` round trip to scoring records, malformed records named by file, record
and field, and the benchmarks' metrics end to end (read -> from_chain -> score) against hand
computation.

Metric convention (prm.evaluation.step_f1): a step scored strictly below the threshold is predicted
erroneous; positive class = correct step; F1 = 2TP / (2TP + FP + FN), negative F1 = 2TN / (2TN + FN + FP).
"""

from __future__ import annotations

import copy
import json
import math
from fractions import Fraction as F
from pathlib import Path

import pytest

from prm.data.errors import RecordError, SkipReport
from prm.data.formats import detect_format, load_json_records, read_records
from prm.data.formats.prmbench import read_prmbench
from prm.data.formats.visualprocessbench import read_visualprocessbench
from prm.data.records import PRMBenchRecord, StepChain, VisualProcessBenchRecord
from prm.evaluation.prmbench import prmbench
from prm.evaluation.visualprocessbench import visualprocessbench

OWN = Path(__file__).parent / "fixtures" / "formats"
PRMBENCH = OWN / "prmbench.jsonl"
VISUALPROCESSBENCH = OWN / "visualprocessbench.jsonl"
EXACT = {"rel": 1e-12, "abs": 0}


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def _prmbench_rows() -> list[dict]:
    return load_json_records(PRMBENCH)


def _vpb_rows() -> list[dict]:
    return load_json_records(VISUALPROCESSBENCH)


def test_both_formats_are_detected():
    assert detect_format(PRMBENCH) == "prmbench"
    assert detect_format(VISUALPROCESSBENCH) == "visualprocessbench"


# --------------------------------------------------------------------------- PRMBench


def test_prmbench_fixture_chains_exactly():
    report = SkipReport(str(PRMBENCH))
    chains = read_records(PRMBENCH, report=report)
    rows = _prmbench_rows()
    # Records 0 and 4 are the redundency records of problems hand_p1 and hand_p2: each adds, just
    # before its own chain, the chain of its original_process (every step correct).
    assert [c.id for c in chains] == [
        "correct/hand_p1",
        "redundency/hand_p1",
        "confidence/hand_p1",
        "circular/hand_p2",
        "multi_solutions/hand_ms1",
        "correct/hand_p2",
        "redundency/hand_p2",
    ]
    # error_steps (1-based) -> labels: [3] of 4 -> step 2 wrong; [2, 3] of 3; [1, 3] of 4; none; [2] of 4.
    assert [c.labels for c in chains] == [
        [1.0, 1.0, 1.0],
        [1.0, 1.0, 0.0, 1.0],
        [1.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 1.0],
        [1.0, 1.0, 1.0],
        [1.0, 1.0, 1.0],
        [1.0, 0.0, 1.0, 1.0],
    ]
    assert [c.domain for c in chains] == [
        "correct",
        "redundency",
        "confidence",
        "circular",
        "multi_solutions",
        "correct",
        "redundency",
    ]
    assert chains[0] == StepChain(
        id="correct/hand_p1",
        question=rows[0]["original_question"],
        steps=rows[0]["original_process"],
        labels=[1.0, 1.0, 1.0],
        domain="correct",
        meta={"benchmark": "prmbench", "classification": "correct", "idx": "hand_p1"},
    )
    assert chains[2] == StepChain(
        id="confidence/hand_p1",
        question=rows[1]["modified_question"],
        steps=rows[1]["modified_process"],
        labels=[1.0, 0.0, 0.0],
        domain="confidence",
        meta={
            "benchmark": "prmbench",
            "classification": "confidence",
            "idx": "hand_p1",
            "modified_steps": [2, 3],
            "reason": rows[1]["reason"],
        },
    )
    # 5 file records read; 7 chains kept, 2 of them the added correct processes.
    assert (report.read, report.kept, report.total_skipped) == (5, 7, 0)
    assert dict(report.changed) == {"added_correct_process": 2}


def test_prmbench_without_correct_processes_and_with_a_duplicate(tmp_path):
    rows = _prmbench_rows()
    path = _write(tmp_path / "prm.jsonl", [*rows, copy.deepcopy(rows[2])])  # circular/hand_p2 again
    report = SkipReport(str(path))
    chains = read_prmbench(path, report=report, correct_processes=False)
    assert [c.id for c in chains] == [
        "redundency/hand_p1",
        "confidence/hand_p1",
        "circular/hand_p2",
        "multi_solutions/hand_ms1",
        "redundency/hand_p2",
    ]
    # The repeated (classification, idx) is left out, as the reference evaluation does, and counted.
    assert (report.read, report.kept, dict(report.skipped)) == (6, 5, {"duplicate": 1})
    assert not report.changed


def test_prmbench_round_trip_through_from_chain():
    rows = _prmbench_rows()
    records = [PRMBenchRecord.from_chain(chain) for chain in read_prmbench(PRMBENCH)]
    # Record 2 of the file (circular, error_steps [1, 3] 1-based) -> 0-based [0, 2].
    circular = records[3]
    assert circular == PRMBenchRecord(
        id="circular/hand_p2",
        question=rows[2]["modified_question"],
        steps=rows[2]["modified_process"],
        error_steps=[0, 2],
        classification="circular",
        meta={
            "benchmark": "prmbench",
            "classification": "circular",
            "idx": "hand_p2",
            "modified_steps": [1, 3],
            "reason": rows[2]["reason"],
        },
    )
    # Every published record's 1-based error steps come back 0-based; the correct chains have none.
    modified = [r for r in records if r.classification != "correct"]
    assert [r.error_steps for r in modified] == [[step - 1 for step in row["error_steps"]] for row in rows]
    assert [r.error_steps for r in records if r.classification == "correct"] == [[], []]
    assert records[3].step_correct == [False, True, False, True]


def test_prmbench_from_chain_refuses_foreign_chains_and_soft_labels():
    chain = read_prmbench(PRMBENCH)[1]
    untagged = StepChain("x", "q", ["a"], [1.0])
    with pytest.raises(ValueError, match=r"chain 'x' is not a PRMBench chain: meta\['benchmark'\] is None"):
        PRMBenchRecord.from_chain(untagged)
    soft = StepChain(chain.id, chain.question, chain.steps, [1.0, 0.5, 0.0, 1.0], meta=chain.meta)
    with pytest.raises(ValueError, match=r"'redundency/hand_p1': label 0.5 of step 1 is neither 0.0"):
        PRMBenchRecord.from_chain(soft)
    unlabelled = StepChain(chain.id, chain.question, chain.steps, [1.0, None, 0.0, 1.0], meta=chain.meta)
    with pytest.raises(ValueError, match=r"label None of step 1"):
        PRMBenchRecord.from_chain(unlabelled)


@pytest.mark.parametrize(
    "record, change, field, message",
    [
        # Record 1 (confidence) has 3 steps; the published error steps are 1-based, so 0 is invalid.
        (1, {"error_steps": [0]}, r"error_steps\[0\]", r"error step 0 is outside 1\.\.3 .*1-based"),
        (1, {"error_steps": [2, 4]}, r"error_steps\[1\]", r"error step 4 is outside 1\.\.3"),
        (1, {"error_steps": [2.0]}, r"error_steps\[0\]", "expected an integer, got 2.0"),
        (1, {"error_steps": "2"}, "error_steps", "expected a list"),
        (1, {"classification": "redundancy"}, "classification", "unknown class 'redundancy'"),
        (1, {"classification": "correct"}, "classification", "unknown class 'correct'"),
        (1, {"modified_process": []}, "modified_process", "no steps"),
        (1, {"modified_process": ["a", " "]}, r"modified_process\[1\]", "empty step"),
        (1, {"idx": None}, "idx", "missing required field"),
        (1, {"modified_question": 3}, "modified_question", "expected a string"),
        # The original process is read only for a redundency record (the correct chain's source).
        (0, {"original_process": None}, "original_process", "missing required field"),
    ],
)
def test_prmbench_malformed_records_name_file_record_field(tmp_path, record, change, field, message):
    rows = _prmbench_rows()
    rows[record].update(change)
    path = _write(tmp_path / "prmtest.jsonl", rows)
    with pytest.raises(RecordError, match=rf"prmtest\.jsonl, record {record}, field '{field}': {message}"):
        read_prmbench(path)


def test_prmbench_original_process_is_not_needed_without_correct_processes(tmp_path):
    rows = _prmbench_rows()
    rows[0]["original_process"] = None
    chains = read_prmbench(_write(tmp_path / "p.jsonl", rows), correct_processes=False)
    assert len(chains) == 5


def test_prmbench_score_end_to_end():
    chains = read_records(PRMBENCH, format="prmbench")
    records = [PRMBenchRecord.from_chain(chain) for chain in chains]
    scores = [
        [0.9, 0.8, 0.7],  # correct/hand_p1   [T T T]:   TP 3
        [0.9, 0.6, 0.4, 0.3],  # redundency/p1 [T T F T]: TP TP TN FN
        [0.8, 0.2, 0.7],  # confidence/p1     [T F F]:   TP TN FP
        [0.6, 0.9, 0.1, 0.8],  # circular/p2   [F T F T]: FP TP TN TP
        [0.9, 0.4, 0.95],  # multi_solutions  [T T T]:   TP FN TP
        [0.3, 0.9, 0.9],  # correct/hand_p2   [T T T]:   FN TP TP
        [0.7, 0.45, 0.5, 0.2],  # redundency/p2 [T F T T]: TP TN TP (0.5 is not below 0.5) FN
    ]
    result = prmbench(scores, records, threshold=0.5)
    # Overall pool = the nine classes (correct left out): TP 2+1+2+2+2 = 9, TN 1+1+1+0+1 = 4,
    # FP 0+1+1+0+0 = 2, FN 1+0+0+1+1 = 3. F1 = 18/23, negative F1 = 8/13,
    # PRMScore = (18/23 + 8/13) / 2 = (234 + 184) / 598 = 209/299.
    c = result.overall.confusion
    assert (c.tp, c.tn, c.fp, c.fn, result.overall.chains) == (9, 4, 2, 3, 5)
    assert result.prm_score == pytest.approx(float(F(209, 299)), **EXACT)
    # redundency: TP 4, TN 2, FN 2 -> F1 8/10, negative F1 4/6 -> (4/5 + 2/3) / 2 = 11/15.
    assert result.classes["redundency"].score == pytest.approx(float(F(11, 15)), **EXACT)
    # confidence: TP 1, TN 1, FP 1 -> 2/3 and 2/3 -> 2/3.
    assert result.classes["confidence"].score == pytest.approx(float(F(2, 3)), **EXACT)
    # circular: TP 2, TN 1, FP 1 -> 4/5 and 2/3 -> 11/15.
    assert result.classes["circular"].score == pytest.approx(float(F(11, 15)), **EXACT)
    # multi_solutions (F1 alone): TP 2, FN 1 -> 4/5.
    assert result.classes["multi_solutions"].score == pytest.approx(float(F(4, 5)), **EXACT)
    # correct: TP 5, FN 1 -> F1 10/11, no erroneous step so negative F1 0 (one FN predicted erroneous)
    # -> (10/11 + 0) / 2 = 5/11.
    assert result.classes["correct"].score == pytest.approx(float(F(5, 11)), **EXACT)
    assert result.classes["correct"].chains == 2
    # simplicity = mean(redundency, circular) = 11/15; soundness has classes without records: NaN.
    assert result.categories["simplicity"] == pytest.approx(float(F(11, 15)), **EXACT)
    assert math.isnan(result.categories["soundness"])


# --------------------------------------------------------------------------- VisualProcessBench


def test_visualprocessbench_fixture_chains_exactly():
    report = SkipReport(str(VISUALPROCESSBENCH))
    chains = read_records(VISUALPROCESSBENCH, report=report)
    rows = _vpb_rows()
    image = lambda name: str(OWN / "images" / name)  # noqa: E731 - resolved under the file's folder
    assert [c.id for c in chains] == ["MathVision/0", "MathVision/1", "MMMU/2", "MMMU/3", "MathVision/4"]
    assert [c.labels for c in chains] == [
        [1.0, 1.0, 0.0],
        [None, 1.0, 0.0, 0.0],  # row 1: response given as a JSON string, step 0 neutral
        [1.0, 1.0],
        [0.0, 1.0, 1.0],
        [1.0, 0.0],
    ]
    assert chains[1] == StepChain(
        id="MathVision/1",
        question=rows[1]["question"],
        steps=json.loads(rows[1]["response"])["steps"],
        labels=[None, 1.0, 0.0, 0.0],
        images=[image("vpb_bars.png")],
        domain="MathVision",
        meta={
            "benchmark": "visualprocessbench",
            "data_source": "MathVision",
            "policy_model": "hand-written",
            "answer": "6",
        },
    )
    assert chains[2].images == [image("vpb_circle.png"), image("vpb_bars.png")]
    assert (report.read, report.kept, report.total_skipped) == (5, 5, 0)


def test_visualprocessbench_ids_images_and_policies(tmp_path):
    rows = _vpb_rows()
    rows[0]["id"] = "vpb-a"
    rows[2]["image"] = json.dumps(rows[2]["image"])  # a JSON string of the list
    rows[3]["image"] = "images/gone.png"  # one path, missing
    rows[4].pop("image")  # no image at all
    path = _write(tmp_path / "test.jsonl", rows)
    with pytest.raises(RecordError, match=r"test\.jsonl, record 3, field 'image': image not found"):
        read_visualprocessbench(path, data_root=OWN)
    report = SkipReport(str(path))
    chains = read_visualprocessbench(path, data_root=OWN, missing_image="skip", report=report)
    assert [c.id for c in chains] == ["vpb-a", "MathVision/1", "MMMU/2", "MathVision/4"]
    assert chains[2].images == [str(OWN / "images" / "vpb_circle.png"), str(OWN / "images" / "vpb_bars.png")]
    assert chains[3].images == []
    assert (report.read, report.kept, dict(report.skipped)) == (5, 4, {"missing_image": 1})


def test_visualprocessbench_round_trip_through_from_chain():
    rows = _vpb_rows()
    chains = read_visualprocessbench(VISUALPROCESSBENCH)
    records = [VisualProcessBenchRecord.from_chain(chain) for chain in chains]
    assert records[1] == VisualProcessBenchRecord(
        id="MathVision/1",
        question=rows[1]["question"],
        steps=json.loads(rows[1]["response"])["steps"],
        process_correctness=[0, 1, -1, -1],
        data_source="MathVision",
        images=[str(OWN / "images" / "vpb_bars.png")],
        answer="6",
        policy_model="hand-written",
        meta=chains[1].meta,
    )
    published = [
        row["response"] if isinstance(row["response"], dict) else json.loads(row["response"]) for row in rows
    ]
    assert [r.process_correctness for r in records] == [p["process_correctness"] for p in published]
    assert [r.data_source for r in records] == [row["data_source"] for row in rows]
    assert records[1].step_correct == [None, True, False, False]


def test_visualprocessbench_from_chain_refuses_foreign_chains_and_soft_labels():
    chain = read_visualprocessbench(VISUALPROCESSBENCH)[0]
    prm_chain = read_prmbench(PRMBENCH)[0]
    with pytest.raises(ValueError, match=r"'correct/hand_p1' is not a VisualProcessBench chain"):
        VisualProcessBenchRecord.from_chain(prm_chain)
    soft = StepChain(chain.id, chain.question, chain.steps, [1.0, 0.7, 0.0], meta=chain.meta)
    with pytest.raises(ValueError, match=r"'MathVision/0': label 0.7 of step 1 is not 1.0"):
        VisualProcessBenchRecord.from_chain(soft)


@pytest.mark.parametrize(
    "change, field, message",
    [
        (
            {"response": {"steps": ["a", "b", "c"], "process_correctness": [1, 2, -1]}},
            r"response\.process_correctness\[1\]",
            "label 2 is not one of 1 .correct., 0 .neutral., -1",
        ),
        (
            {"response": {"steps": ["a", "b", "c"], "process_correctness": [1, True, -1]}},
            r"response\.process_correctness\[1\]",
            "label True is not one of",
        ),
        (
            {"response": {"steps": ["a", "b", "c"], "process_correctness": [1, -1]}},
            r"response\.process_correctness",
            "2 labels for 3 steps",
        ),
        (
            {"response": json.dumps({"steps": ["a"], "process_correctness": [1, 1]})},
            r"response\.process_correctness",
            "2 labels for 1 steps",
        ),
        ({"response": {"steps": [], "process_correctness": []}}, r"response\.steps", "no steps"),
        ({"response": {"steps": "a b", "process_correctness": [1]}}, r"response\.steps", "expected a list"),
        ({"response": "{not json"}, "response", "a JSON string that does not parse"),
        ({"response": None}, "response", "missing required field"),
        ({"data_source": None}, "data_source", "missing required field"),
        ({"image": ["../vpb_triangle.png"]}, "image", r"leaves the image root through '\.\.'"),
        ({"image": ["/etc/hostname"]}, "image", "is absolute"),
    ],
)
def test_visualprocessbench_malformed_rows_name_file_record_field(tmp_path, change, field, message):
    rows = _vpb_rows()
    rows[2].update(change)
    path = _write(tmp_path / "test.jsonl", rows)
    with pytest.raises(RecordError, match=rf"test\.jsonl, record 2, field '{field}': .*{message}"):
        read_visualprocessbench(path, data_root=OWN)


def test_visualprocessbench_score_end_to_end():
    chains = read_records(VISUALPROCESSBENCH, format="visualprocessbench")
    records = [VisualProcessBenchRecord.from_chain(chain) for chain in chains]
    scores = [
        [0.9, 0.3, 0.2],  # MathVision/0 [T T F]:      TP FN TN
        [0.1, 0.8, 0.6, 0.4],  # MathVision/1 [- T F F]: (neutral, not counted) TP FP TN
        [0.7, 0.55],  # MMMU/2 [T T]:                  TP TP
        [0.6, 0.2, 0.9],  # MMMU/3 [F T T]:            FP FN TP
        [0.5, 0.49],  # MathVision/4 [T F]:            TP (0.5 is not below 0.5) TN
    ]
    result = visualprocessbench(scores, records, threshold=0.5)
    # MathVision: TP 3, FN 1, TN 3, FP 1 -> F1 6/8, negative F1 6/8 -> macro F1 3/4.
    # MMMU: TP 3, FP 1, FN 1, TN 0 -> F1 6/8 = 3/4, negative F1 0 -> macro F1 3/8.
    # Overall: TP 6, FN 2, TN 3, FP 2 -> F1 12/16 = 3/4, negative F1 6/10 = 3/5 -> (3/4 + 3/5) / 2 = 27/40.
    assert list(result.sources) == ["MathVision", "MMMU"]
    assert result.sources["MathVision"].score == pytest.approx(float(F(3, 4)), **EXACT)
    assert result.sources["MMMU"].score == pytest.approx(float(F(3, 8)), **EXACT)
    c = result.overall.confusion
    assert (c.tp, c.fn, c.tn, c.fp) == (6, 2, 3, 2)
    assert result.macro_f1 == pytest.approx(float(F(27, 40)), **EXACT)
