"""PRM800K (Lightman et al., 2023, "Let's Verify Step by Step"; github.com/openai/prm800k).

``prm800k``: the raw human labels, ``prm800k/data/phase{1,2}_{train,test}.jsonl``, one labelled
solution per line -> one step chain per line, along the path the labeller took.

The schema, from the repository's README (its annotated example line):

- ``question.problem`` (the MATH problem), ``question.ground_truth_answer``; phase 2 also
  ``question.pre_generated_steps`` (the solution that was labelled);
- ``label.steps[]``, one object per step of the labelled solution: ``completions[]`` (candidate
  steps, each ``{text, rating, flagged}``; ``rating`` -1, 0 or +1, null when not rated),
  ``human_completion`` (phase 1: a step the labeller wrote when every completion was rated -1; null
  in phase 2) and ``chosen_completion`` (the index of the completion the solution continues with,
  null when the human completion was used). The README reconstructs the trajectory as the human
  completion when ``chosen_completion`` is null, else ``completions[chosen_completion].text``;
- ``label.finish_reason``: ``found_error`` (phase 2 stops labelling at the first error),
  ``solution``, ``bad_problem`` or ``give_up``.

In the README's example the last step has ``chosen_completion`` and ``human_completion`` both null
(finish reason ``found_error``): its first completion is the pre-generated step, rated -1, and the
others are alternatives labelled after the error. TRL's conversion script
(huggingface/trl ``examples/datasets/prm800k.py``) shows that a human completion is an object with
``text`` and that a step can have no completions at all (``completions`` null) at the end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prm.data.errors import SkipReport
from prm.data.formats.registry import register_format
from prm.data.formats.source import Row, Source, check_choice, is_kind
from prm.data.records import StepChain

NEUTRAL_LABELS: dict[str, float | None] = {
    "positive": 1.0,
    "negative": 0.0,
    "unsupervised": None,
    "half": 0.5,
}
"""What a neutral rating (0) becomes under each ``neutral=`` policy."""

RATINGS = (-1, 0, 1)


def looks_like_prm800k(record: dict) -> bool:
    """The detection signature: a ``question`` object and a ``label`` object with ``steps``."""
    label = record.get("label")
    return isinstance(record.get("question"), dict) and isinstance(label, dict) and "steps" in label


@register_format("prm800k", signature=looks_like_prm800k, priority=35)
def read_prm800k(
    path: str | Path,
    data_root: str | Path | None = None,
    missing_image: str = "error",
    report: SkipReport | None = None,
    *,
    allow_outside_paths: bool = False,
    domain: str | None = None,
    neutral: str = "positive",
    no_steps: str = "skip",
) -> list[StepChain]:
    """PRM800K labelled solutions -> one text-only step chain each, along the labeller's path.

    Step k of the chain (field paths ``label.steps[k]....`` in errors):

    - ``chosen_completion`` set: that completion (its index must exist), labelled by its rating;
    - else ``human_completion`` set: its ``text``, labelled by its rating when it has one, else 1.0
      (the README: labellers wrote "their own +1 step");
    - else (both null) the path ends here, which only the last step may do (else an error). If one
      of its completions is rated -1, the first such completion is the chain's last step, labelled
      0.0: in phase 2 this is the pre-generated step the labeller found wrong (the README's example:
      ``completions[0]`` is ``pre_generated_steps[2]``, rated -1, finish reason ``found_error``),
      and it is the step the record's error label is about. Otherwise (the labeller gave up, or the
      step has no completions) the step is left out and the chain ends before it.

    Ratings -> labels: +1 -> 1.0, -1 -> 0.0, null -> None (an unsupervised step), 0 (neutral: "not
    wrong, but no progress" in the README's words) -> ``NEUTRAL_LABELS[neutral]``: ``positive`` 1.0
    (default), ``negative`` 0.0, ``unsupervised`` None, ``half`` 0.5. The paper permits neutral
    labels so that the choice can be deferred; the default follows OpenR's PRM800K preprocessing
    (openreasoner/openr ``docs/docs/datasets.md``: neutral and positive steps are positive), which
    matches a PRM that scores whether a step is wrong; ``negative`` reproduces TRL's
    ``trl-lib/prm800k`` conversion (a step is positive only when rated +1).

    Every rating of every completion must be -1, 0, +1 or null (an error naming e.g.
    ``label.steps[3].completions[0].rating``); a taken step's ``text`` must be a non-empty string
    and its ``flagged`` a boolean or null. A chosen step
    rated -1 in mid-path (phase 1) keeps its 0.0 and the path goes on; the README says phase 2 stops
    at the first error, which the reader does not assume. ``meta``: ``finish_reason``, ``answer``
    (``question.ground_truth_answer``) and ``flagged_steps`` (positions of flagged steps) when present.
    A record whose path has no step is skipped as ``no_steps`` (``no_steps="error"``: an error).
    Ids: the record's index (PRM800K lines have no id). ``data_root`` / ``missing_image`` /
    ``allow_outside_paths`` are accepted for a uniform signature and ignored (no images).
    """
    check_choice("neutral", neutral, tuple(NEUTRAL_LABELS))
    check_choice("no_steps", no_steps, ("skip", "error"))
    neutral_label = NEUTRAL_LABELS[neutral]
    source = Source(path, data_root, missing_image, report, domain, allow_outside_paths=allow_outside_paths)

    def label_of(rating: int | None) -> float | None:
        if rating is None:
            return None
        return {1: 1.0, -1: 0.0}.get(rating, neutral_label)

    def build(row: Row) -> StepChain | None:
        question = row.get_path("question.problem", str)
        answer = row.get_path("question.ground_truth_answer", str, required=False)
        finish_reason = row.get_path("label.finish_reason", str, required=False)
        raw_steps = row.get_path("label.steps", list, required=False) or []  # null: no steps
        steps: list[str] = []
        labels: list[float | None] = []
        flagged: list[int] = []
        for position, raw in enumerate(raw_steps):
            where = f"label.steps[{position}]"
            step = row.check(raw, dict, where)
            completions = _completions(row, step, where)
            chosen = row.check(
                step.get("chosen_completion"), int, f"{where}.chosen_completion", required=False
            )
            human = row.check(step.get("human_completion"), dict, f"{where}.human_completion", required=False)
            if chosen is not None:
                if not 0 <= chosen < len(completions):
                    message = f"index {chosen} outside the {len(completions)} completions"
                    raise row.error(f"{where}.chosen_completion", message)
                completion, rating = completions[chosen]
                taken, is_flagged = _taken(row, completion, f"{where}.completions[{chosen}]")
                label = label_of(rating)
            elif human is not None:
                taken = _text(row, human.get("text"), f"{where}.human_completion.text")
                rating = _rating(row, human.get("rating"), f"{where}.human_completion.rating")
                is_flagged = False
                label = 1.0 if rating is None else label_of(rating)
            else:
                if position != len(raw_steps) - 1:
                    message = "no chosen or human completion, but later steps follow: the path is broken"
                    raise row.error(f"{where}.chosen_completion", message)
                wrong = next((index for index, entry in enumerate(completions) if entry[1] == -1), None)
                if wrong is None:
                    break
                taken, is_flagged = _taken(row, completions[wrong][0], f"{where}.completions[{wrong}]")
                label = 0.0
            if is_flagged:
                flagged.append(len(steps))
            steps.append(taken)
            labels.append(label)
        if not steps:
            return row.no_steps(no_steps, "label.steps")
        meta: dict[str, Any] = {}
        for key, value in (("finish_reason", finish_reason), ("answer", answer)):
            if value is not None:
                meta[key] = value
        if flagged:
            meta["flagged_steps"] = flagged
        return StepChain(
            id=row.unique_id(meta),
            question=question,
            steps=steps,
            labels=labels,
            domain=source.domain,
            meta=meta,
        )

    return source.read(build)


def _completions(row: Row, step: dict, where: str) -> list[tuple[dict, int | None]]:
    """(completion, rating) of each completion of a step, each an object with a valid rating;
    [] when ``completions`` is null."""
    raw = row.check(step.get("completions"), list, f"{where}.completions", required=False) or []
    entries = []
    for index, completion in enumerate(raw):
        at = f"{where}.completions[{index}]"
        completion = row.check(completion, dict, at)
        entries.append((completion, _rating(row, completion.get("rating"), f"{at}.rating")))
    return entries


def _taken(row: Row, completion: dict, at: str) -> tuple[str, bool]:
    """The text and the ``flagged`` mark of the completion a chain takes, checked."""
    flagged = row.check(completion.get("flagged"), bool, f"{at}.flagged", required=False)
    return _text(row, completion.get("text"), f"{at}.text"), bool(flagged)


def _text(row: Row, value: Any, field_name: str) -> str:
    text = row.check(value, str, field_name).strip()
    if not text:
        raise row.error(field_name, "empty step text")
    return text


def _rating(row: Row, value: Any, field_name: str) -> int | None:
    """A rating: -1, 0 or +1 (an integer, or a float equal to one, as a Parquet float column holds
    it), or None."""
    if value is None:
        return None
    if not is_kind(value, float) or value not in RATINGS:
        raise row.error(field_name, f"rating must be -1, 0, +1 or null, got {value!r}")
    return int(value)
