"""VisualProcessBench (Wang et al. 2025, VisualPRM, arXiv 2503.10291): multimodal responses with a
human correctness label per step.

``visualprocessbench``: ``image, question, answer, response: {steps, process_correctness},
policy_model, data_source`` -> step-labelled chains (:class:`prm.data.records.StepChain`).

Sources of the schema:

- the dataset card of huggingface.co/datasets/OpenGVLab/VisualProcessBench (README.md, revisions
  e6f3f46 and 3a2e938): one split, ``test.jsonl`` (2,866 samples, 26,950 step labels) with the
  images in ``images.zip``; per sample ``image`` (list of image paths), ``question``, ``answer``
  (ground truth), ``response`` (the model's response split into steps), ``policy_model``,
  ``data_source`` (the benchmark the question came from); per response ``steps`` and
  ``process_correctness`` (1 / 0 / -1: correct / neutral / incorrect). The card's
  ``dataset_info`` declares every field, ``image`` and ``response`` included, as ``string``, while
  its table describes a list and an object, so both spellings are accepted here;
- the InternVL team's VLMEvalKit class ``VL_PRMBenchmark`` (found in the code index by content,
  repository not named there), which reads the JSONL with ``json.loads`` per line, joins each
  ``image`` entry to the image folder and reads ``response['steps']`` and
  ``response['process_correctness']`` (an object there). No VisualProcessBench evaluation script
  is published in github.com/OpenGVLab/InternVL (its issue #1081 asks for one).

The published rows have no id; a chain's id is ``<data_source>/<row index>`` (a row's ``id``,
should one be present, is used instead).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prm.data.errors import SkipReport
from prm.data.formats.registry import has_keys, register_format
from prm.data.formats.source import Row, Source
from prm.data.images import image_paths
from prm.data.records import StepChain

BENCHMARK = "visualprocessbench"
STEP_LABELS: dict[int, float | None] = {1: 1.0, -1: 0.0, 0: None}
"""``process_correctness`` -> step label: correct 1.0, incorrect 0.0, neutral None (not supervised
and not counted by the benchmark's F1)."""


# Disjoint from every other signature (no other format has data_source with response): the
# priority only places it in the detection order.
@register_format("visualprocessbench", signature=has_keys("question", "response", "data_source"), priority=35)
def read_visualprocessbench(
    path: str | Path,
    data_root: str | Path | None = None,
    missing_image: str = "error",
    report: SkipReport | None = None,
    *,
    allow_outside_paths: bool = False,
) -> list[StepChain]:
    """VisualProcessBench ``test.jsonl`` -> one step-labelled chain per row (file order).

    Each chain: question = ``question``, steps = ``response.steps`` (stripped), labels from
    ``response.process_correctness`` (:data:`STEP_LABELS`: 1 -> 1.0, -1 -> 0.0, 0 -> None), images
    = ``image`` resolved under ``data_root`` (default: the file's folder, where ``images.zip`` is
    unpacked) with the ``missing_image`` policy and the contained-path check of
    :mod:`prm.data.images`, domain = ``data_source``, id = the row's ``id`` if it has one, else
    ``<data_source>/<row index>``, meta = ``{"benchmark": "visualprocessbench", "data_source"}``
    plus ``policy_model`` and ``answer`` when present.
    :meth:`prm.data.records.VisualProcessBenchRecord.from_chain` turns a chain back into a scoring
    record.

    ``response`` may be an object or a JSON string of one; ``image`` a list of paths, one path, a
    JSON string of a list, or absent (no image). Raises :class:`RecordError` naming the file, the
    record and the field (``response.steps``, ``response.process_correctness[k]``, ``image``, ...)
    for a missing or mistyped field, a label outside {1, 0, -1}, as many labels as steps not
    given, no steps, an empty step, an image path outside the image root (unless
    ``allow_outside_paths``), or a missing image under ``missing_image="error"``.
    """
    source = Source(path, data_root, missing_image, report, allow_outside_paths=allow_outside_paths)

    def build(row: Row) -> StepChain | None:
        question = row.get("question", str)
        data_source = row.get("data_source", str)
        steps, labels = _response(row)
        paths = _image_paths(row)
        images = row.resolve(paths, "image")
        if images is None:
            return None
        meta: dict[str, Any] = {"benchmark": BENCHMARK, "data_source": data_source}
        for name in ("policy_model", "answer"):
            value = row.get(name, str, required=False)
            if value is not None:
                meta[name] = value
        record_id = row.unique_id(meta) if row.obj.get("id") is not None else f"{data_source}/{row.index}"
        return StepChain(
            id=record_id,
            question=question,
            steps=steps,
            labels=labels,
            images=images,
            domain=data_source,
            meta=meta,
        )

    return source.read(build)


def _json_field(row: Row, name: str, kind: type) -> Any:
    """``row[name]``, decoded when it is a JSON string of a ``kind`` value (else as it is)."""
    value = row.obj.get(name)
    if isinstance(value, str) and kind is not str and value.lstrip().startswith(("{", "[")):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise row.error(name, f"a JSON string that does not parse: {error}") from None
    return value


def _response(row: Row) -> tuple[list[str], list[float | None]]:
    """(steps, labels) of the row's ``response``."""
    response = _json_field(row, "response", dict)
    if response is None:
        raise row.error("response", "missing required field")
    if not isinstance(response, dict):
        raise row.error("response", f"expected an object (or a JSON string of one), got {response!r:.80}")
    raw_steps = response.get("steps")
    if not isinstance(raw_steps, list) or not all(isinstance(step, str) for step in raw_steps):
        raise row.error("response.steps", f"expected a list of strings, got {raw_steps!r:.80}")
    steps = [step.strip() for step in raw_steps]
    if not steps:
        raise row.error("response.steps", "no steps")
    if "" in steps:
        raise row.error(f"response.steps[{steps.index('')}]", "empty step")
    marks = response.get("process_correctness")
    if not isinstance(marks, list):
        raise row.error("response.process_correctness", f"expected a list of 1 / 0 / -1, got {marks!r:.80}")
    if len(marks) != len(steps):
        message = f"{len(marks)} labels for {len(steps)} steps (one per step needed)"
        raise row.error("response.process_correctness", message)
    labels = []
    for position, mark in enumerate(marks):
        if isinstance(mark, bool) or not isinstance(mark, int) or mark not in STEP_LABELS:
            message = f"label {mark!r} is not one of 1 (correct), 0 (neutral), -1 (incorrect)"
            raise row.error(f"response.process_correctness[{position}]", message)
        labels.append(STEP_LABELS[mark])
    return steps, labels


def _image_paths(row: Row) -> list[str]:
    """The row's image paths as written (checked, not yet resolved)."""
    value = _json_field(row, "image", list)
    if value is row.obj.get("image"):
        return row.image_field("image")
    return image_paths(value, row.source.path, row.index, "image")
