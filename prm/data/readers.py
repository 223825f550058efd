"""Readers for published PRM data formats: each turns one file into native records.

Every reader takes ``(path, data_root=None, missing_image="error", report=None)`` plus options of
its own, accepts a JSON array or JSON Lines, and returns native records
(:mod:`prm.data.records`). Conventions shared by all of them:

- A malformed record raises :class:`RecordError` naming the file, the record index (0-based, in
  file order) and the field; nothing is repaired by guessing.
- Nothing is dropped silently: a record left out (missing image under ``skip``, no steps) is counted
  in the :class:`SkipReport` by reason, and ``read`` / ``kept`` are added to (so one report can
  cover several files). Pass a report to log it yourself; without one, the reader logs its own.
  Skip reasons: ``missing_image``, ``no_steps`` (DreamPRM meta / conversations), ``empty_prefix``
  (DreamPRM train); records kept without their images count in ``changed`` under ``blank_image``
  (see :mod:`prm.data.images`).
- Ids are strings: the record's ``id`` when it has one, else its index. A repeated id gets a suffix
  (``x#2``, ``x#3``, ...) and keeps the original in ``meta["source_id"]``, because per-instance
  weights are keyed by id.
- ``domain``: the format's own domain field (DreamPRM ``dataset``), else the ``domain`` argument,
  else the file's stem (published files come one per source, e.g. ProcessBench ``gsm8k.json``).
- Text-only formats (TRL, ProcessBench) accept ``data_root`` / ``missing_image`` for a uniform
  signature and ignore them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prm.data.errors import RecordError, SkipReport
from prm.data.images import check_policy, image_paths, resolve_images
from prm.data.native import read_native
from prm.data.records import BestOfNProblem, Candidate, LabelledChain, Record, StepChain
from prm.data.steps import extract_final_answer, split_candidate, split_dreamprm_input

__all__ = [
    "FORMATS",
    "SeedProblem",
    "detect_format",
    "load_json_records",
    "read_bestofn_test",
    "read_conversations",
    "read_dreamprm_meta",
    "read_dreamprm_train",
    "read_mmprm",
    "read_mmprm_seeds",
    "read_native",
    "read_processbench",
    "read_records",
    "read_trl",
]

PRM_MARKER = "<prm>"
QUESTION_HEADER = "### Question:"
SOLUTION_HEADER = "### Solution Process:"
# Tolerance of the accuracy == score / times check: the DreamPRM README writes 7/11 as 0.6363.
ACCURACY_TOLERANCE = 1e-3


@dataclass
class SeedProblem:
    """An MM-PRM seed problem: the input of OmegaPRM data generation (no solution yet)."""

    id: str
    question: str
    correct_answer: str
    images: list[str] = field(default_factory=list)


def load_json_records(path: str | Path) -> list[Any]:
    """The records of a JSON array file or a JSON Lines file (told apart by the first character)."""
    return _parse_json_records(path, Path(path).read_text(encoding="utf-8"))


def _parse_json_records(path: str | Path, text: str) -> list[Any]:
    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise RecordError(path, None, None, f"invalid JSON array: {error}") from None
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                message = f"invalid JSON on line {number}: {error}"
                raise RecordError(path, len(records), None, message) from None
    return records


def _first_record(path: str | Path) -> Any:
    """The first record (None for an empty file), without parsing all of a JSON Lines file."""
    with open(path, encoding="utf-8") as handle:
        first_line = next((line for line in handle if line.strip()), None)
    if first_line is None:
        return None
    if first_line.lstrip().startswith("["):
        records = load_json_records(path)
    else:
        records = _parse_json_records(path, first_line)
    return records[0] if records else None


_TYPE_NAMES = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "a list"}


def _is(value: Any, kind: type) -> bool:
    """isinstance, except that a boolean is not a number; ``float`` accepts integers."""
    if kind in (int, float):
        return isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
    return isinstance(value, kind)


class _Source:
    """One file being read: its path, image policy, skip report, and the field checks."""

    def __init__(
        self,
        path: str | Path,
        data_root: str | Path | None,
        missing_image: str,
        report: SkipReport | None,
        domain: str | None = None,
        allow_outside_paths: bool = False,
    ):
        check_policy(missing_image)
        self.allow_outside_paths = allow_outside_paths
        self.path, self.data_root, self.missing_image = Path(path), data_root, missing_image
        self.own_report = report is None
        self.report = report if report is not None else SkipReport(str(path))
        self.domain = domain or self.path.stem
        self.seen_ids: dict[str, int] = {}

    def error(self, index: int | None, field_name: str | None, message: str) -> RecordError:
        return RecordError(self.path, index, field_name, message)

    def records(self) -> list[dict]:
        raw = load_json_records(self.path)
        for index, obj in enumerate(raw):
            if not isinstance(obj, dict):
                raise self.error(index, None, f"expected a JSON object, got {type(obj).__name__}")
        self.report.read += len(raw)
        return raw

    def get(self, obj: dict, index: int, name: str, kind: type, required: bool = True) -> Any:
        """``obj[name]`` checked against ``kind``; None when absent (or null) and not required.

        ``float`` accepts any number, ``int`` integers; neither accepts a boolean.
        """
        value = obj.get(name)
        if value is None:
            if required:
                raise self.error(index, name, "missing required field")
            return None
        if not _is(value, kind):
            message = f"expected {_TYPE_NAMES[kind]}, got {type(value).__name__}: {value!r}"
            raise self.error(index, name, message)
        return value

    def get_list(self, obj: dict, index: int, name: str, kind: type) -> list:
        values = self.get(obj, index, name, list)
        for position, value in enumerate(values):
            if not _is(value, kind):
                raise self.error(index, f"{name}[{position}]", f"expected {_TYPE_NAMES[kind]}, got {value!r}")
        return values

    def flag(self, obj: dict, index: int, name: str) -> int:
        """A 0/1 label given as a boolean (or the integers 0 / 1)."""
        value = obj.get(name)
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            return int(value)
        if value is None:
            raise self.error(index, name, "missing required field")
        raise self.error(index, name, f"expected true/false, got {value!r}")

    def unit_label(self, value: float, index: int, name: str) -> float:
        if not 0.0 <= value <= 1.0:
            raise self.error(index, name, f"label {value!r} is outside [0, 1]")
        return float(value)

    def image_field(self, obj: dict, index: int, name: str, required: bool = False) -> list[str]:
        """The record's image paths as written, checked (resolved later, once the record is valid)."""
        paths = image_paths(obj.get(name), self.path, index, name)
        if required and not paths:
            raise self.error(index, name, "missing required field")
        return paths

    def resolve(self, paths: list[str], index: int, name: str, weight: int = 1) -> list[str] | None:
        """Resolved paths under the policy; None when the record is skipped.

        ``weight`` is how many report units the record stands for (DreamPRM prefixes of one chain).
        """
        images = resolve_images(
            paths,
            self.data_root,
            self.missing_image,
            self.path,
            index,
            name,
            self.report,
            self.allow_outside_paths,
        )
        if weight > 1 and images is None:
            self.report.skipped["missing_image"] += weight - 1
        elif weight > 1 and paths and not images:
            self.report.changed["blank_image"] += weight - 1
        return images

    def record_id(self, obj: dict, index: int) -> str:
        raw = obj.get("id")
        if raw is not None and (isinstance(raw, bool) or not isinstance(raw, (str, int))):
            raise self.error(index, "id", f"expected a string or an integer, got {raw!r}")
        return str(index) if raw is None else str(raw)

    def unique(self, record_id: str, meta: dict) -> str:
        """``record_id``, suffixed ``#2``, ``#3``, ... when already used in this file."""
        count = self.seen_ids.get(record_id, 0) + 1
        self.seen_ids[record_id] = count
        if count == 1:
            return record_id
        meta["source_id"] = record_id
        return f"{record_id}#{count}"

    def no_steps(self, policy: str, index: int, field_name: str) -> None:
        if policy == "error":
            raise self.error(index, field_name, "no steps found")
        self.report.skip("no_steps", f"record {index}")

    def done(self, records: list, kept: int | None = None) -> list:
        self.report.kept += len(records) if kept is None else kept
        if self.own_report:
            self.report.log()
        return records


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


