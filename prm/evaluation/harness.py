"""One evaluation harness: every benchmark of ``evaluate.py bench=[...]``, every model, one table.

``python evaluate.py checkpoint=<run> bench=[processbench,prmbench,visualprocessbench,best_of_n]``
scores each subset of each benchmark (``conf/bench/<name>.yaml``: kind, root folder, subsets,
threshold protocol, published models to compare with) with every model: the ``checkpoint=`` (or
``backbone=`` model, or every job of a multirun directory) and each checkpoint of ``compare=[...]``.
It writes ``results.json`` (every figure, threshold, preflight count and timing) and ``report.md``:

1. the results table: a row per benchmark, subset (and PRMBench class / VisualProcessBench data
   source), the headline metric of each model in a column, the published figures beside them;
2. the cost table: per model and subset the threshold and where it was chosen, chains kept of
   read, steps, tokens, scoring seconds, chains/s, tokens/s and peak memory;
3. each benchmark's own detail tables per model.

One protocol for all step-level benchmarks (:class:`BenchKindSpec`): a step scored strictly below the
threshold is flagged wrong; the threshold is fixed (``threshold``) or chosen to maximise the
benchmark's own metric on ``threshold_split``: a subset of the benchmark (that subset's row is then
in-sample and marked ``*``), another file, or ``test`` (each subset on itself, marked ``†``: only
when asked). ProcessBench's preset tunes on GSM8K and reuses the threshold for every subset, the
protocol its authors used for scalar PRMs (Skywork); PRMBench and VisualProcessBench presets use
0.5, as their reference evaluations score published PRMs.

Timing covers the model's forward passes only (reading, checks and tokenisation excluded); tokens
are the chains' tokens as rendered (image placeholders before the processor expands them). Peak
memory is CUDA's peak allocation during the subset's scoring on a GPU, and on the CPU the peak
resident set sampled while the subset is scored (:class:`RSSPeak`).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import os
import resource
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from prm import plots
from prm.config import BenchKind, ConfigError
from prm.data.dataset import chain_lengths, flatten_candidates
from prm.data.records import PRMBenchRecord, VisualProcessBenchRecord
from prm.device import pick_device
from prm.errors import UserError
from prm.evaluation.best_of_n import BestOfNResult, best_of_n
from prm.evaluation.prmbench import (
    PRMBENCH_CLASS_NAMES,
    PRMBENCH_REFERENCE,
    PRMBENCH_REFERENCE_SOURCE,
    PRMBenchResult,
    choose_prmbench_threshold,
    prmbench,
    prmbench_markdown,
)
from prm.evaluation.processbench import (
    PROCESSBENCH_REFERENCE,
    PROCESSBENCH_REFERENCE_SOURCE,
    ProcessBenchResult,
    choose_threshold,
    processbench,
)
from prm.evaluation.report import best_of_n_markdown, processbench_markdown, write_json
from prm.evaluation.scorer import make_scorer
from prm.evaluation.visualprocessbench import (
    VISUALPROCESSBENCH_REFERENCE,
    VISUALPROCESSBENCH_REFERENCE_SOURCE,
    VisualProcessBenchResult,
    choose_visualprocessbench_threshold,
    reference_figure,
    visualprocessbench,
    visualprocessbench_markdown,
)
from prm.preflight import preflight
from prm.tracking import Tracker

log = logging.getLogger("evaluate")

DATA_SUFFIXES = (".json", ".jsonl", ".parquet")
"""Files a benchmark folder's subsets may be; a folder written by ``save_to_disk`` is one too."""

IN_SAMPLE, ON_ITSELF = "*", "†"  # row marks: the threshold was chosen on this subset / on each subset
TEXT_ONLY = "‡"  # row mark: a text-only model did not read the benchmark's images


# --------------------------------------------------------------------------------------- kinds


@dataclass(frozen=True)
class BenchKindSpec:
    """How one kind of benchmark is read, scored and reported.

    ``prepare(records)`` turns the checked records of a subset into what ``compute`` and ``choose``
    take; ``compute(scores, prepared, threshold)`` gives the result, ``choose(scores, prepared)`` the
    threshold maximising the metric (None: the kind has no threshold); ``rows(result, headline)``
    lists ``(row label, value in [0, 1])``, the headline first (label ``""``), then sub-rows;
    ``reference(model, subset, row)`` a published figure in % or None; ``markdown(results, references)``
    the detail tables of one model on this benchmark (``{subset: result}``).
    """

    metric: str
    format: str
    prepare: Callable[[list], Any]
    compute: Callable[[list, Any, float | None], Any]
    choose: Callable[[list, Any], float] | None
    rows: Callable[[Any, str], list[tuple[str, float]]]
    references: dict[str, dict[str, float]]
    reference_source: str
    reference: Callable[[str, str, str], float | None]
    markdown: Callable[[dict[str, Any], Sequence[str]], str]


