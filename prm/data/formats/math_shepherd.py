"""Math-Shepherd (Wang et al., 2024; Hugging Face ``peiyi9979/Math-Shepherd``), text-only.

``math_shepherd``: ``input, label, task`` -> step chains with hard Monte Carlo labels.

The schema, from the data set card: ``input`` is the problem followed by the step-by-step solution,
each step ``Step k: ...`` ended by the step tag ``ки``; ``label`` is the same text with each tag
replaced by ``+`` or ``-`` (the automatic, completion-based label of that step); ``task`` is
``GSM8K`` or ``MATH``. The card's example::

    If Buzz bought a pizza with 78 slices ... what's twenty less the number of slices ...?
    Step 1: The total ratio representing the pizza is 5+8 = <<5+8=13>>13. ки
    Step 2: The waiter ate 13 x 8 / 13 = <<13*8/13=6>>6 slices of the pizza. ки

The question and step 1 share the text before the first tag; TRL's conversion script
(huggingface/trl ``examples/datasets/math_shepherd.py``) splits them at ``Step 1:`` (``step 1:``
in some rows) and lists rows whose question itself holds a tag (annotation errors) or has no
``Step 1:``: such rows are counted and left out here (``unsplit``), not repaired by guessing.
"""

from __future__ import annotations

import re
from pathlib import Path

from prm.data.errors import SkipReport
from prm.data.formats.registry import register_format
from prm.data.formats.source import Row, Source, check_choice
from prm.data.records import StepChain

STEP_TAG = "ки"  # Cyrillic "ki", the published data's step tag
LABEL_MARKS = {"+": 1.0, "-": 0.0}
FIRST_STEP = re.compile(r"[Ss]tep 1:")


def looks_like_math_shepherd(record: dict) -> bool:
    """The detection signature: ``input`` and ``label`` are both strings."""
    return isinstance(record.get("input"), str) and isinstance(record.get("label"), str)


@register_format("math_shepherd", signature=looks_like_math_shepherd, priority=25)
def read_math_shepherd(
    path: str | Path,
    data_root: str | Path | None = None,
    missing_image: str = "error",
    report: SkipReport | None = None,
    *,
    allow_outside_paths: bool = False,
    domain: str | None = None,
    step_tag: str = STEP_TAG,
    unsplit: str = "skip",
) -> list[StepChain]:
    """Math-Shepherd: ``input`` (question + steps, each ended by ``step_tag``), ``label`` (the same
    text with each tag replaced by ``+`` / ``-``), ``task`` -> chains labelled 1.0 / 0.0 per step.

    - Steps: ``input`` split at the tags; no text but whitespace may follow the last tag, no step may
      be empty, and there must be at least one tag. Step texts keep their ``Step k:`` prefix.
    - Labels: the character of ``label`` where each tag stood: ``label`` must be exactly as long as
      ``input`` with each tag shortened to one character (else the tag and label counts cannot
      match: an error naming ``label``), and each such character must be ``+`` or ``-`` (an error
      naming ``label``, the character and the step).
    - Question: the text before the first ``Step 1:`` / ``step 1:`` of the text before the first tag;
      the rest of that text is step 1. A row without it, or with nothing before it, cannot be split
      into question and step 1: ``unsplit="skip"`` (default) counts it as ``unsplit_question``,
      ``"error"`` raises an error naming ``input``.
    - ``domain``: ``task`` (GSM8K / MATH), else the ``domain`` argument, else the file's stem.
      Ids: the record's index (the published rows have no id).

    ``data_root`` / ``missing_image`` / ``allow_outside_paths`` are accepted for a uniform signature
    and ignored (no images). Raises ValueError for an empty ``step_tag`` or an unknown ``unsplit``.
    """
    check_choice("unsplit", unsplit, ("skip", "error"))
    if not step_tag:
        raise ValueError("step_tag must not be empty")
    source = Source(path, data_root, missing_image, report, domain, allow_outside_paths=allow_outside_paths)

    def build(row: Row) -> StepChain | None:
        text = row.get("input", str)
        marked = row.get("label", str)
        task = row.get("task", str, required=False)
        *chunks, tail = text.split(step_tag)
        if not chunks:
            raise row.error("input", f"no step tag {step_tag!r}")
        if tail.strip():
            raise row.error("input", f"text after the last step tag {step_tag!r}: {tail.strip()[:60]!r}")
        expected = len(text) - len(chunks) * (len(step_tag) - 1)
        if len(marked) != expected:
            message = (
                f"{len(marked)} characters, expected {expected}: the input with each of its {len(chunks)} "
                f"step tags {step_tag!r} replaced by one '+' or '-'"
            )
            raise row.error("label", message)
        labels, position = [], 0
        for number, chunk in enumerate(chunks):
            position += len(chunk)
            mark = marked[position]
            if mark not in LABEL_MARKS:
                where = f"character {position} (where step tag {number} stands)"
                message = f"{where} is {mark!r}, expected '+' or '-'"
                raise row.error("label", message)
            labels.append(LABEL_MARKS[mark])
            position += 1
        start = FIRST_STEP.search(chunks[0])
        question = chunks[0][: start.start()].strip() if start else ""
        if not question:
            reason = "no 'Step 1:' before the first step tag" if start is None else "no text before 'Step 1:'"
            if unsplit == "error":
                raise row.error("input", f"{reason}: cannot tell the question from step 1")
            return row.skip("unsplit_question")
        steps = [chunks[0][start.start() :].strip(), *(chunk.strip() for chunk in chunks[1:])]
        if "" in steps:
            raise row.error("input", f"step {steps.index('')} is empty")
        meta: dict = {}
        return StepChain(
            id=row.unique_id(meta),
            question=question,
            steps=steps,
            labels=labels,
            domain=task or source.domain,
            meta=meta,
        )

    return source.read(build)