# --------------------------------------------------------------------------- DreamPRM


def read_dreamprm_train(
    path: str | Path,
    data_root: str | Path | None = None,
    missing_image: str = "error",
    report: SkipReport | None = None,
    allow_outside_paths: bool = False,
) -> list[StepChain]:
    """DreamPRM training file: one record per solution prefix, grouped into one chain per ``id``.

    Fields ``id, sid, input, add, ground_truth, image_path, dataset, score, times, accuracy``;
    required ``input, add, image_path, dataset, accuracy``. Records with the same ``id`` (anywhere in
    the file) are prefixes of one chain, returned in order of first appearance:

    - order: by ``sid`` when every prefix of the chain has one (a repeated ``sid`` is an error), in
      file order when none has; a mix is an error;
    - step text: DreamPRM's ``add`` is cumulative (the response up to step ``sid``), so a step is
      what its ``add`` adds to the previous prefix's; an ``add`` that does not extend the previous
      one is taken whole (per-step files). A prefix adding no text (DreamPRM writes ``add = ""`` for
      prefixes past a response's last step) is dropped and counted as ``empty_prefix``;
    - label: ``accuracy`` of the prefix, a number in [0, 1], equal to ``score / times`` (within
      1e-3) when both are given;
    - ``input``, ``image_path`` and ``dataset`` must agree across a chain; question = ``input``,
      domain = ``dataset``. A record without ``id`` is a chain of its own (its ``add`` one step,
      its index as id).

    Report counts are prefix records (the file's records): a chain skipped for its image counts all
    its prefixes.
    """
    source = _Source(path, data_root, missing_image, report, allow_outside_paths=allow_outside_paths)
    groups: dict[str, list[int]] = {}
    raw = source.records()
    for index, obj in enumerate(raw):
        key = source.record_id(obj, index) if obj.get("id") is not None else f"record {index}"
        groups.setdefault(key, []).append(index)
    chains, kept = [], 0
    for key, indices in groups.items():
        chain = _dreamprm_chain(source, raw, key, indices)
        if chain is not None:
            chains.append(chain)
            kept += len(chain.steps)
    return source.done(chains, kept)