def _processbench_rows(result: ProcessBenchResult, headline: str) -> list[tuple[str, float]]:
    return [("", result.f1)]


def _prmbench_rows(result: PRMBenchResult, headline: str) -> list[tuple[str, float]]:
    rows = [("", result.prm_score)]
    for name, pool in result.classes.items():  # not "correct": outside the pool, no erroneous step
        if pool.chains and name in PRMBENCH_CLASS_NAMES:
            rows.append((PRMBENCH_CLASS_NAMES.get(name, (name,))[0], pool.score))
    return rows


def _prmbench_column(row: str) -> str:
    by_abbreviation = {abbreviation: name for name, (abbreviation, _) in PRMBENCH_CLASS_NAMES.items()}
    return by_abbreviation.get(row, "overall" if not row else row)


def _vpb_rows(result: VisualProcessBenchResult, headline: str) -> list[tuple[str, float]]:
    return [("", result.macro_f1)] + [(name, pool.score) for name, pool in result.sources.items()]


BASELINE_LABELS = {
    "random": "random pick (expected)",
    "first": "first candidate",
    "majority_vote": "majority vote",
    "pass_at_n": "pass@N",
}


def _best_of_n_rows(result: BestOfNResult, headline: str) -> list[tuple[str, float]]:
    rows = [("", result.aggregations[headline].accuracy)]
    if headline in result.weighted_vote:
        rows.append((f"weighted vote ({headline})", result.weighted_vote[headline].accuracy))
    rows += [(BASELINE_LABELS.get(name, name), method.accuracy) for name, method in result.baselines.items()]
    return rows


def _processbench_markdown(results: dict[str, ProcessBenchResult], references: Sequence[str]) -> str:
    return processbench_markdown(results)


def _per_subset(markdown: Callable[..., str]) -> Callable[[dict[str, Any], Sequence[str]], str]:
    def tables(results: dict[str, Any], references: Sequence[str]) -> str:
        return "\n".join(
            f"**{subset}**\n\n{markdown(result, references)}" for subset, result in results.items()
        )

    return tables


KINDS: dict[str, BenchKindSpec] = {
    BenchKind.processbench: BenchKindSpec(
        metric="F1 (%)",
        format="processbench",
        prepare=lambda records: [record.first_error for record in records],
        compute=processbench,
        choose=choose_threshold,
        rows=_processbench_rows,
        references=PROCESSBENCH_REFERENCE,
        reference_source=PROCESSBENCH_REFERENCE_SOURCE,
        reference=lambda model, subset, row: PROCESSBENCH_REFERENCE.get(model, {}).get(subset),
        markdown=_processbench_markdown,
    ),
    BenchKind.prmbench: BenchKindSpec(
        metric="PRMScore (%)",
        format="prmbench",
        prepare=lambda records: [PRMBenchRecord.from_chain(record) for record in records],
        compute=prmbench,
        choose=choose_prmbench_threshold,
        rows=_prmbench_rows,
        references=PRMBENCH_REFERENCE,
        reference_source=PRMBENCH_REFERENCE_SOURCE,
        reference=lambda model, subset, row: PRMBENCH_REFERENCE.get(model, {}).get(_prmbench_column(row)),
        markdown=_per_subset(lambda result, refs: prmbench_markdown(result, refs)),
    ),
    BenchKind.visualprocessbench: BenchKindSpec(
        metric="macro F1 (%)",
        format="visualprocessbench",
        prepare=lambda records: [VisualProcessBenchRecord.from_chain(record) for record in records],
        compute=visualprocessbench,
        choose=choose_visualprocessbench_threshold,
        rows=_vpb_rows,
        references=VISUALPROCESSBENCH_REFERENCE,
        reference_source=VISUALPROCESSBENCH_REFERENCE_SOURCE,
        reference=lambda model, subset, row: reference_figure(model, row or "overall"),
        markdown=_per_subset(lambda result, refs: visualprocessbench_markdown(result, refs)),
    ),
    BenchKind.best_of_n: BenchKindSpec(
        metric="accuracy (%)",
        format="auto",
        prepare=lambda records: records,
        compute=lambda grouped, records, threshold: best_of_n(records, grouped),
        choose=None,
        rows=_best_of_n_rows,
        references={},
        reference_source="",
        reference=lambda model, subset, row: None,
        markdown=_per_subset(lambda result, refs: best_of_n_markdown(result)),
    ),
}


