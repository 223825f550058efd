"""The preflight pass: every record of every split checked before a model trains or scores.

:func:`preflight` reads each split, then for every record:

1. **text**: special-token strings of the backbone's tokenizer (its added and special tokens such as
   ``<|image_pad|>``, ``<|im_end|>`` and the step marker ``<step>``) inside the question or a step
   are neutralised by a zero-width space (U+200B) after their first character, so they tokenise as
   plain text and are never read as control tokens (``data.special_tokens: neutralize``), or refused
   (``error``). Line endings and unusual spaces were already normalised by the step splitters.
2. **images** (multimodal backbones; a text-only backbone reads the text alone and the records whose
   images it ignores are counted, ``images_ignored_text_only``): every image is opened and decoded;
   an undecodable file is an error naming record and path (``data.bad_image=skip`` drops the record
   instead). A size the processor refuses (a side under 28 pixels, an aspect ratio over 200) is
   padded / enlarged by :func:`prm.data.images.load_image` under ``data.bad_image: fix`` (the record
   is kept and counted), dropped under ``skip``, an error under ``error``.
3. **length**: the chain is tokenised by the same :class:`prm.data.dataset.PRMCollator` the
   training and scoring loaders use. A chain over ``data.max_length`` tokens is, per
   ``data.too_long``: ``truncate`` (default) cut to its longest prefix of whole steps that fits (the
   question, the step markers and the labels of kept steps are never cut; the lost step labels are
   counted), ``skip`` dropped, ``error`` named in one error listing every chain over the limit,
   raised before anything is scored. A chain whose question alone, or question and first step, is
   over the limit cannot be truncated: it is skipped (``error``: named) and counted. A whole-chain
   labelled chain whose known first wrong step would be cut is skipped, not relabelled.
4. **labels**: the train split must hold step-labelled chains (a ProcessBench or meta file given as
   training data is an error) with at least one labelled step; the meta split must hold both classes
   (``data.allow_one_class_meta=true`` turns this into a warning); ids must be unique per split.

Every policy's cases are counted per split in a :class:`PreflightReport`, which is logged and
returned; nothing is dropped or changed without being counted.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from PIL import Image

from prm.data.dataset import PRMCollator
from prm.data.errors import RecordError
from prm.data.images import geometry_problem
from prm.data.records import BestOfNProblem, Candidate, LabelledChain, StepChain
from prm.errors import UserError

log = logging.getLogger(__name__)

ZERO_WIDTH_SPACE = "\u200b"
# Counters of the report, in the order the summary prints them.
COUNTERS = (
    "special_tokens_neutralized",
    "images_fixed",
    "images_converted",
    "images_ignored_text_only",
    "skipped_bad_image",
    "truncated",
    "steps_dropped",
    "labels_lost",
    "truncated_unknown_first_error",
    "skipped_too_long",
    "skipped_question_too_long",
    "skipped_first_error_cut",
)


class PreflightError(UserError):
    """Data that fails the preflight check; the message names file, record and field."""


@dataclass
class SplitReport:
    """What the preflight did to one split: records read / kept and a count per policy case."""

    split: str
    path: str
    read: int = 0
    kept: int = 0
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    reader: str = ""  # the reader's own line (records it skipped or changed while reading)

    def count(self, what: str, example: str, amount: int = 1) -> None:
        self.counts[what] += amount
        self.examples.setdefault(what, example)

    def summary(self) -> str:
        text = f"{self.split} ({self.path}): read {self.read}, kept {self.kept}"
        parts = [
            f"{self.counts[name]} {name} (e.g. {self.examples[name]})"
            for name in COUNTERS
            if self.counts[name]
        ]
        text += ": " + "; ".join(parts) if parts else ""
        return text + (f"\n    reader: {self.reader}" if self.reader else "")


@dataclass
class PreflightReport:
    """Per-split reports plus the warnings raised (e.g. a one-class meta split that was allowed)."""

    splits: dict[str, SplitReport] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = ["preflight:"] + [f"  {report.summary()}" for report in self.splits.values()]
        lines += [f"  warning: {warning}" for warning in self.warnings]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """``{split: {read, kept, <counter>: n, ...}, "warnings": [...]}`` (zero counters left out)."""
        out: dict[str, Any] = {
            split: {"read": report.read, "kept": report.kept, **dict(report.counts)}
            for split, report in self.splits.items()
        }
        out["warnings"] = list(self.warnings)
        return out


# --------------------------------------------------------------------------- text


def special_token_strings(backbone: Any) -> list[str]:
    """The strings the backbone's tokenizer reads as one control token, longest first.

    Its special tokens, its added vocabulary (chat and vision tokens such as ``<|image_pad|>``) and
    the step marker; single characters are left out (they cannot be escaped and are not control text).
    """
    tokenizer = backbone.tokenizer
    strings = set(getattr(tokenizer, "all_special_tokens", []) or [])
    strings.update((tokenizer.get_added_vocab() or {}).keys())
    strings.add(backbone.step_marker)
    return sorted((s for s in strings if len(s) > 1), key=lambda s: (-len(s), s))


class Neutralizer:
    """Breaks special-token strings inside text with a zero-width space after their first character."""

    def __init__(self, strings: Iterable[str]):
        self.strings = list(strings)
        self.pattern = re.compile("|".join(re.escape(s) for s in self.strings)) if self.strings else None

    def find(self, text: str) -> list[str]:
        return self.pattern.findall(text) if self.pattern else []

    def __call__(self, text: str) -> str:
        if self.pattern is None:
            return text
        return self.pattern.sub(lambda m: m.group(0)[0] + ZERO_WIDTH_SPACE + m.group(0)[1:], text)


# --------------------------------------------------------------------------- checker


class RecordChecker:
    """Applies the policies to the records of one split (``split``, read from ``path``): ``data``
    gives ``max_length``, ``too_long``, ``special_tokens`` and ``bad_image``; the cases are counted in
    ``report``. :func:`preflight` runs one per split; the serving endpoints
    (:mod:`prm.serve.requests`) one per request, with :meth:`length` and ``neutralize``, passing
    the ``neutralize`` and ``collator`` they built once (both are stateless)."""

    def __init__(
        self,
        data: Any,
        backbone: Any,
        split: str,
        path: str,
        report: SplitReport | None = None,
        neutralize: Neutralizer | None = None,
        collator: PRMCollator | None = None,
    ):
        report = report if report is not None else SplitReport(split, path)
        self.data, self.backbone, self.split, self.path, self.report = data, backbone, split, path, report
        self.neutralize = neutralize or Neutralizer(special_token_strings(backbone))
        self.collator = collator or PRMCollator(backbone, max_length=None)
        self.max_length = data.max_length
        self.too_long: list[str] = []  # under too_long=error: every chain over the limit

    def error(self, index: int, record_id: str, field_name: str | None, message: str) -> PreflightError:
        where = RecordError(self.path, index, field_name, message, record_id=record_id)
        return PreflightError(f"data.{self.split}: {where}")

    # text ------------------------------------------------------------------
    def text(self, index: int, record: Any) -> Any:
        fields = [("question", record.question)]
        steps_of = record.steps if not isinstance(record, BestOfNProblem) else []
        fields += [(f"steps[{position}]", step) for position, step in enumerate(steps_of)]
        if isinstance(record, BestOfNProblem):
            for number, candidate in enumerate(record.candidates):
                fields += [(f"candidates[{number}].steps[{p}]", s) for p, s in enumerate(candidate.steps)]
        found = [(name, self.neutralize.find(value)) for name, value in fields]
        found = [(name, hits) for name, hits in found if hits]
        if not found:
            return record
        name, hits = found[0]
        if self.data.special_tokens == "error":
            message = (
                f"contains the special token {hits[0]!r}; remove it, or set data.special_tokens=neutralize "
                "to read it as plain text"
            )
            raise self.error(index, record.id, name, message)
        self.report.count("special_tokens_neutralized", f"record {index} {name}: {hits[0]!r}")
        changes: dict[str, Any] = {"question": self.neutralize(record.question)}
        if isinstance(record, BestOfNProblem):
            changes["candidates"] = [
                replace(c, steps=[self.neutralize(s) for s in c.steps]) for c in record.candidates
            ]
        else:
            changes["steps"] = [self.neutralize(step) for step in record.steps]
        return replace(record, **changes)

    # images ----------------------------------------------------------------
    def images(self, index: int, record: Any) -> bool:
        """Open every image of ``record``; False when the record is to be skipped."""
        if not self.backbone.is_multimodal:
            if getattr(record, "images", None):  # a text-only backbone reads the text alone: say so
                self.report.count(
                    "images_ignored_text_only", f"record {index}: {len(record.images)} image(s) not read"
                )
            return True
        for position, path in enumerate(record.images):
            name = f"images[{position}]"
            try:
                with Image.open(path) as image:
                    image.load()
                    mode, size = image.mode, image.size
            except Exception as exc:  # Pillow raises many types for a broken file
                if self.data.bad_image == "skip":
                    self.report.count("skipped_bad_image", f"record {index}: {path} undecodable")
                    return False
                message = f"cannot decode image {path}: {exc}; fix or remove it, or set data.bad_image=skip"
                raise self.error(index, record.id, name, message) from None
            if mode != "RGB":
                self.report.count("images_converted", f"record {index}: {path} mode {mode}")
            problem = geometry_problem(*size)
            if problem is None:
                continue
            if self.data.bad_image == "error":
                message = (
                    f"image {path}: {problem}, which the processor refuses; set data.bad_image=fix or skip"
                )
                raise self.error(index, record.id, name, message)
            if self.data.bad_image == "skip":
                self.report.count("skipped_bad_image", f"record {index}: {path} {problem}")
                return False
            self.report.count("images_fixed", f"record {index}: {path} {problem}")
        return True

    # length ----------------------------------------------------------------
    def measure(self, chain: StepChain | LabelledChain) -> tuple[int, list[int]]:
        """(token length, step-marker positions) of ``chain`` as the loaders' collator builds it."""
        item = {"chain": chain, "instance": 0, "domain": 0, "images": list(chain.images)}
        try:
            batch = self.collator([item])
        except Exception as exc:
            raise PreflightError(
                f"data.{self.split}: {self.path}, id {chain.id!r}: cannot tokenise: {exc}"
            ) from exc
        length = int(batch["inputs"]["attention_mask"][0].sum())
        positions = batch["marker_positions"][0][: len(chain.steps)].tolist()
        return length, positions

    def length(
        self,
        index: int,
        chain: StepChain | LabelledChain,
        name: str,
        measured: tuple[int, list[int]] | None = None,
    ) -> Any:
        """``chain`` as kept under ``data.too_long``: itself, a truncated copy, or None (skipped).
        ``measured``: ``(length, positions)`` as :meth:`measure` returns them, when the caller has
        them already (the service measures a request's candidates together)."""
        # tokenised even without a limit: errors surface here
        length, positions = measured if measured is not None else self.measure(chain)
        if self.max_length is None or length <= self.max_length:
            return chain
        where = f"record {index} (id {chain.id!r}){name}: {length} tokens"
        if self.data.too_long == "error":
            self.too_long.append(f"{where} > {self.max_length}")
            return chain
        if self.data.too_long == "skip":
            self.report.count("skipped_too_long", where)
            return None
        keep = sum(position + 2 <= self.max_length for position in positions)
        while keep > 0:
            truncated = _keep_steps(chain, keep)
            if self.measure(truncated)[0] <= self.max_length:
                break
            keep -= 1
        if keep == 0:
            question_only = self.measure(_keep_steps(chain, 0))[0]
            reason = "skipped_question_too_long" if question_only > self.max_length else "skipped_too_long"
            self.report.count(reason, f"{where}, question alone {question_only}")
            return None
        if isinstance(chain, LabelledChain) and chain.first_error is not None and chain.first_error >= keep:
            self.report.count(
                "skipped_first_error_cut", f"{where}, first error {chain.first_error}, kept {keep}"
            )
            return None
        dropped = len(chain.steps) - keep
        self.report.count("truncated", f"{where}, kept {keep} of {len(chain.steps)} steps")
        self.report.count("steps_dropped", where, dropped)
        if isinstance(chain, StepChain):
            lost = sum(label is not None for label in chain.labels[keep:])
            if lost:
                self.report.count("labels_lost", where, lost)
        elif chain.label == 0 and chain.first_error is None:
            self.report.count("truncated_unknown_first_error", where)
        return _keep_steps(chain, keep)

    def record(self, index: int, record: Any) -> Any:
        record = self.text(index, record)
        if not self.images(index, record):
            return None
        if not isinstance(record, BestOfNProblem):
            return self.length(index, record, "")
        candidates = []
        for number, candidate in enumerate(record.candidates):
            chain = LabelledChain(
                id=record.id,
                question=record.question,
                steps=candidate.steps,
                label=int(candidate.correct),
                images=record.images,
                first_error=candidate.first_error,
            )
            kept = self.length(index, chain, f" candidate {number}") if candidate.steps else chain
            if kept is None:
                return None  # dropping one candidate would change N: the problem goes
            candidates.append(
                Candidate(kept.steps, candidate.final_answer, candidate.correct, kept.first_error)
            )
        return replace(record, candidates=candidates)