def _dreamprm_chain(source: _Source, raw: list[dict], key: str, indices: list[int]) -> StepChain | None:
    first = indices[0]
    paths = source.image_field(raw[first], first, "image_path", required=True)
    for index in indices:
        obj = raw[index]
        for name in ("input", "add", "dataset"):
            source.get(obj, index, name, str)
        source.image_field(obj, index, "image_path", required=True)
        accuracy = source.unit_label(source.get(obj, index, "accuracy", float), index, "accuracy")
        score = source.get(obj, index, "score", float, required=False)
        times = source.get(obj, index, "times", float, required=False)
        if score is not None and times is not None:
            if times <= 0 or not 0 <= score <= times:
                message = f"need 0 <= score <= times and times > 0, got {score}/{times}"
                raise source.error(index, "times", message)
            if abs(score / times - accuracy) > ACCURACY_TOLERANCE:
                message = f"accuracy {accuracy} != score / times = {score}/{times}"
                raise source.error(index, "accuracy", message)
        for name in ("input", "image_path", "dataset"):
            if obj[name] != raw[first][name]:
                message = f"differs from record {first}, an earlier prefix of id {key!r}"
                raise source.error(index, name, message)
    sids = [source.get(raw[index], index, "sid", int, required=False) for index in indices]
    if all(sid is not None for sid in sids):
        order = sorted(range(len(indices)), key=lambda position: sids[position])
        for before, after in zip(order, order[1:]):
            if sids[before] == sids[after]:
                raise source.error(indices[after], "sid", f"sid {sids[after]} repeated in id {key!r}")
        indices = [indices[position] for position in order]
    elif any(sid is not None for sid in sids):
        missing = indices[sids.index(None)]
        raise source.error(missing, "sid", f"some prefixes of id {key!r} have a sid and this one has none")

    steps, labels, used, previous = [], [], [], ""
    for index in indices:
        add = raw[index]["add"]
        step = add[len(previous) :] if add.startswith(previous) else add
        if not step.strip():
            source.report.skip("empty_prefix", f"record {index}")
            continue
        steps.append(step.strip())
        labels.append(float(raw[index]["accuracy"]))
        used.append(index)
        previous = add
    if not steps:
        return None
    images = source.resolve(paths, first, "image_path", weight=len(steps))
    if images is None:
        return None
    meta: dict[str, Any] = {}
    if sids[0] is not None:
        meta["sids"] = [raw[index]["sid"] for index in used]
    if raw[first].get("ground_truth") is not None:
        meta["ground_truth"] = raw[first]["ground_truth"]
    chain_id = source.unique(key if raw[first].get("id") is not None else str(first), meta)
    return StepChain(
        id=chain_id,
        question=raw[first]["input"],
        steps=steps,
        labels=labels,
        images=images,
        domain=raw[first]["dataset"],
        meta=meta,
    )