# ------------------------------------------------------------------------------------ measuring


@dataclass
class Cost:
    """What scoring one subset took: chains and steps scored, chain tokens, forward seconds, peak
    memory in MiB (``memory``: what was measured, CUDA peak allocation or the process's peak RSS)."""

    chains: int
    steps: int
    tokens: int
    seconds: float
    peak_memory_mib: float
    memory: str

    @property
    def chains_per_second(self) -> float:
        return self.chains / self.seconds if self.seconds > 0 else math.nan

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "chains_per_second": self.chains_per_second,
            "tokens_per_second": self.tokens_per_second,
        }


class RSSPeak:
    """The process's peak resident set size (MiB) while a block runs, sampled every ``interval``
    seconds from ``/proc/self/statm`` by a thread (Linux); elsewhere the process's high-water mark
    so far (``getrusage``), which never goes down. ``what`` says which was measured."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak = interval, 0.0
        self.sampling = Path("/proc/self/statm").is_file()
        self.what = "peak RSS while scoring" if self.sampling else "process peak RSS so far"
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> float:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> RSSPeak:
        if self.sampling:
            self.peak = self._rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.sampling:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss())
        else:
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measured(
    score: Callable[[list], list], chains: list, backbone, device: torch.device
) -> tuple[list, Cost]:
    """``score(chains)`` timed, with its chains' tokens (:func:`prm.data.dataset.chain_lengths`) and
    the peak memory (see the module doc). Returns ``(scores, cost)``."""
    tokens = sum(chain_lengths(chains, backbone))
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with RSSPeak() as rss:
        start = time.perf_counter()
        scores = score(chains)
        if cuda:
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    if cuda:
        peak, memory = torch.cuda.max_memory_allocated(device) / 2**20, "CUDA peak allocated"
    else:
        peak, memory = rss.peak, rss.what
    steps = sum(len(chain.steps) for chain in chains)
    return scores, Cost(len(chains), steps, tokens, seconds, peak, memory)


# --------------------------------------------------------------------------------------- files


def bench_files(name: str, spec: DictConfig) -> dict[str, Path]:
    """``{subset: path}`` of benchmark ``name``: ``spec.subsets`` resolved under ``spec.root``
    (``<root>/<subset>`` with a suffix of :data:`DATA_SUFFIXES`, or a dataset folder), or every data
    file / dataset folder of the root, sorted. Raises ConfigError naming the key when the root is
    not a folder, a subset has no file, or the root holds no data file."""
    root = Path(spec.root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"bench.{name}.root={spec.root}: not a folder")
    found = {}
    for path in sorted(root.iterdir()):
        if path.suffix in DATA_SUFFIXES and path.is_file():
            found.setdefault(path.stem, path)
        elif path.is_dir() and any(
            (path / marker).is_file() for marker in ("state.json", "dataset_dict.json")
        ):
            found.setdefault(path.name, path)
    if spec.subsets is None:
        if not found:
            raise ConfigError(
                f"bench.{name}.root={root}: no {'/'.join(DATA_SUFFIXES)} file or dataset folder"
            )
        return found
    chosen = {}
    for subset in spec.subsets:
        named = root / subset  # a subset may also name its file, suffix included
        if subset in found:
            chosen[subset] = found[subset]
        elif named.suffix in DATA_SUFFIXES and named.is_file():
            chosen[named.stem] = named
        else:
            raise ConfigError(
                f"bench.{name}.subsets: no file for {subset!r} under {root} "
                f"(found: {sorted(found) or 'none'})"
            )
    return chosen


def check_bench_config(cfg: DictConfig) -> None:
    """Refuse, naming the key, what would fail only after models load: a step-level benchmark without
    ``root``, a threshold outside [0, 1], neither ``threshold`` nor ``threshold_split``, a
    ``threshold_split`` on ``best_of_n``, an unknown published model in ``references``."""
    for name, spec in cfg.bench.items():
        kind = KINDS[spec.kind]
        if spec.root is None and spec.kind != BenchKind.best_of_n:
            raise ConfigError(f"bench.{name}.root is not set: give bench.{name}.root=<folder with its files>")
        if spec.threshold is not None and not 0.0 <= spec.threshold <= 1.0:
            raise ConfigError(f"bench.{name}.threshold={spec.threshold}: must be null or in [0, 1]")
        if kind.choose is None and (spec.threshold_split is not None or spec.threshold is not None):
            raise ConfigError(f"bench.{name}: a {spec.kind} benchmark has no step threshold to set")
        if spec.threshold is not None and spec.threshold_split is not None:
            raise ConfigError(
                f"bench.{name}: threshold={spec.threshold} (fixed) and threshold_split="
                f"{spec.threshold_split} (chosen) exclude each other: give bench.{name}.threshold=null "
                "to choose it"
            )
        if kind.choose is not None and spec.threshold is None and spec.threshold_split is None:
            raise ConfigError(
                f"bench.{name}: set bench.{name}.threshold=<value> or bench.{name}.threshold_split=<subset, "
                "file, or test (each subset on itself, in-sample)>"
            )
        unknown = [model for model in spec.references if model not in kind.references]
        if unknown:
            raise ConfigError(
                f"bench.{name}.references: no published {spec.kind} figures for {unknown}; known: "
                f"{sorted(kind.references) or 'none'}"
            )


# ---------------------------------------------------------------------------------- one model


@dataclass
class Model:
    """A model of the table: its column label, checkpoint (None: ``backbone.path``), the evaluation
    config carrying its data node, and why that data node (:func:`prm.evaluation.run.data_config`)."""

    label: str
    checkpoint: Path | None
    cfg: DictConfig
    source: str


@dataclass
class SubsetResult:
    """One model on one subset: rows ``(label, value)``, the threshold and where it was chosen, the
    scoring cost, the preflight counts and the kind's result object."""

    rows: list[tuple[str, float]]
    threshold: float | None
    chosen_on: str
    in_sample: str
    cost: Cost
    preflight: dict[str, Any]
    result: Any

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": {label or "headline": value for label, value in self.rows},
            "threshold": self.threshold,
            "threshold_chosen_on": self.chosen_on,
            "cost": self.cost.to_dict(),
            "preflight": self.preflight,
            "result": self.result.to_dict(),
        }


