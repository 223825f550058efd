"""DreamPRM (Cao et al., 2025): the per-prefix Monte Carlo training file and the meta file.

``dreamprm_train``: one record per solution prefix, grouped into one step chain per ``id``;
``dreamprm_meta``: question + response in ``input`` with a whole-chain ``true_false`` label.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prm.data.errors import SkipReport
from prm.data.formats.registry import has_keys, register_format
from prm.data.formats.source import Row, Source, check_choice
from prm.data.records import LabelledChain, StepChain
from prm.data.steps import split_dreamprm_input

# Tolerance of the accuracy == score / times check: the DreamPRM README writes 7/11 as 0.6363.
ACCURACY_TOLERANCE = 1e-3


@register_format("dreamprm_train", signature=has_keys("add", "accuracy"), priority=70)
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
    source = Source(path, data_root, missing_image, report, allow_outside_paths=allow_outside_paths)
    groups: dict[str, list[Row]] = {}
    for row in source.rows():
        key = row.record_id() if row.obj.get("id") is not None else f"record {row.index}"
        groups.setdefault(key, []).append(row)
    chains, kept = [], 0
    for key, rows in groups.items():
        chain = _dreamprm_chain(source, key, rows)
        if chain is not None:
            chains.append(chain)
            kept += len(chain.steps)
    return source.done(chains, kept)


def _dreamprm_chain(source: Source, key: str, rows: list[Row]) -> StepChain | None:
    """The chain of the prefixes ``rows`` of id ``key``; None when it is skipped (counted)."""
    first = rows[0]
    paths = first.image_field("image_path", required=True)
    for row in rows:
        for name in ("input", "add", "dataset"):
            row.get(name, str)
        row.image_field("image_path", required=True)
        accuracy = row.unit_label(row.get("accuracy", float), "accuracy")
        score = row.get("score", float, required=False)
        times = row.get("times", float, required=False)
        if score is not None and times is not None:
            if times <= 0 or not 0 <= score <= times:
                raise row.error("times", f"need 0 <= score <= times and times > 0, got {score}/{times}")
            if abs(score / times - accuracy) > ACCURACY_TOLERANCE:
                raise row.error("accuracy", f"accuracy {accuracy} != score / times = {score}/{times}")
        for name in ("input", "image_path", "dataset"):
            if row.obj[name] != first.obj[name]:
                message = f"differs from record {first.index}, an earlier prefix of id {key!r}"
                raise row.error(name, message)
    sids = [row.get("sid", int, required=False) for row in rows]
    if all(sid is not None for sid in sids):
        order = sorted(range(len(rows)), key=lambda position: sids[position])
        for before, after in zip(order, order[1:]):
            if sids[before] == sids[after]:
                raise rows[after].error("sid", f"sid {sids[after]} repeated in id {key!r}")
        rows = [rows[position] for position in order]
    elif any(sid is not None for sid in sids):
        missing = rows[sids.index(None)]
        raise missing.error("sid", f"some prefixes of id {key!r} have a sid and this one has none")

    steps, labels, used, previous = [], [], [], ""
    for row in rows:
        add = row.obj["add"]
        step = add[len(previous) :] if add.startswith(previous) else add
        if not step.strip():
            row.skip("empty_prefix")
            continue
        steps.append(step.strip())
        labels.append(float(row.obj["accuracy"]))
        used.append(row)
        previous = add
    if not steps:
        return None
    images = first.resolve(paths, "image_path", weight=len(steps))
    if images is None:
        return None
    meta: dict[str, Any] = {}
    if sids[0] is not None:
        meta["sids"] = [row.obj["sid"] for row in used]
    if first.obj.get("ground_truth") is not None:
        meta["ground_truth"] = first.obj["ground_truth"]
    chain_id = source.unique(key if first.obj.get("id") is not None else str(first.index), meta)
    return StepChain(
        id=chain_id,
        question=first.obj["input"],
        steps=steps,
        labels=labels,
        images=images,
        domain=first.obj["dataset"],
        meta=meta,
    )


# Lowest priority: {input, true_false} is the most generic signature (a conversations meta record
# carries true_false too).
@register_format("dreamprm_meta", signature=has_keys("input", "true_false"), priority=10)
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
    check_choice("no_steps", no_steps, ("skip", "error"))
    source = Source(path, data_root, missing_image, report, domain, allow_outside_paths=allow_outside_paths)

    def build(row: Row) -> LabelledChain | None:
        label = row.flag("true_false")
        text = row.get("input", str)
        paths = row.image_field("image_path", required=True)
        split = split_dreamprm_input(text)
        if not split.steps:
            return row.no_steps(no_steps, "input")
        images = row.resolve(paths, "image_path")
        if images is None:
            return None
        meta: dict[str, Any] = {}
        return LabelledChain(
            id=row.unique_id(meta),
            question=split.question,
            steps=split.steps,
            label=label,
            images=images,
            domain=source.domain,
            final_answer=split.final_answer,
            meta=meta,
        )

    return source.read(build)