def read_dreamprm_meta(
    path: str | Path,
    data_root: str | Path | None = None,
    missing_image: str = "error",
    report: SkipReport | None = None,
    *,
    allow_outside_paths: bool = False,
    no_steps: str = "skip",
    domain: str | None = None,
) -> list[LabelledChain]:
    """DreamPRM meta file: ``id, true_false, input, image_path`` -> whole-chain labelled chains.

    ``input`` (question + response) is split by :func:`prm.data.steps.split_dreamprm_input`. The
    published file holds question-only records (no ``Step 1``): with ``no_steps="skip"`` (default)
    they are counted as ``no_steps`` and left out, with ``"error"`` they raise.
    """
    _check_choice("no_steps", no_steps, ("skip", "error"))
    source = _Source(path, data_root, missing_image, report, domain, allow_outside_paths=allow_outside_paths)
    chains = []
    for index, obj in enumerate(source.records()):
        label = source.flag(obj, index, "true_false")
        text = source.get(obj, index, "input", str)
        paths = source.image_field(obj, index, "image_path", required=True)
        split = split_dreamprm_input(text)
        if not split.steps:
            source.no_steps(no_steps, index, "input")
            continue
        images = source.resolve(paths, index, "image_path")
        if images is None:
            continue
        meta: dict[str, Any] = {}
        chain_id = source.unique(source.record_id(obj, index), meta)
        chains.append(
            LabelledChain(
                id=chain_id,
                question=split.question,
                steps=split.steps,
                label=label,
                images=images,
                domain=source.domain,
                final_answer=split.final_answer,
                meta=meta,
            )
        )
    return source.done(chains)


