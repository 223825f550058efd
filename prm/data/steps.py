"""Step splitting: turn a free-text solution into the steps a PRM scores, and read its final answer.

Two published layouts need it (the other formats ship their steps already split):

- DreamPRM meta ``input``: question, then ``Step 1: ...``, ``Step 2: ...``, then ``Final answer: X``
  (:func:`split_dreamprm_input`);
- DreamPRM-1.5 best-of-N candidates: ``[Reasoning]`` ... ``Answer: X`` (:func:`split_candidate`).

Both rules are plain functions of the text (no model, no randomness), so a chain is always split the
same way at training, meta and test time. Line endings and unusual whitespace are normalised first
(:func:`normalize_whitespace`), so a file written with CRLF or a non-breaking space before ``Step 2``
splits exactly like its plain-LF twin.
"""

from __future__ import annotations

import re
from typing import NamedTuple, TypeVar

from prm.answers import ANSWER_LINE, extract_answer

T = TypeVar("T")

# A DreamPRM step heading: "Step 3: ...", "### Step 3", "**Step 3:**", at the start of a line.
_STEP_HEADING = re.compile(
    r"^[ \t]*(?:#{1,6}[ \t]*)?(?:\*\*)?step[ \t]*(\d+)\b", re.IGNORECASE | re.MULTILINE
)
# A numbered step line of a candidate: "1. ...", "2) ...", "Step 3: ...", at column 0.
_NUMBERED_LINE = re.compile(r"^(?:step[ \t]*(\d+)[ \t]*[:.)]?|(\d+)[.)])(?:[ \t]+|$)", re.IGNORECASE)
_BLANK_LINES = re.compile(r"\n[ \t]*(?:\n[ \t]*)+")
_REASONING_TAG = "[Reasoning]"


# Line breaks other than "\n": CRLF, lone CR, vertical tab, form feed, NEL, line / paragraph separators.
_LINE_BREAKS = re.compile("\r\n|[\r\x0b\x0c\x85\u2028\u2029]")
# Horizontal spaces other than " " and tab: no-break, en/em/thin/... spaces, narrow no-break, ideographic.
_SPACES = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")


def normalize_whitespace(text: str) -> str:
    r"""``text`` with every line break written ``\n`` and every horizontal Unicode space ``" "``.

    CRLF and lone CR, vertical tab, form feed, U+0085, U+2028 and U+2029 become ``\n``; U+00A0,
    U+1680, U+2000-U+200A, U+202F, U+205F and U+3000 become a space. Tabs are kept.
    """
    return _SPACES.sub(" ", _LINE_BREAKS.sub("\n", text))


class DreamPRMInput(NamedTuple):
    question: str
    steps: list[str]
    final_answer: str | None


class CandidateSteps(NamedTuple):
    steps: list[str]
    final_answer: str | None


def extract_final_answer(text: str) -> str | None:
    """The answer a solution commits to, or None: :func:`prm.answers.extract_answer` (strict)."""
    return extract_answer(normalize_whitespace(text))


def _in_sequence(numbered: list[tuple[int, T]]) -> list[T]:
    """Keep only markers numbered 1, 2, 3, ... in order: "Step 7" quoted inside a step is body text."""
    kept: list[T] = []
    for number, item in numbered:
        if number == len(kept) + 1:
            kept.append(item)
    return kept


def split_dreamprm_input(text: str) -> DreamPRMInput:
    """Split a DreamPRM meta ``input`` (question + response) into question, steps and final answer.

    Rule: step headings are lines starting with ``Step N`` (optionally after markdown ``#`` or
    ``**``), numbered 1, 2, 3, ... in order (a heading with any other number is body text). The
    question is the text before ``Step 1``; step k runs from its heading to the next heading, the last
    step to the first ``Final answer:`` line after it (or the end). Steps keep their heading
    (``Step 1: Restate the question. ...``), as in DreamPRM's own prefixes. The final answer is
    :func:`extract_final_answer` of the text from that ``Final answer:`` line on. A text without
    ``Step 1`` (the published meta file has question-only records) gives zero steps, the whole text as
    question and no answer: the caller decides what to do with it.
    """
    text = normalize_whitespace(text)
    headings = _in_sequence([(int(m.group(1)), m) for m in _STEP_HEADING.finditer(text)])
    if not headings:
        return DreamPRMInput(text.strip(), [], None)
    question = text[: headings[0].start()].strip()
    ends = [heading.start() for heading in headings[1:]]
    tail_start = headings[-1].start()
    answer_line = next((m for m in ANSWER_LINE.finditer(text, tail_start) if m.group("final")), None)
    ends.append(answer_line.start() if answer_line else len(text))
    steps = [text[heading.start() : end].strip() for heading, end in zip(headings, ends)]
    final_answer = extract_final_answer(text[answer_line.start() :]) if answer_line else None
    return DreamPRMInput(question, steps, final_answer)


def split_candidate(text: str) -> CandidateSteps:
    """Split a DreamPRM-1.5 best-of-N candidate into steps ending with an ``Answer: X`` step.

    Rule:

    1. The reasoning is the text after ``[Reasoning]`` (the whole text when the tag is absent) up to
       the first line starting with ``Answer:`` / ``Final answer:``; the answer section is the rest.
    2. Numbered mode: when at least two column-0 lines start with ``1.``/``1)``/``Step 1:``,
       ``2.``/..., numbered 1, 2, ... in order, a step starts at each such line (the marker is
       removed); text before ``1.`` is a step of its own. Otherwise paragraph mode: steps are the
       blank-line separated paragraphs. Empty steps are dropped.
    3. The answer section ``Answer: X ...`` becomes a last step ``Answer: X ...`` (all its text after
       the marker's colon, markdown ``**`` removed); the final answer is :func:`extract_final_answer`
       of that section.
    4. A bare answer (no tag, no answer line, one word such as ``D``) is the answer itself:
       steps ``["Answer: D"]``, final answer ``D``.

    Unlike the published splitter, numbers inside a line ("(378 + 2) = 380") never split a step: it
    cut steps mid-sentence there.
    """
    text = normalize_whitespace(text)
    body = text
    tag = text.find(_REASONING_TAG)
    if tag >= 0:
        body = text[tag + len(_REASONING_TAG) :]
    answer_line = next(iter(ANSWER_LINE.finditer(body)), None)
    if tag < 0 and answer_line is None and len(text.split()) == 1:
        return CandidateSteps([f"Answer: {text.strip()}"], text.strip())
    reasoning = body[: answer_line.start()] if answer_line else body
    steps = _split_reasoning(reasoning)
    final_answer = None
    if answer_line:
        answer_text = body[answer_line.start("value") :].strip().lstrip("*").strip()
        if answer_text:
            steps.append(f"Answer: {answer_text}")
        final_answer = extract_final_answer(body[answer_line.start() :])
    return CandidateSteps(steps, final_answer)


def _split_reasoning(reasoning: str) -> list[str]:
    lines = reasoning.strip().splitlines()
    markers = [(i, _NUMBERED_LINE.match(line)) for i, line in enumerate(lines)]
    numbered = [(int(m.group(1) or m.group(2)), (i, m)) for i, m in markers if m]
    starts = dict(_in_sequence(numbered))
    if len(starts) >= 2:
        steps, current = [], []
        for i, line in enumerate(lines):
            if i in starts:
                steps.append("\n".join(current))
                current = [line[starts[i].end() :]]
            else:
                current.append(line)
        steps.append("\n".join(current))
    else:
        steps = _BLANK_LINES.split(reasoning)
    return [step.strip() for step in steps if step.strip()]
