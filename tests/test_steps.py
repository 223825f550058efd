"""Step splitting on the real published samples and on the edge cases of each rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prm.data.steps import extract_final_answer, split_candidate, split_dreamprm_input

PUBLISHED = Path(__file__).parent / "fixtures" / "published"


def _load(name: str) -> list[dict]:
    return json.loads((PUBLISHED / name).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- DreamPRM meta input


def test_dreamprm_input_real_sample_question_steps_answer():
    record = _load("dreamprm_meta_sample.json")[0]
    split = split_dreamprm_input(record["input"])
    assert split.question == (
        "Question: The following diagram shows the bacteriorhodopsin protein.This protein have quaternary "
        "structure.\nOptions: (A) True (B) False"
    )
    assert [step.splitlines()[0] for step in split.steps] == [
        "Step 1: Restate the question.",
        "Step 2: Gather evidence from the image.",
        "Step 3: Identify any background knowledge needed.",
        "Step 4: Reason with the current evidence.",
        "Step 5: Summarize and conclude with all the information.",
    ]
    assert split.steps[0] == (
        "Step 1: Restate the question.\n   - The question is asking whether the bacteriorhodopsin protein "
        "has a quaternary structure based on the provided diagram."
    )
    assert not any("Final answer" in step for step in split.steps)
    assert split.final_answer == "B"


def test_dreamprm_input_all_real_samples():
    records = _load("dreamprm_meta_sample.json")
    splits = [split_dreamprm_input(record["input"]) for record in records]
    assert [len(split.steps) for split in splits] == [5] * 10 + [0] * 5
    assert [split.final_answer for split in splits[:10]] == ["B", "D", "B", "D", "C", "C", "C", "A", "A", "B"]
    for split in splits:
        assert split.question.startswith("Question: ")
        assert "Step 1" not in split.question


def test_dreamprm_input_markdown_headings_and_preamble():
    split = split_dreamprm_input(_load("dreamprm_meta_sample.json")[6]["input"])
    assert split.steps[0].startswith("### Step 1: Restate the question\n")
    # The rule keeps whatever precedes Step 1 in the question, preamble included.
    assert split.question.endswith("(C) 1.52 m\n\nLet's analyze the question step by step.")
    assert split.final_answer == "C"


def test_dreamprm_input_restated_final_answer_stays_out_of_the_last_step():
    split = split_dreamprm_input(_load("dreamprm_meta_sample.json")[7]["input"])
    assert split.steps[-1].endswith("we can't determine the artist without seeing the image.")
    assert split.final_answer == "A"


def test_dreamprm_input_question_only_gives_zero_steps():
    text = _load("dreamprm_meta_sample.json")[10]["input"]
    assert split_dreamprm_input(text) == (text.strip(), [], None)


def test_dreamprm_input_out_of_sequence_heading_is_body_text():
    text = "Q?\nStep 1: a\nStep 3: quoted\nStep 2: b\n**Final answer:** C"
    split = split_dreamprm_input(text)
    assert split.steps == ["Step 1: a\nStep 3: quoted", "Step 2: b"]
    assert split.question == "Q?"
    assert split.final_answer == "C"


def test_dreamprm_input_without_final_answer_runs_to_the_end():
    assert split_dreamprm_input("Q\nStep 1: a\nStep 2: b\n") == ("Q", ["Step 1: a", "Step 2: b"], None)


# --------------------------------------------------------------------------- best-of-N candidates


def _published_steps(record: dict) -> list[str]:
    return [turn["value"] for turn in record["conversations"][2:] if turn["from"] == "human"]


# The published splitter cut these mid-sentence at an in-line number ("(378 + 2) = ...").
INLINE_NUMBER_DEFECT = {"test_Math_11", "test_Computer_Science_158", "test_Marketing_73"}


def test_candidate_split_matches_published_conversions():
    records = [r for r in _load("dreamprm15_meta_sample.json") if r["response"].startswith("[Reasoning]")]
    assert len(records) == 13
    matched = [r for r in records if r["id"] not in INLINE_NUMBER_DEFECT]
    for record in matched:
        assert split_candidate(record["response"]).steps == _published_steps(record), record["id"]
    assert len(matched) == 10


def test_candidate_split_does_not_cut_at_inline_numbers():
    record = next(r for r in _load("dreamprm15_meta_sample.json") if r["id"] == "test_Math_11")
    assert len(_published_steps(record)) == 3
    split = split_candidate(record["response"])
    assert split.steps[0].endswith("= 378 / (378 + 2) = 378 / 380 ≈ 0.9947368 ≈ 0.995.")
    assert split.steps[1:] == ["Answer: D"]


def test_candidate_split_numbered_and_paragraph_modes():
    numbered = split_candidate(_load("dreamprm15_meta_sample.json")[1]["response"])
    assert [step[:20] for step in numbered.steps] == [
        "The cartoon shows a ",
        "That imagery directl",
        "The core conflict is",
        "Answer: B",
    ]
    assert numbered.final_answer == "B"
    paragraphs = split_candidate("[Reasoning]\nFirst idea.\nSame paragraph.\n\n  \nSecond idea.\n\nAnswer: 7")
    assert paragraphs == (["First idea.\nSame paragraph.", "Second idea.", "Answer: 7"], "7")


def test_candidate_split_preamble_step_markers_and_nested_numbers():
    text = (
        "[Reasoning]\nLet me look.\n1. Count: 2) items\n   1. nested stays\nStep 2: Add.\n3) Done.\nAnswer: 5"
    )
    assert split_candidate(text).steps == [
        "Let me look.",
        "Count: 2) items\n   1. nested stays",
        "Add.",
        "Done.",
        "Answer: 5",
    ]


def test_candidate_single_numbered_line_is_paragraph_mode():
    assert split_candidate("[Reasoning]\n1. Only one.\n\nAnswer: A").steps == ["1. Only one.", "Answer: A"]


def test_candidate_bare_answer_and_empty_text():
    assert split_candidate("D") == (["Answer: D"], "D")
    assert split_candidate("  ") == ([], None)
    assert split_candidate("") == ([], None)


def test_candidate_without_answer_or_tag():
    assert split_candidate("[Reasoning]\nThinking.\n\nMore.") == (["Thinking.", "More."], None)
    assert split_candidate("Two words.\n\nAnswer: B") == (["Two words.", "Answer: B"], "B")


def test_candidate_answer_variants():
    assert split_candidate("[Reasoning]\nx\n**Final answer:** C") == (["x", "Answer: C"], "C")
    assert split_candidate("[Reasoning]\nx\nAnswer:\nB") == (["x", "Answer: B"], "B")
    # The answer section starts at the first answer line and is kept whole; the last one is the answer.
    assert split_candidate("[Reasoning]\nx\nAnswer: A\nwait\nAnswer: B") == (
        ["x", "Answer: A\nwait\nAnswer: B"],
        "B",
    )


# --------------------------------------------------------------------------- final answers


@pytest.mark.parametrize(
    "text, answer",
    [
        ("Step 1: x\nFinal answer: B", "B"),
        ("Final answer: A\n(Note ...)\nFinal answer: C", "C"),
        ("ANSWER: 42 ", "42"),
        ("## Answer: **B**", "B"),
        ("so the result is \\(\\boxed{\\frac{1}{2}}\\).", "\\frac{1}{2}"),
        ("\\boxed{1} then \\boxed{2}", "2"),
        ("Answer: 3\nbut also \\boxed{4}", "3"),
        ("the answer is 5", None),
        ("\\boxed{unclosed", None),
        ("Answer:", None),
    ],
)
def test_extract_final_answer(text, answer):
    assert extract_final_answer(text) == answer


def test_line_endings_and_unusual_spaces_do_not_change_splitting():
    from prm.data.steps import normalize_whitespace, split_candidate, split_dreamprm_input

    plain = "Q?\nStep 1: a\nStep 2: b\nFinal answer: 3"
    for variant in (
        plain.replace("\n", "\r\n"),
        plain.replace("\n", "\r"),
        plain.replace("\n", "\u2028"),
        plain.replace("\nStep 2", "\n\u00a0Step 2"),
    ):
        assert (
            split_dreamprm_input(variant)
            == split_dreamprm_input(plain)
            == ("Q?", ["Step 1: a", "Step 2: b"], "3")
        )
    candidate = "[Reasoning]\nfirst part\n\nsecond part\nAnswer: 7"
    assert split_candidate(candidate.replace("\n", "\r\n")) == split_candidate(candidate)
    assert split_candidate(candidate).steps == ["first part", "second part", "Answer: 7"]
    assert normalize_whitespace("a\r\nb\x0cc\u3000d\te") == "a\nb\nc d\te"