def _keep_steps(chain: StepChain | LabelledChain, keep: int) -> StepChain | LabelledChain:
    if isinstance(chain, StepChain):
        return replace(chain, steps=chain.steps[:keep], labels=chain.labels[:keep])
    first_error = chain.first_error if chain.first_error is None or chain.first_error < keep else None
    if keep == 0:
        first_error = None
    return LabelledChain(
        id=chain.id,
        question=chain.question,
        steps=chain.steps[:keep],
        label=chain.label,
        images=chain.images,
        domain=chain.domain,
        final_answer=chain.final_answer,
        first_error=first_error,
        meta=chain.meta,
    )


# --------------------------------------------------------------------------- split-level checks


def check_unique_ids(records: Sequence[Any], split: str, path: str) -> None:
    """Raise :class:`PreflightError` naming both records when two records of a split share an id."""
    first: dict[str, int] = {}
    for index, record in enumerate(records):
        if record.id in first:
            raise PreflightError(
                f"data.{split}: {path}: records {first[record.id]} and {index} share the id {record.id!r}; "
                "ids must be unique (per-instance weights are keyed by id)"
            )
        first[record.id] = index


def check_labels(
    records: Sequence[Any], split: str, path: str, allow_one_class_meta: bool, warnings: list[str]
) -> None:
    """The label checks of a split (see the module docstring); raises :class:`PreflightError`."""
    if split == "train":
        wrong = next((r for r in records if not isinstance(r, StepChain)), None)
        if wrong is not None:
            raise PreflightError(
                f"data.train: {path}: record id {wrong.id!r} is a {wrong.kind} (a whole-chain label, e.g. a "
                "ProcessBench or meta file), not a step-labelled chain; training needs step labels"
            )
        if not any(record.supervised_steps for record in records):
            raise PreflightError(
                f"data.train: {path}: none of the {len(records)} chains has a labelled step (every label "
                "is null); training would see a zero loss"
            )
    if split == "meta":
        wrong = next((r for r in records if not isinstance(r, LabelledChain)), None)
        if wrong is not None:
            raise PreflightError(
                f"data.meta: {path}: record id {wrong.id!r} is a {wrong.kind}, not a whole-chain labelled "
                "chain; the meta split needs one 0/1 label per chain"
            )
        classes = Counter(r.label for r in records if isinstance(r, LabelledChain))
        if len(classes) < 2:
            only = f"only label {next(iter(classes))}" if classes else "no whole-chain label"
            message = (
                f"data.meta: {path}: all {sum(classes.values())} meta chains have {only}; the meta loss and "
                "AUROC need both correct and wrong chains"
            )
            if not allow_one_class_meta:
                raise PreflightError(message + " (set data.allow_one_class_meta=true to go on)")
            warnings.append(message)
            log.warning(message)