# --------------------------------------------------------------------------- conversations


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
    Records without steps: ``no_steps`` as in :func:`read_dreamprm_meta`.
    """
    _check_choice("kind", kind, ("train", "meta", "auto"))
    _check_choice("no_steps", no_steps, ("skip", "error"))
    source = _Source(path, data_root, missing_image, report, domain, allow_outside_paths=allow_outside_paths)
    records: list[StepChain | LabelledChain] = []
    for index, obj in enumerate(source.records()):
        is_meta = kind == "meta" or (kind == "auto" and obj.get("true_false") is not None)
        label = source.flag(obj, index, "true_false") if is_meta else None
        question, steps, marks = _parse_conversation(source, obj, index)
        response = source.get(obj, index, "response", str, required=False)
        paths = source.image_field(obj, index, "image")
        if not steps:
            source.no_steps(no_steps, index, "conversations")
            continue
        images = source.resolve(paths, index, "image")
        if images is None:
            continue
        meta: dict[str, Any] = {}
        record_id = source.unique(source.record_id(obj, index), meta)
        if label is None:
            records.append(
                StepChain(
                    id=record_id,
                    question=question,
                    steps=steps,
                    labels=[1.0 if mark == "+" else 0.0 for mark in marks],
                    images=images,
                    domain=source.domain,
                    meta=meta,
                )
            )
            continue
        final_answer = (
            split_candidate(response).final_answer
            if response is not None
            else (extract_final_answer(steps[-1]))
        )
        records.append(
            LabelledChain(
                id=record_id,
                question=question,
                steps=steps,
                label=label,
                images=images,
                domain=source.domain,
                final_answer=final_answer,
                meta=meta,
            )
        )
    return source.done(records)


def _parse_conversation(source: _Source, obj: dict, index: int) -> tuple[str, list[str], list[str]]:
    """(question, steps, +/- marks) of one record, checking the turn structure."""
    turns = []
    for position, turn in enumerate(source.get(obj, index, "conversations", list)):
        if not (
            isinstance(turn, dict)
            and turn.get("from") in ("system", "human", "gpt")
            and isinstance(turn.get("value"), str)
        ):
            raise source.error(
                index,
                f"conversations[{position}]",
                f"expected {{from: system|human|gpt, value: string}}, got {turn!r}",
            )
        if turn["from"] != "system":
            turns.append((position, turn["from"], turn["value"]))
    if not turns or turns[0][1] != "human" or not turns[0][2].lstrip().startswith(QUESTION_HEADER):
        where = f"conversations[{turns[0][0]}]" if turns else "conversations"
        message = f"the first non-system turn must be human and start with {QUESTION_HEADER!r}"
        raise source.error(index, where, message)
    question, _, first_step = turns[0][2].lstrip()[len(QUESTION_HEADER) :].partition(SOLUTION_HEADER)
    pending: tuple[int, str] | None = (turns[0][0], first_step.strip()) if first_step.strip() else None
    steps, marks = [], []
    for position, role, value in turns[1:]:
        where = f"conversations[{position}]"
        if role == "human":
            if pending is not None:
                message = "two step turns in a row: a step must be followed by a gpt + or -"
                raise source.error(index, where, message)
            if not value.strip():
                raise source.error(index, where, "empty step")
            pending = (position, value.strip())
        elif pending is None:
            raise source.error(index, where, "gpt turn without a step before it")
        elif value not in ("+", "-"):
            raise source.error(index, where, f"gpt turn must be exactly '+' or '-', got {value!r}")
        else:
            steps.append(pending[1])
            marks.append(value)
            pending = None
    if pending is not None:
        raise source.error(index, f"conversations[{pending[0]}]", "last step has no gpt + or - after it")
    return question.strip(), steps, marks


# --------------------------------------------------------------------------- best-of-N test


def read_bestofn_test(
    path: str | Path,
    data_root: str | Path | None = None,
    missing_image: str = "error",
    report: SkipReport | None = None,
    *,
    allow_outside_paths: bool = False,
    domain: str | None = None,
) -> list[BestOfNProblem]:
    """DreamPRM-1.5 test file: ``question, image_path, candidates: [str], true_false: [bool]``.

    Each candidate is split by :func:`prm.data.steps.split_candidate`; ``candidates`` and
    ``true_false`` must have the same length. A candidate with no text keeps zero steps rather than
    being dropped: dropping it would change N and the random baseline.
    """
    source = _Source(path, data_root, missing_image, report, domain, allow_outside_paths=allow_outside_paths)
    problems = []
    for index, obj in enumerate(source.records()):
        question = source.get(obj, index, "question", str)
        texts = source.get_list(obj, index, "candidates", str)
        correct = source.get_list(obj, index, "true_false", bool)
        if len(texts) != len(correct):
            raise source.error(index, "true_false", f"{len(correct)} labels for {len(texts)} candidates")
        if not texts:
            raise source.error(index, "candidates", "no candidates")
        images = source.resolve(source.image_field(obj, index, "image_path"), index, "image_path")
        if images is None:
            continue
        candidates = [Candidate(*split_candidate(text), correct=flag) for text, flag in zip(texts, correct)]
        meta: dict[str, Any] = {}
        problem_id = source.unique(source.record_id(obj, index), meta)
        problems.append(
            BestOfNProblem(
                id=problem_id,
                question=question,
                candidates=candidates,
                images=images,
                domain=source.domain,
                meta=meta,
            )
        )
    return source.done(problems)


# --------------------------------------------------------------------------- MM-PRM


def read_mmprm(
    path: str | Path,
    data_root: str | Path | None = None,
    missing_image: str = "error",
    report: SkipReport | None = None,
    *,
    allow_outside_paths: bool = False,
    domain: str | None = None,
) -> list[StepChain]:
    """MM-PRM training file: ``question, answer, image_path, process, labels: [float]``.

    ``process`` is the step chunks each ended by ``<prm>``: the number of markers must equal
    ``len(labels)``, no text may follow the last marker and no chunk may be empty. Labels are soft
    Monte Carlo values in [0, 1]. ``answer`` (the reference answer) goes to ``meta["answer"]``.
    """
    source = _Source(path, data_root, missing_image, report, domain, allow_outside_paths=allow_outside_paths)
    chains = []
    for index, obj in enumerate(source.records()):
        question = source.get(obj, index, "question", str)
        process = source.get(obj, index, "process", str)
        labels = [
            source.unit_label(value, index, f"labels[{position}]")
            for position, value in enumerate(source.get_list(obj, index, "labels", float))
        ]
        answer = source.get(obj, index, "answer", str, required=False)
        *chunks, tail = process.split(PRM_MARKER)
        if not chunks:
            raise source.error(index, "process", f"no {PRM_MARKER} marker")
        if len(chunks) != len(labels):
            message = f"{len(labels)} labels for {len(chunks)} {PRM_MARKER} markers"
            raise source.error(index, "labels", message)
        if tail.strip():
            raise source.error(index, "process", f"text after the last {PRM_MARKER}: {tail.strip()[:60]!r}")
        steps = [chunk.strip() for chunk in chunks]
        if "" in steps:
            raise source.error(index, "process", f"step {steps.index('')} is empty")
        images = source.resolve(source.image_field(obj, index, "image_path"), index, "image_path")
        if images is None:
            continue
        meta: dict[str, Any] = {} if answer is None else {"answer": answer}
        chain_id = source.unique(source.record_id(obj, index), meta)
        chains.append(
            StepChain(
                id=chain_id,
                question=question,
                steps=steps,
                labels=labels,
                images=images,
                domain=source.domain,
                meta=meta,
            )
        )
    return source.done(chains)


def read_mmprm_seeds(
    path: str | Path,
    data_root: str | Path | None = None,
    missing_image: str = "error",
    report: SkipReport | None = None,
    allow_outside_paths: bool = False,
) -> list[SeedProblem]:
    """MM-PRM seed file for OmegaPRM: ``id, question, correct_answer, image_path``.

    ``id``, ``question`` and ``correct_answer`` are required (a number as answer is read as its text);
    ``image_path`` may be null for text-only seeds.
    """
    source = _Source(path, data_root, missing_image, report, allow_outside_paths=allow_outside_paths)
    seeds = []
    for index, obj in enumerate(source.records()):
        if obj.get("id") is None:
            raise source.error(index, "id", "missing required field")
        question = source.get(obj, index, "question", str)
        answer = obj.get("correct_answer")
        if answer is None or isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
            raise source.error(index, "correct_answer", f"expected a string or a number, got {answer!r}")
        images = source.resolve(source.image_field(obj, index, "image_path"), index, "image_path")
        if images is None:
            continue
        seed_id = source.unique(source.record_id(obj, index), {})
        seeds.append(SeedProblem(id=seed_id, question=question, correct_answer=str(answer), images=images))
    return source.done(seeds)


# --------------------------------------------------------------------------- text-only


def read_trl(
    path: str | Path,
    data_root: str | Path | None = None,
    missing_image: str = "error",
    report: SkipReport | None = None,
    *,
    allow_outside_paths: bool = False,
    domain: str | None = None,
) -> list[StepChain]:
    """TRL stepwise supervision: ``prompt, completions: [str], labels: [bool]`` -> text-only chains.

    Only the standard (string) prompt is read; one completion is one step, labelled 1.0 / 0.0.
    """
    source = _Source(path, data_root, missing_image, report, domain, allow_outside_paths=allow_outside_paths)
    chains = []
    for index, obj in enumerate(source.records()):
        prompt = source.get(obj, index, "prompt", str)
        completions = source.get_list(obj, index, "completions", str)
        labels = source.get_list(obj, index, "labels", bool)
        if len(labels) != len(completions):
            raise source.error(index, "labels", f"{len(labels)} labels for {len(completions)} completions")
        if not completions:
            raise source.error(index, "completions", "no completions")
        steps = [completion.strip() for completion in completions]
        if "" in steps:
            raise source.error(index, f"completions[{steps.index('')}]", "empty completion")
        meta: dict[str, Any] = {}
        chain_id = source.unique(source.record_id(obj, index), meta)
        chains.append(
            StepChain(
                id=chain_id,
                question=prompt,
                steps=steps,
                labels=[float(x) for x in labels],
                domain=source.domain,
                meta=meta,
            )
        )
    return source.done(chains)


def read_processbench(
    path: str | Path,
    data_root: str | Path | None = None,
    missing_image: str = "error",
    report: SkipReport | None = None,
    *,
    allow_outside_paths: bool = False,
    domain: str | None = None,
) -> list[LabelledChain]:
    """ProcessBench: ``id, generator, problem, steps, final_answer_correct, label`` -> labelled chains.

    ``label`` is the index of the first wrong step, ``-1`` when all are right: it becomes
    ``first_error``, and the chain label is 1 only when ``label == -1``. A chain can reach the right
    final answer through a wrong step (``final_answer_correct`` true, ``label`` >= 0): it is labelled
    0, since ProcessBench judges the process. ``generator`` and ``final_answer_correct`` are kept in
    ``meta``; the final answer is read from the last step.
    """
    source = _Source(path, data_root, missing_image, report, domain, allow_outside_paths=allow_outside_paths)
    chains = []
    for index, obj in enumerate(source.records()):
        if obj.get("id") is None:
            raise source.error(index, "id", "missing required field")
        problem = source.get(obj, index, "problem", str)
        steps = source.get_list(obj, index, "steps", str)
        first_error = source.get(obj, index, "label", int)
        if not steps:
            raise source.error(index, "steps", "no steps")
        if not -1 <= first_error < len(steps):
            message = f"first wrong step {first_error} outside [-1, {len(steps) - 1}]"
            raise source.error(index, "label", message)
        meta: dict[str, Any] = {}
        for name, kind in (("generator", str), ("final_answer_correct", bool)):
            value = source.get(obj, index, name, kind, required=False)
            if value is not None:
                meta[name] = value
        chain_id = source.unique(source.record_id(obj, index), meta)
        chains.append(
            LabelledChain(
                id=chain_id,
                question=problem,
                steps=list(steps),
                label=int(first_error == -1),
                domain=source.domain,
                final_answer=extract_final_answer(steps[-1]),
                first_error=first_error,
                meta=meta,
            )
        )
    return source.done(chains)


def _read_native_resolved(
    path: str | Path,
    data_root: str | Path | None = None,
    missing_image: str = "error",
    report: SkipReport | None = None,
    allow_outside_paths: bool = False,
) -> list[Record]:
    """Native records with their image paths resolved under the missing-image policy."""
    source = _Source(path, data_root, missing_image, report, allow_outside_paths=allow_outside_paths)
    records = read_native(path)
    source.report.read += len(records)
    kept = []
    for index, record in enumerate(records):
        images = resolve_images(
            record.images, data_root, missing_image, path, index, "images", source.report, allow_outside_paths
        )
        if images is not None:
            record.images = images
            kept.append(record)
    return source.done(kept)


# --------------------------------------------------------------------------- dispatch

_READERS: dict[str, Callable[..., list]] = {
    "native": _read_native_resolved,
    "dreamprm_train": read_dreamprm_train,
    "dreamprm_meta": read_dreamprm_meta,
    "conversations": read_conversations,
    "bestofn": read_bestofn_test,
    "mmprm": read_mmprm,
    "mmprm_seeds": read_mmprm_seeds,
    "trl": read_trl,
    "processbench": read_processbench,
}
FORMATS = tuple(_READERS)

# (format, keys that identify it), checked in order against the first record's keys.
_SIGNATURES: list[tuple[str, set[str]]] = [
    ("native", {"kind"}),
    ("conversations", {"conversations"}),
    ("dreamprm_train", {"add", "accuracy"}),
    ("bestofn", {"candidates", "true_false"}),
    ("mmprm", {"process", "labels"}),
    ("mmprm_seeds", {"correct_answer", "question"}),
    ("trl", {"prompt", "completions", "labels"}),
    ("processbench", {"problem", "steps", "label"}),
    ("dreamprm_meta", {"input", "true_false"}),
]


def detect_format(path: str | Path) -> str:
    """The format of a file, from the keys of its first record (see ``_SIGNATURES``)."""
    first = _first_record(path)
    if first is None:
        raise RecordError(path, None, None, "empty file: cannot detect its format")
    if not isinstance(first, dict):
        raise RecordError(path, 0, None, f"expected a JSON object, got {type(first).__name__}")
    for name, keys in _SIGNATURES:
        if keys <= first.keys():
            return name
    message = f"cannot detect the format from keys {sorted(first)}; pass format= one of {FORMATS}"
    raise RecordError(path, 0, None, message)


def read_records(path: str | Path, format: str = "auto", **options: Any) -> list:
    """Read ``path`` in ``format`` (``"auto"``: :func:`detect_format`), passing ``options`` on.

    ``native`` files go through :func:`read_native` and then the same image resolution and policy
    as the published formats.
    """
    if format == "auto":
        format = detect_format(path)
    if format not in _READERS:
        raise ValueError(f"unknown format {format!r}; expected 'auto' or one of {FORMATS}")
    return _READERS[format](path, **options)