def subset_data(data, path: Path | None, fmt: str, spec: DictConfig):
    """The model's data sources pointed at one benchmark file: test split ``path`` (None: the model's
    own test split, with its own ``limit``), format ``fmt``, ``spec.limit`` records at most (the
    model's ``data.limit`` is for its own data, not for a benchmark), ``spec.data`` keys on top."""
    changes: dict[str, Any] = {key: value for key, value in spec.data.items() if value is not None}
    if path is not None:
        changes.update(test=str(path), test_format=fmt, generator=None, limit=None)
        changes["image_root"] = changes.get("image_root")  # the benchmark file's folder unless given
    if spec.limit is not None:
        changes["limit"] = {"test": int(spec.limit)}
    return dataclasses.replace(data, **changes)


class ModelRun:
    """One loaded model scoring benchmarks: reads and checks each file with the model's backbone
    (same preflight as every evaluation), scores it, times it."""

    def __init__(
        self,
        model: Model,
        prm,
        device: torch.device,
        precision: str,
        prefix_sharing: bool,
        server: DictConfig | None = None,
    ):
        self.model, self.prm, self.device = model, prm, device
        self.precision, self.prefix_sharing = precision, prefix_sharing
        self.server = server  # evaluate.yaml's server node: with a url, a running service scores
        self.data = instantiate(model.cfg.data)

    def read(self, path: Path | None, fmt: str, spec: DictConfig) -> tuple[list, dict, Any]:
        """The checked records of one file, the preflight counts, and the data sources used."""
        data = subset_data(self.data, path, fmt, spec)
        records, report = preflight(data, self.prm.backbone, ("test",))
        counts = {**report.as_dict(), "test_file": str(data.path("test"))}
        reader = data.reports.get("test")
        if reader is not None:  # what the reader did before the preflight: records in the file, skips
            counts["reader"] = {
                "read": reader.read,
                "kept": reader.kept,
                **{f"skipped {reason}": count for reason, count in reader.skipped.items()},
                **dict(reader.changed),
            }
        return records["test"], counts, data

    def score(self, kind: str, records: list, data) -> tuple[list, Cost]:
        """Step scores of ``records`` (best-of-N: per problem, per candidate) with ``data``'s batch
        size, ``max_length`` and packing (or from the service at ``server.url``), and what it cost."""
        run = make_scorer(self.server, self.prm, data, self.device, self.precision)

        if kind != BenchKind.best_of_n:
            return measured(run, records, self.prm.backbone, self.device)
        chains = flatten_candidates(records)
        flat, cost = measured(lambda c: run(c, self.prefix_sharing), chains, self.prm.backbone, self.device)
        grouped, start = [], 0
        for problem in records:
            grouped.append(flat[start : start + len(problem.candidates)])
            start += len(problem.candidates)
        return grouped, cost

    def benchmark(self, name: str, spec: DictConfig, headline: str) -> dict[str, SubsetResult]:
        """Every subset of benchmark ``name`` with its threshold protocol (module doc)."""
        kind = KINDS[spec.kind]
        fmt = spec.format or kind.format
        files: dict[str, Path | None] = bench_files(name, spec) if spec.root is not None else {"test": None}
        scored = {}
        for subset, path in files.items():
            log.info("%s: %s %s (%s)", self.model.label, name, subset, path or "the model's test split")
            records, report, data = self.read(path, fmt, spec)
            scores, cost = self.score(spec.kind, records, data)
            scored[subset] = (scores, kind.prepare(records), cost, report)
        thresholds, chosen_on, marks = self.thresholds(name, spec, kind, fmt, scored)
        results = {}
        for subset, (scores, prepared, cost, report) in scored.items():
            result = kind.compute(scores, prepared, thresholds[subset])
            results[subset] = SubsetResult(
                kind.rows(result, headline),
                thresholds[subset],
                chosen_on,
                marks.get(subset, ""),
                cost,
                report,
                result,
            )
        return results

    def thresholds(self, name: str, spec: DictConfig, kind: BenchKindSpec, fmt: str, scored: dict):
        """``({subset: threshold}, where chosen, {subset: mark})`` under ``spec``'s protocol."""
        subsets = list(scored)
        if kind.choose is None:
            return dict.fromkeys(subsets), "-", {}
        if spec.threshold is not None:
            return dict.fromkeys(subsets, float(spec.threshold)), "fixed", {}
        split = spec.threshold_split

        def choose(scores: list, prepared: Any, where: str) -> float:
            try:
                return kind.choose(scores, prepared)
            except ValueError as error:  # one class only: no threshold separates anything
                raise UserError(
                    f"bench.{name}.threshold_split={split}: cannot choose a threshold on {where}: {error}; "
                    f"give bench.{name}.threshold=<value> or another threshold_split"
                ) from error

        if split == "test":
            chosen = {s: choose(scored[s][0], scored[s][1], f"subset {s}") for s in subsets}
            return chosen, "each subset itself (in-sample)", dict.fromkeys(subsets, ON_ITSELF)
        if split in scored:
            threshold = choose(scored[split][0], scored[split][1], f"subset {split}")
            return dict.fromkeys(subsets, threshold), f"subset {split}", {split: IN_SAMPLE}
        path = None
        if spec.root is not None:
            path = bench_files(name, OmegaConf.merge(spec, {"subsets": None})).get(split)
        path = path or Path(split).expanduser()
        if not path.exists():
            raise ConfigError(
                f"bench.{name}.threshold_split={split}: neither a subset of {subsets}, nor a file, nor 'test'"
            )
        records, _, data = self.read(path, fmt, OmegaConf.merge(spec, {"limit": None}))
        scores, _ = self.score(spec.kind, records, data)
        threshold = choose(scores, kind.prepare(records), str(path))
        return dict.fromkeys(subsets, threshold), str(path), {}