# --------------------------------------------------------------------------- entry


def _data_of(cfg: Any) -> Any:
    """The DataSources of ``cfg``: a DataSources itself, or a run config whose ``data`` builds one."""
    data = getattr(cfg, "data", cfg)
    if hasattr(data, "load"):
        return data
    from hydra.utils import instantiate

    return instantiate(data)


def preflight(
    cfg: Any, backbone: Any, splits: Sequence[str] = ("train", "meta")
) -> tuple[dict[str, list], PreflightReport]:
    """Read and check every record of ``splits``; returns the cleaned records and the report.

    Args:
        cfg: the run config (its ``data`` node is instantiated) or a built
            :class:`prm.data.sources.DataSources`; the policies are its ``too_long``, ``bad_image``,
            ``special_tokens``, ``allow_one_class_meta`` and ``max_length`` (tokens).
        backbone: the :class:`prm.model.backbones.Backbone` whose collator will read the data.
        splits: the splits to check; a split that is not set (``data.test=null``) is left out.

    Returns:
        ``({split: records}, report)``: the records as the loaders must use them (special tokens
        neutralised, over-long chains truncated, skipped records left out) and the
        :class:`PreflightReport` (also logged).

    Raises:
        PreflightError (a :class:`prm.errors.UserError`): a record fails a policy set to ``error``
        (all over-long chains of all splits named in one message), a label check fails, or a split
        is empty after the checks; reader errors (:class:`prm.data.errors.RecordError`) pass through.
    """
    data = _data_of(cfg)
    report = PreflightReport()
    cleaned: dict[str, list] = {}
    too_long: list[str] = []
    for split in splits:
        if data.path(split) is None:
            continue
        records = data.load(split)
        path = str(data.path(split))
        split_report = SplitReport(split, path, read=len(records))
        reader_report = data.reports.get(split)
        if reader_report is not None:
            split_report.reader = reader_report.summary()
        checker = RecordChecker(data, backbone, split, path, split_report)
        check_unique_ids(records, split, path)
        kept = []
        for index, record in enumerate(records):
            result = checker.record(index, record)
            if result is not None:
                kept.append(result)
        too_long += [f"data.{split} {path} {entry}" for entry in checker.too_long]
        split_report.kept = len(kept)
        report.splits[split] = split_report
        cleaned[split] = kept
    if too_long:
        raise PreflightError(
            f"{len(too_long)} chain(s) over data.max_length={data.max_length} tokens (data.too_long=error): "
            + "; ".join(too_long)
            + ". Raise data.max_length, or set data.too_long=truncate or skip"
        )
    for split, records in cleaned.items():
        path = report.splits[split].path
        if not records:
            raise PreflightError(f"data.{split}: {path}: no record left after the checks; {report.summary()}")
        check_labels(records, split, path, data.allow_one_class_meta, report.warnings)
    counted = any(r.counts for r in report.splits.values())
    (log.warning if counted or report.warnings else log.info)(report.summary())
    return cleaned, report
