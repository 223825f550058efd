"""PRMBench (Song et al. 2025, arXiv 2501.03124): math processes with injected, step-labelled errors.

``prmbench``: ``idx, classification, modified_question, modified_process, error_steps, ...`` ->
step-labelled chains (:class:`prm.data.records.StepChain`), one per published record, plus one
unmodified ("correct") chain per problem as the reference evaluation adds.

Published as one JSON Lines file, ``prmbench_preview.jsonl`` of huggingface.co/datasets/
hitsmy/PRMBench_Preview (the dataset the repository's README links); the reference task reads
every ``*.jsonl`` of a folder, so a copy split into several files is concatenated into one before
reading (correct chains are keyed by ``idx`` across the whole file). Source of the schema and of
the reference behaviour: github.com/ssmisya/PRMBench,

- ``README.md`` / ``docs/data_format.md`` (commit f260a05): the fields of a record,
  ``original_question, modified_question, original_process, modified_process`` (lists of step
  strings), ``modified_steps, error_steps`` (step numbers), ``reason, idx, question,
  classification``;
- ``mr_eval/tasks/prmtest_classified/task.py`` (commit cc7db59), the default PRMBench task:
  ``load_data_function`` reads every ``*.jsonl`` of the task's data folder (``dir_of_jsonl``) and
  scores ``modified_question`` + ``modified_process`` against ``error_steps``; its
  ``eval_on_hallucination_step`` subtracts 1 from each error step ("hallucination_steps are
  0-indexed"), so the published numbers are 1-based;
- ``mr_eval/tasks/prmtest_classified_subset400/data/target_data.jsonl`` (commit f260a05), the
  authors' 400-record subset: ``idx`` is the problem's id without the class (``prm_test_p1_0``),
  repeated across the classes of one problem; ``modified_steps`` may name steps past the end of
  the modified process (so it is kept as published, not checked);
- ``mr_visualize/eval_res_view/draw_tabs/data_statistic.ipynb`` (commit f260a05): 6,216 records,
  758 redundency, 758 circular, 757 counterfactual, 758 step_contradiction, 757
  domain_inconsistency, 757 confidence, 756 missing_condition, 750 deception, 165
  multi_solutions; multi_solutions records have no error step.

How the reference evaluation adds correct processes (``load_data_function``): for a record of class
``redundency`` whose ``idx`` it has not seen yet, it first adds a chain of that record's
``original_question`` + ``original_process`` with no error step, class ``correct``, keyed
``correct_<idx>``; a problem without a ``redundency`` record gets none. It keys modified chains
``<classification>_<idx>`` and keeps only the first record of a repeated key. This reader does the
same, with ids ``<classification>/<idx>`` and ``correct/<idx>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prm.data.errors import SkipReport
from prm.data.formats.registry import has_keys, register_format
from prm.data.formats.source import Row, Source
from prm.data.records import PRMBENCH_CLASSES, PRMBENCH_CORRECT, StepChain

BENCHMARK = "prmbench"
CORRECT_SOURCE_CLASS = "redundency"
"""The class whose records carry the original process the reference evaluation adds (task.py's
``correct_sample_classification``)."""


# Disjoint from every other signature (no other format has modified_process or error_steps): the
# priority only places it in the detection order.
@register_format(
    "prmbench", signature=has_keys("idx", "classification", "modified_process", "error_steps"), priority=45
)
def read_prmbench(
    path: str | Path,
    data_root: str | Path | None = None,
    missing_image: str = "error",
    report: SkipReport | None = None,
    *,
    allow_outside_paths: bool = False,
    correct_processes: bool = True,
) -> list[StepChain]:
    """PRMBench ``prmtest_classified`` JSONL -> one step-labelled chain per record (file order).

    Each chain: question = ``modified_question``, steps = ``modified_process`` (stripped), labels 1.0
    for a correct step and 0.0 for an error step (``error_steps`` are 1-based in the file),
    domain = ``classification``, id = ``<classification>/<idx>`` (``idx`` repeats across the classes
    of one problem), meta = ``{"benchmark": "prmbench", "classification", "idx"}`` plus
    ``modified_steps`` (1-based, as published, not checked) and ``reason`` when present.
    :meth:`prm.data.records.PRMBenchRecord.from_chain` turns a chain back into a scoring record.

    ``correct_processes`` (default True): as the reference evaluation does, the first
    ``redundency`` record of each ``idx`` also yields, just before its own chain, a chain of its
    ``original_question`` + ``original_process`` with every label 1.0, classification and domain
    ``correct``, id ``correct/<idx>``.

    Counts: ``report.read`` counts the file's records; a record repeating an earlier record's
    ``(classification, idx)`` is left out as ``duplicate`` (the reference keeps the first);
    ``report.kept`` counts the chains returned, so it includes the added correct chains, which are
    also counted in ``report.changed`` under ``added_correct_process`` (read = kept - added +
    skipped).

    Raises :class:`RecordError` naming the file, the record and the field for a missing or mistyped
    field, a class outside :data:`prm.data.records.PRMBENCH_CLASSES`, an error step that is not an
    integer in ``1 .. len(modified_process)``, or an empty process or step.
    ``data_root`` / ``missing_image`` / ``allow_outside_paths`` are accepted for a uniform
    signature and ignored (no images).
    """
    own_report = report is None
    report = report if report is not None else SkipReport(str(path))
    source = Source(path, data_root, missing_image, report, allow_outside_paths=allow_outside_paths)
    seen: set[tuple[str, str]] = set()
    correct_seen: set[str] = set()

    def build(row: Row) -> list[StepChain] | None:
        idx = _idx(row)
        classification = row.get("classification", str)
        if classification not in PRMBENCH_CLASSES:
            known = ", ".join(PRMBENCH_CLASSES)
            raise row.error("classification", f"unknown class {classification!r}; expected one of {known}")
        question = row.get("modified_question", str)
        steps = _process(row, "modified_process")
        errors = _error_steps(row, len(steps))
        meta: dict[str, Any] = {"benchmark": BENCHMARK, "classification": classification, "idx": idx}
        if row.obj.get("modified_steps") is not None:
            meta["modified_steps"] = list(row.get_list("modified_steps", int))
        reason = row.get("reason", str, required=False)
        if reason is not None:
            meta["reason"] = reason
        chains = []
        adds_correct = correct_processes and classification == CORRECT_SOURCE_CLASS
        adds_correct = adds_correct and idx not in correct_seen
        if adds_correct:
            chains.append(_correct_chain(row, idx))
        if (classification, idx) in seen:
            return row.skip("duplicate")
        seen.add((classification, idx))
        if adds_correct:
            correct_seen.add(idx)
            report.change("added_correct_process", f"record {row.index}: {PRMBENCH_CORRECT}/{idx}")
        chains.append(
            StepChain(
                id=f"{classification}/{idx}",
                question=question,
                steps=steps,
                labels=[0.0 if position in errors else 1.0 for position in range(len(steps))],
                domain=classification,
                meta=meta,
            )
        )
        return chains

    groups = source.read(build)
    chains = [chain for group in groups for chain in group]
    report.kept += len(chains) - len(groups)
    if own_report:
        report.log()
    return chains


def _idx(row: Row) -> str:
    """The record's ``idx`` (a string, or an integer) as a string."""
    raw = row.obj.get("idx")
    if raw is None:
        raise row.error("idx", "missing required field")
    if isinstance(raw, bool) or not isinstance(raw, (str, int)) or str(raw) == "":
        raise row.error("idx", f"expected a non-empty string or an integer, got {raw!r}")
    return str(raw)