# ------------------------------------------------------------------------------------ the table


def _percent(value: float | None) -> str:
    return "" if value is None else ("n/a" if not math.isfinite(value) else f"{100 * value:.2f}")


PROCESSBENCH_SUBSETS = ("gsm8k", "math", "olympiadbench", "omnimath")  # the published four, for the mean


def _published_mean(kind: BenchKindSpec, model: str, subsets: list[str]) -> float | None:
    """A published model's ProcessBench mean over ``subsets``: the paper's own mean for the four
    published subsets, else the mean of its figures for these subsets (None when one is missing)."""
    figures = kind.references.get(model, {})
    if sorted(subsets) == sorted(PROCESSBENCH_SUBSETS):
        return figures.get("mean")
    values = [figures.get(subset) for subset in subsets]
    return None if None in values else sum(values) / len(values)


def _marks(entry: SubsetResult) -> str:
    """The row marks of one model's headline cell: threshold in-sample, images not read."""
    text_only = entry.preflight.get("test", {}).get("images_ignored_text_only", 0)
    return entry.in_sample + (TEXT_ONLY if text_only else "")


def results_markdown(
    cfg: DictConfig, results: dict[str, dict[str, dict[str, SubsetResult]]], headline: str = "mean"
) -> str:
    """The results table: a row per (benchmark, subset, sub-row), a column per model (headline metric,
    %, marked where the threshold was chosen in-sample or a text-only model did not read the
    images), then the published figures (%). ``headline``: the aggregation best-of-N rows use."""
    models = list(results)
    references = list(dict.fromkeys(model for spec in cfg.bench.values() for model in spec.references))
    header = "| benchmark | subset | metric | " + " | ".join(models)
    header += "".join(f" | {model} (published)" for model in references) + " |"
    lines = [header, "|---|---|---|" + "---:|" * (len(models) + len(references))]
    first = results[models[0]]
    used_marks: set[str] = set()

    def published_cells(values: list[float | None]) -> str:
        return "".join(f" | {'' if value is None else f'{value:.1f}'}" for value in values)

    for name, spec in cfg.bench.items():
        kind = KINDS[spec.kind]
        metric = f"{kind.metric}, {headline}" if spec.kind == BenchKind.best_of_n else kind.metric
        for subset in first[name]:
            labels = [label for label, _ in first[name][subset].rows]
            for position, label in enumerate(labels):
                cells = []
                for model in models:
                    entry = results[model][name][subset]
                    marks = _marks(entry) if position == 0 else ""
                    used_marks.update(marks)
                    cells.append(_percent(dict(entry.rows).get(label)) + marks)
                published = [
                    kind.reference(model, subset, label) if model in spec.references else None
                    for model in references
                ]
                shown = " ↳ " + label if label else subset
                lines.append(
                    f"| {name if position == 0 else ''} | {shown} | {metric if position == 0 else ''} | "
                    + " | ".join(cells)
                    + published_cells(published)
                    + " |"
                )
        subsets = list(first[name])
        if spec.kind == BenchKind.processbench and len(subsets) > 1:
            cells = []
            for model in models:
                f1s = [entry.rows[0][1] for entry in results[model][name].values()]
                cells.append(_percent(sum(f1s) / len(f1s)))
            published = [
                _published_mean(kind, model, subsets) if model in spec.references else None
                for model in references
            ]
            lines.append(
                f"| | mean of {len(subsets)} subsets | F1 (%) | {' | '.join(cells)}"
                + published_cells(published)
                + " |"
            )
    notes = [""]
    explained = {
        IN_SAMPLE: "the threshold was chosen on this subset (in-sample)",
        ON_ITSELF: "the threshold was chosen on each subset itself (threshold_split=test, in-sample)",
        TEXT_ONLY: "a text-only model: the benchmark's images were not read",
    }
    notes += [f"{mark} {text}." for mark, text in explained.items() if mark in used_marks]
    if any(KINDS[spec.kind].choose is not None for spec in cfg.bench.values()):
        notes.append("A step scored below the threshold is flagged wrong (thresholds: the cost table).")
    if any(spec.kind == BenchKind.processbench and spec.references for spec in cfg.bench.values()):
        notes.append("Published ProcessBench means are over the same subsets as ours.")
    for spec in {spec.kind: spec for spec in cfg.bench.values() if spec.references}.values():
        notes.append(f"Published {spec.kind}: {KINDS[spec.kind].reference_source}.")
    return "\n".join(lines + notes) + "\n"


