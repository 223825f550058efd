"""LLaVA-style multi-turn records of DreamPRM-1.5 (Cao et al., 2025) and VisualPRM (Wang et al., 2025).

``conversations``: ``id, image, conversations: [{from, value}]``, one gpt ``+`` / ``-`` turn after
each step; step chains for training, or whole chains labelled by ``true_false`` for the meta set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prm.data.errors import SkipReport
from prm.data.formats.registry import has_keys, register_format
from prm.data.formats.source import Row, Source, check_choice
from prm.data.records import LabelledChain, StepChain
from prm.data.steps import extract_final_answer, split_candidate

QUESTION_HEADER = "### Question:"
SOLUTION_HEADER = "### Solution Process:"


# Above bestofn and dreamprm_meta: a conversations meta record carries true_false (and may carry input).
@register_format("conversations", signature=has_keys("conversations"), priority=80)
def read_conversations(
    path: str | Path,
    data_root: str | Path | None = None,
    missing_image: str = "error",
    report: SkipReport | None = None,
    *,
    allow_outside_paths: bool = False,
    kind: str = "auto",
    no_steps: str = "skip",
    domain: str | None = None,
) -> list[StepChain | LabelledChain]:
    """DreamPRM-1.5 / VisualPRM multi-turn records: ``id, image, conversations[{from, value}]``.

    System turns are ignored. The first other turn is human and starts with ``### Question:``; the
    question is its text after that header. VisualPRM puts step 1 in the same turn after
    ``### Solution Process:``; DreamPRM-1.5 sends it as the next human turn. Every step turn is
    followed by a gpt turn whose value is exactly ``+`` or ``-``.

    ``kind="train"`` gives step chains (label 1.0 for ``+``, 0.0 for ``-``); ``"meta"`` gives whole
    chains labelled by ``true_false`` (the ``+`` turns are placeholders then, still checked);
    ``"auto"`` decides per record: meta when ``true_false`` is present. A meta chain's final answer
    comes from ``response`` (split like a best-of-N candidate) when present, else from its last step.
    Records without steps: ``no_steps`` as in :func:`prm.data.formats.dreamprm.read_dreamprm_meta`.
    """
    check_choice("kind", kind, ("train", "meta", "auto"))
    check_choice("no_steps", no_steps, ("skip", "error"))
    source = Source(path, data_root, missing_image, report, domain, allow_outside_paths=allow_outside_paths)

    def build(row: Row) -> StepChain | LabelledChain | None:
        is_meta = kind == "meta" or (kind == "auto" and row.obj.get("true_false") is not None)
        label = row.flag("true_false") if is_meta else None
        question, steps, marks = _parse_conversation(row)
        response = row.get("response", str, required=False)
        paths = row.image_field("image")
        if not steps:
            return row.no_steps(no_steps, "conversations")
        images = row.resolve(paths, "image")
        if images is None:
            return None
        meta: dict[str, Any] = {}
        record_id = row.unique_id(meta)
        if label is None:
            return StepChain(
                id=record_id,
                question=question,
                steps=steps,
                labels=[1.0 if mark == "+" else 0.0 for mark in marks],
                images=images,
                domain=source.domain,
                meta=meta,
            )
        if response is not None:
            final_answer = split_candidate(response).final_answer
        else:
            final_answer = extract_final_answer(steps[-1])
        return LabelledChain(
            id=record_id,
            question=question,
            steps=steps,
            label=label,
            images=images,
            domain=source.domain,
            final_answer=final_answer,
            meta=meta,
        )

    return source.read(build)


def _parse_conversation(row: Row) -> tuple[str, list[str], list[str]]:
    """(question, steps, +/- marks) of one record, checking the turn structure."""
    turns = []
    for position, turn in enumerate(row.get("conversations", list)):
        if not (
            isinstance(turn, dict)
            and turn.get("from") in ("system", "human", "gpt")
            and isinstance(turn.get("value"), str)
        ):
            raise row.error(
                f"conversations[{position}]",
                f"expected {{from: system|human|gpt, value: string}}, got {turn!r}",
            )
        if turn["from"] != "system":
            turns.append((position, turn["from"], turn["value"]))
    if not turns or turns[0][1] != "human" or not turns[0][2].lstrip().startswith(QUESTION_HEADER):
        where = f"conversations[{turns[0][0]}]" if turns else "conversations"
        raise row.error(where, f"the first non-system turn must be human and start with {QUESTION_HEADER!r}")
    question, _, first_step = turns[0][2].lstrip()[len(QUESTION_HEADER) :].partition(SOLUTION_HEADER)
    pending: tuple[int, str] | None = (turns[0][0], first_step.strip()) if first_step.strip() else None
    steps, marks = [], []
    for position, role, value in turns[1:]:
        where = f"conversations[{position}]"
        if role == "human":
            if pending is not None:
                raise row.error(where, "two step turns in a row: a step must be followed by a gpt + or -")
            if not value.strip():
                raise row.error(where, "empty step")
            pending = (position, value.strip())
        elif pending is None:
            raise row.error(where, "gpt turn without a step before it")
        elif value not in ("+", "-"):
            raise row.error(where, f"gpt turn must be exactly '+' or '-', got {value!r}")
        else:
            steps.append(pending[1])
            marks.append(value)
            pending = None
    if pending is not None:
        raise row.error(f"conversations[{pending[0]}]", "last step has no gpt + or - after it")
    return question.strip(), steps, marks