def _process(row: Row, name: str) -> list[str]:
    """``row[name]``: a non-empty list of non-empty step strings, each stripped."""
    steps = [step.strip() for step in row.get_list(name, str)]
    if not steps:
        raise row.error(name, "no steps")
    if "" in steps:
        raise row.error(f"{name}[{steps.index('')}]", "empty step")
    return steps


def _error_steps(row: Row, count: int) -> set[int]:
    """The 0-based error steps of a process of ``count`` steps, from the 1-based ``error_steps``."""
    errors = set()
    for position, step in enumerate(row.get_list("error_steps", int)):
        if not 1 <= step <= count:
            raise row.error(
                f"error_steps[{position}]",
                f"error step {step} is outside 1..{count} (the published error steps are 1-based "
                f"step numbers of modified_process)",
            )
        errors.add(step - 1)
    return errors


def _correct_chain(row: Row, idx: str) -> StepChain:
    """The unmodified process of ``row``'s problem, every step correct."""
    steps = _process(row, "original_process")
    return StepChain(
        id=f"{PRMBENCH_CORRECT}/{idx}",
        question=row.get("original_question", str),
        steps=steps,
        labels=[1.0] * len(steps),
        domain=PRMBENCH_CORRECT,
        meta={"benchmark": BENCHMARK, "classification": PRMBENCH_CORRECT, "idx": idx},
    )