def _preflight_note(counts: dict[str, Any]) -> str:
    """The preflight's counted cases of a subset (truncated, skipped, ...), e.g. ``2 truncated``."""
    cases = {key: value for key, value in counts.items() if key not in ("read", "kept") and value}
    return ", ".join(f"{value} {key}" for key, value in sorted(cases.items()) if isinstance(value, int))


def cost_markdown(results: dict[str, dict[str, dict[str, SubsetResult]]]) -> str:
    """The cost table: per model, benchmark and subset the threshold and where it was chosen, records
    scored of those in the file (with what the reader and the preflight counted: skipped, added,
    truncated, images not read, ...), chains and steps scored, tokens, scoring seconds, chains/s,
    tokens/s and peak memory (MiB)."""
    lines = [
        "| model | benchmark | subset | threshold | chosen on | records (scored/in file) | chains | steps | "
        "tokens | seconds | chains/s | tokens/s | peak memory (MiB) |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    memory = set()
    for model, benchmarks in results.items():
        for name, subsets in benchmarks.items():
            for subset, entry in subsets.items():
                c = entry.cost
                counts = entry.preflight.get("test", {})
                reader = entry.preflight.get("reader", {})
                records = f"{counts.get('kept', '?')}/{reader.get('read', counts.get('read', '?'))}"
                limited = reader.get("kept", 0) - counts.get("read", 0)  # bench.<name>.limit's cut
                cut = f"{counts.get('read')} of {reader.get('kept')} by limit" if limited > 0 else ""
                note = ", ".join(filter(None, (cut, _preflight_note(reader), _preflight_note(counts))))
                records += f" ({note})" if note else ""
                threshold = "-" if entry.threshold is None else f"{entry.threshold:.4g}"
                memory.add(c.memory)
                lines.append(
                    f"| {model} | {name} | {subset} | {threshold} | {entry.chosen_on} | {records} | "
                    f"{c.chains} | {c.steps} | {c.tokens} | {c.seconds:.2f} | {c.chains_per_second:.2f} | "
                    f"{c.tokens_per_second:.0f} | {c.peak_memory_mib:.0f} |"
                )
    lines += [
        "",
        "Seconds: the model's forward passes only. Tokens: the chains as rendered (best-of-N: every "
        f"candidate whole, although shared prefixes run once). Peak memory: {', '.join(sorted(memory))}.",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- running


def run_benchmarks(
    cfg: DictConfig,
    models: list[Model],
    out_dir: Path,
    tracker: Tracker,
    load: Callable[[Model, torch.device], Any],
) -> dict[str, Any]:
    """Score every benchmark of ``cfg.bench`` with every model (loaded one at a time by ``load``),
    write ``results.json`` and ``report.md`` into ``out_dir``, log the table, print it; returns
    the JSON written. Raises ConfigError for a bench config that cannot run (:func:`check_bench_config`)."""
    check_bench_config(cfg)
    device = torch.device(pick_device(cfg.device))
    headline = cfg.aggregation.name
    results: dict[str, dict[str, dict[str, SubsetResult]]] = {}
    for model in models:
        prm = load(model, device)
        run = ModelRun(model, prm, device, cfg.precision, cfg.prefix_sharing, cfg.get("server"))
        results[model.label] = {name: run.benchmark(name, spec, headline) for name, spec in cfg.bench.items()}
        del prm, run
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    table, cost = results_markdown(cfg, results, headline), cost_markdown(results)
    sections = [("Results", table), ("Cost", cost)]
    for label, benchmarks in results.items():
        for name, spec in cfg.bench.items():
            subsets = {subset: entry.result for subset, entry in benchmarks[name].items()}
            sections.append((f"{label}: {name}", KINDS[spec.kind].markdown(subsets, list(spec.references))))
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "models": {
            model.label: {
                "checkpoint": None if model.checkpoint is None else str(model.checkpoint),
                "data_source": model.source,
                "benchmarks": {
                    name: {subset: entry.to_dict() for subset, entry in subsets.items()}
                    for name, subsets in results[model.label].items()
                },
            }
            for model in models
        },
        "bench": OmegaConf.to_container(cfg.bench, resolve=True, enum_to_str=True),
        "headline_aggregation": headline,
    }
    write_json(out_dir / "results.json", summary)
    plots.write_report(out_dir, f"Benchmarks: {', '.join(cfg.bench)}", sections, [])
    rows = []
    for label, benchmarks in results.items():
        for name, subsets in benchmarks.items():
            for subset, entry in subsets.items():
                c = entry.cost
                for row, value in entry.rows:
                    rows.append(
                        [
                            label,
                            name,
                            subset,
                            row or "headline",
                            value,
                            c.chains_per_second,
                            c.tokens_per_second,
                        ]
                    )
    tracker.log_table(
        "bench/results",
        ["model", "benchmark", "subset", "row", "value", "chains_per_s", "tokens_per_s"],
        rows,
    )
    print(table)
    print(cost)
    log.info("results written to %s", out_dir)
    return summary
