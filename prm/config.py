"""The typed schema of the configs and the checks a config must pass before any data or model loads.

**Schema.** :func:`register_schemas` stores structured-config dataclasses in Hydra's ConfigStore:
``train_schema`` (the top of ``conf/config.yaml``), ``evaluate_schema`` (``conf/evaluate.yaml``) and
``serve_schema`` (``conf/serve.yaml``).
Each config lists its schema first in its defaults, so every YAML file, preset and command-line
override is merged into typed, closed nodes: a misspelt key (``train.stpes=3``) or a value of the
wrong type (``train.steps=abc``) fails at composition with Hydra's own message, before ``main`` runs.
Groups whose options differ in shape (backbone, schedule, logger, ...) stay untyped (``Any``); Hydra's
struct mode still refuses unknown keys in them. Importing :mod:`prm` registers the schemas.

**Vocabularies.** Each enumerated option is one ``StrEnum`` here (:class:`Head`, :class:`LastLayer`,
:class:`EvaluateMode`, :class:`MissingImage`, :class:`TooLong`, :class:`BadImage`,
:class:`SpecialTokens`) typing its schema field, so a value outside it is refused at composition;
on the command line of train.py / evaluate.py / ``prm.check`` with one line and exit status 2
(:func:`refuse_unknown_choices`). Where a refusal needs its own reason (``fp16``) or the values are
not names (``prm.loss_target``'s ``+``), one tuple constant here holds them. Each key has one
default: the YAML that sets it (conf/config.yaml, conf/evaluate.yaml), else the schema
(:class:`DataOptions` for every ``data`` key).

**Checks.** :func:`validate_train_config` and :func:`validate_evaluate_config` test ranges and
combinations that types cannot express (steps >= 1, lr > 0, a known hypergradient, a probability
aggregation for the meta loss, ...) and raise :class:`ConfigError` whose message names the key.

**Exit.** :func:`user_error_exit` turns a :class:`prm.errors.UserError` (ConfigError, data errors)
into one line on stderr and exit status 2; ``PRM_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import re
import sys
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from prm.errors import ConfigError, UserError

HYPERGRADIENTS = ("darts", "neumann", "cg", "sama")  # Betty's reinforce crashes in betty 0.2.1
SECOND_ORDER_HYPERGRADIENTS = ("neumann", "cg")  # Hessian-vector products: double backward
LOSS_TARGETS = ("+", "both", "steps")
# train.precision / precision: a tuple, not an Enum field, so that fp16 is refused with its reason
# (_check_precision) rather than with the schema's bare list of choices.
PRECISIONS = ("fp32", "bf16")
SPLITS = ("train", "meta", "test")  # data.<split>, data.limit.<split>, prm.check's splits=


# ----------------------------------------------------------------------------------------------
# Vocabularies: the one definition of each enumerated option. Schema fields typed with them are
# refused at composition when a value is outside them (Hydra: "Invalid value 'x', expected one of
# [a, b]"; train.py / evaluate.py turn a command-line one into one line and exit status 2, see
# refuse_unknown_choices). StrEnum members equal their strings (Head.token == "token", f"{Head.token}"
# is "token"), so the code compares with plain strings; every name equals its value, which is what
# the YAML files and the command line write.


class Head(StrEnum):
    """``prm.head``: the step head (:class:`prm.model.prm.ProcessRewardModel`)."""

    token = "token"
    value = "value"


class LastLayer(StrEnum):
    """``prm.last_layer``: the last decoder layer at the score positions only, or in full
    (:mod:`prm.model.last_layer`)."""

    scores = "scores"
    full = "full"


class EvaluateMode(StrEnum):
    """``mode`` of evaluate.py: detected from the test file, or forced (:mod:`prm.evaluation.run`)."""

    auto = "auto"
    best_of_n = "best_of_n"
    processbench = "processbench"


class BenchKind(StrEnum):
    """``bench.<name>.kind``: which metric a benchmark of ``evaluate.py bench=[...]`` computes
    (:mod:`prm.evaluation.harness`)."""

    processbench = "processbench"
    prmbench = "prmbench"
    visualprocessbench = "visualprocessbench"
    best_of_n = "best_of_n"


class MissingImage(StrEnum):
    """``data.missing_image``: a record whose image file is missing (:mod:`prm.data.images`)."""

    error = "error"
    skip = "skip"
    blank = "blank"


class TooLong(StrEnum):
    """``data.too_long``: a chain over ``data.max_length`` tokens (:mod:`prm.preflight`)."""

    truncate = "truncate"
    error = "error"
    skip = "skip"


class BadImage(StrEnum):
    """``data.bad_image``: an image the processor refuses or cannot decode (:mod:`prm.preflight`)."""

    fix = "fix"
    skip = "skip"
    error = "error"


class GradScale(StrEnum):
    """``reweight.upper.grad_scale``: the hypergradient as computed, or divided by its RMS
    (:func:`prm.bilevel.upper.rms_scale`)."""

    none = "none"
    rms = "rms"


class SpecialTokens(StrEnum):
    """``data.special_tokens``: special-token text inside questions or steps (:mod:`prm.preflight`)."""

    neutralize = "neutralize"
    error = "error"


def choices(vocabulary: type[Enum]) -> str:
    """The values of ``vocabulary`` as a message lists them: ``"token, value"``."""
    return ", ".join(member.value for member in vocabulary)


def check_choice(key: str, value: Any, vocabulary: type[Enum]) -> None:
    """Raise :class:`ConfigError` ``"<key>=<value>: expected one of <choices>"`` unless ``value`` is
    the name of a member of ``vocabulary`` (for code paths that no schema covers)."""
    if not (isinstance(value, vocabulary) or (isinstance(value, str) and value in vocabulary.__members__)):
        raise ConfigError(f"{key}={value!r}: expected one of {choices(vocabulary)}")


# ----------------------------------------------------------------------------------------------
# Schema. Optional[...] (not X | None): OmegaConf reads these annotations at runtime. One default per
# key: a key that conf/config.yaml or conf/evaluate.yaml sets is MISSING here (the YAML, where users
# read it, holds its default); a key no YAML sets has its default here (train.compile, the data keys).


@dataclass
class PRMSchema:
    head: Head = MISSING
    # moved to reweight.upper.loss_target (only the upper level reads it); kept so that a config still
    # setting it gets a ConfigError naming the new key instead of Hydra's "not in struct"
    loss_target: Optional[str] = None  # noqa: UP045
    last_layer: LastLayer = MISSING


@dataclass
class TrainSchema:
    steps: int = MISSING
    # instantiate(train.optimizer)(params): any torch optimiser; a dict node so that its keys can
    # follow the optimiser (+train.optimizer.momentum=0.9 for SGD), yet a misspelt key is refused.
    optimizer: dict[str, Any] = MISSING
    gradient_clipping: float = MISSING
    gradient_accumulation: int = MISSING
    precision: str = MISSING  # PRECISIONS
    validate_every: int = MISSING
    save_every: int = MISSING
    keep_last_n_checkpoints: int = MISSING
    max_nonfinite_steps: int = MISSING
    device: str = MISSING
    compile: bool = False  # torch.compile the backbone (in place: parameter names unchanged)


@dataclass
class HypergradientSchema:
    type: str = "darts"  # darts | neumann | cg | sama
    unroll_steps: int = 1
    darts_alpha: Optional[float] = None  # noqa: UP045
    iterations: int = 1
    alpha: float = 1.0
    sama_adam_alpha: float = 1.0
    probe_chains: int = 0  # 0: DARTS on the lower batch; N: on N training chains (prm/bilevel/probe.py)
    warmup_steps: int = 0  # lower optimiser steps before the first upper step (weights stay at their start)


@dataclass
class UpperSchema:
    optimizer: dict[str, Any] = MISSING
    schedule: dict[str, Any] = field(
        default_factory=lambda: {
            "_target_": "prm.schedules.warmup_schedule",
            "_partial_": True,
            "name": "constant",
            "warmup_ratio": 0.0,
        }
    )
    batch_size: int = "${data.batch_size}"  # type: ignore[assignment]
    gradient_clipping: float = 0.0
    grad_scale: GradScale = GradScale.none
    sampler_seed: Optional[int] = None  # noqa: UP045
    loss_target: str = MISSING  # + | both | steps (the meta loss; prm/bilevel/meta_loss.py)
    # optimiser per parameter group of the reweighter (prm.reweight.ParameterGroup), by group name;
    # a group not named here uses ``optimizer``
    optimizers: Optional[dict[str, Any]] = None  # noqa: UP045


@dataclass
class ReweightSchema:
    """``reweight=none`` sets only ``name``; the bi-level strategies fill in the rest."""

    name: str = "none"
    module: Optional[dict[str, Any]] = None  # noqa: UP045
    hypergradient: Optional[HypergradientSchema] = None  # noqa: UP045
    upper: Optional[UpperSchema] = None  # noqa: UP045


# The one default of data.max_length (tokens per chain, images' expanded tokens included): the data
# options', which every conf/data/*.yaml inherits unless it sets its own (demo.yaml: 512, its chains
# are short).
DEFAULT_MAX_LENGTH = 4096


@dataclass
class DataOptions:
    """The keys of the ``data`` group and their one default each: :class:`DataSchema` types the
    composed config with them and :class:`prm.data.sources.DataSources` (what ``data`` builds)
    inherits them."""

    name: str = "custom"
    train: Optional[str] = None  # noqa: UP045
    meta: Optional[str] = None  # noqa: UP045
    test: Optional[str] = None  # noqa: UP045
    format: str = "auto"
    train_format: Optional[str] = None  # noqa: UP045
    meta_format: Optional[str] = None  # noqa: UP045
    test_format: Optional[str] = None  # noqa: UP045
    image_root: Optional[str] = None  # noqa: UP045
    missing_image: MissingImage = MissingImage.error
    allow_outside_paths: bool = False  # accept absolute, "~" and root-leaving ".." image paths
    # Images given as bytes in Parquet / datasets rows are written here once each, named by their
    # SHA-256 (prm.data.image_cache); null: $PRM_CACHE_DIR/images (.cache/images without it).
    image_cache: Optional[str] = None  # noqa: UP045
    # Each split's reader's own options, {split: {option: value}}, e.g. {train: {neutral: half}} for
    # PRM800K (prm.data.formats); null: none.
    reader_options: Any = None
    # Preflight policies (prm.preflight): each case is counted in the preflight report.
    too_long: TooLong = TooLong.truncate  # truncate drops trailing steps
    bad_image: BadImage = BadImage.fix  # fix pads / enlarges what the processor refuses
    special_tokens: SpecialTokens = SpecialTokens.neutralize
    allow_one_class_meta: bool = False  # a meta split of one class: a warning instead of an error
    generator: Any = None  # an object with .build() -> DemoFiles-like (train, meta, test, image_root)
    batch_size: int = 8
    eval_batch_size: int = 16
    max_length: Optional[int] = DEFAULT_MAX_LENGTH  # noqa: UP045
    num_workers: int = 0
    # Speed (see PRMCollator and LengthGroupedSampler): batches of similar token length, grouped in
    # windows of length_window global batches of the seeded order; packing: no padding tokens.
    group_by_length: bool = False
    length_window: int = 64
    packing: bool = False
    # At most this many records per split (an int for every split, or {split: int}); null: all.
    # An evenly spaced subset, so files sorted by domain keep every domain; always logged.
    limit: Any = None


@dataclass
class DataSchema(DataOptions):
    """The ``data`` node: :class:`DataOptions` plus the class Hydra instantiates."""

    _target_: str = "prm.data.sources.DataSources"


@dataclass
class TrainRunSchema:
    """``conf/config.yaml``: what train.py composes."""

    backbone: Any = MISSING
    prompt: Any = MISSING  # conf/prompt/<name>.yaml: the layout chains are scored in
    data: DataSchema = field(default_factory=DataSchema)
    reweight: ReweightSchema = field(default_factory=ReweightSchema)
    activation: Any = MISSING
    aggregation: Any = MISSING
    schedule: Any = MISSING
    logger: Any = MISSING
    distributed: Any = MISSING
    seed: int = MISSING
    resume: Any = MISSING  # false | true (this run dir's latest checkpoint) | a run or checkpoint path
    # dotted keys (and the keys under them) a resume may change on purpose, e.g. [train.steps];
    # every other result key must equal the checkpoint's (prm/training/state.py)
    resume_allow_changes: list[str] = MISSING
    prm: PRMSchema = field(default_factory=PRMSchema)
    train: TrainSchema = field(default_factory=TrainSchema)
    optimized_metric: str = MISSING


@dataclass
class ProcessBenchSchema:
    threshold: Optional[float] = MISSING  # noqa: UP045
    threshold_split: Optional[str] = MISSING  # noqa: UP045


@dataclass
class EvaluateServerSchema:
    """``server``: evaluate.py takes its step scores from a running ``python -m prm.serve`` at ``url``
    (null: the local model scores; :mod:`prm.evaluation.scorer`)."""

    url: Optional[str] = None  # noqa: UP045
    api_key: Optional[str] = None  # noqa: UP045
    timeout_s: float = 600.0  # seconds per request
    concurrency: int = 8  # requests in flight


@dataclass
class BenchDataSchema:
    """``bench.<name>.data``: ``data.*`` keys for a benchmark's files; null keeps the model's value."""

    image_root: Optional[str] = None  # noqa: UP045
    missing_image: Optional[MissingImage] = None  # noqa: UP045
    allow_outside_paths: Optional[bool] = None  # noqa: UP045
    max_length: Optional[int] = None  # noqa: UP045
    too_long: Optional[TooLong] = None  # noqa: UP045
    bad_image: Optional[BadImage] = None  # noqa: UP045
    eval_batch_size: Optional[int] = None  # noqa: UP045
    packing: Optional[bool] = None  # noqa: UP045


@dataclass
class BenchSchema:
    """One benchmark of ``evaluate.py bench=[...]`` (``conf/bench/<name>.yaml``, under ``bench.<name>``).

    ``root``: the folder holding the benchmark's files; ``subsets``: their stems (``gsm8k`` reads
    ``<root>/gsm8k.json``, ``.jsonl`` or ``.parquet``), null: every data file in ``root``. A
    ``best_of_n`` benchmark without ``root`` uses the model's own test split. ``threshold``: a fixed
    step threshold; else it is chosen on ``threshold_split``: a subset name (that subset's row is then
    in-sample and marked so), a file, or ``test`` (each subset on itself, marked in the table).
    ``references``: published models whose figures go beside ours. ``limit``: at most this many
    records per subset. ``data``: ``data.*`` keys for these files (``image_root``, ``max_length``,
    ``missing_image``, ...) on top of the model's data config.
    """

    kind: BenchKind = MISSING
    root: Optional[str] = None  # noqa: UP045
    subsets: Optional[list[str]] = None  # noqa: UP045
    format: Optional[str] = None  # noqa: UP045  (null: the kind's reader)
    threshold: Optional[float] = None  # noqa: UP045
    threshold_split: Optional[str] = None  # noqa: UP045
    references: list[str] = field(default_factory=list)
    limit: Optional[int] = None  # noqa: UP045
    data: BenchDataSchema = field(default_factory=BenchDataSchema)


@dataclass
class EvaluateSchema:
    """``conf/evaluate.yaml``: what evaluate.py composes: ``checkpoint`` (a model train.py wrote), or
    ``backbone`` + ``prompt`` (any model at ``backbone.path``)."""

    data: DataSchema = field(default_factory=DataSchema)
    aggregation: Any = MISSING
    logger: Any = MISSING
    checkpoint: str = MISSING
    backbone: Any = None
    prompt: Any = None
    seed: int = 0  # only for backbone configs that read ${seed}
    device: str = MISSING
    precision: str = MISSING  # PRECISIONS
    mode: EvaluateMode = MISSING
    prefix_sharing: bool = MISSING  # best-of-N: one encoding of each problem's question + images
    processbench: ProcessBenchSchema = field(default_factory=ProcessBenchSchema)
    server: EvaluateServerSchema = field(default_factory=EvaluateServerSchema)
    # evaluate.py bench=[processbench,prmbench,...]: every benchmark in one run and one table
    bench: dict[str, BenchSchema] = field(default_factory=dict)
    # more models in the same bench table: run / checkpoint / multirun-job paths, or models train.py
    # never wrote as {backbone: <config>, path: <dir>, prompt: <format>, label_words: [...], name: <label>}
    compare: list[Any] = field(default_factory=list)


class StepSplit(StrEnum):
    """``steps.split`` of ``python -m prm.serve``: how a candidate given as text becomes steps
    (:mod:`prm.serve.requests`)."""

    candidate = "candidate"  # prm.data.steps.split_candidate: numbered lines, else paragraphs; "Answer:" step
    paragraphs = "paragraphs"  # blank-line separated paragraphs
    lines = "lines"  # one step per non-empty line
    separator = "separator"  # split at steps.separator


@dataclass
class StepSplitSchema:
    split: StepSplit = StepSplit.candidate
    separator: str = "\n\n"  # steps.split=separator only


@dataclass
class ServeLimitsSchema:
    """What one request may hold; a request over a limit gets a 4xx naming the field."""

    max_body_bytes: int = 8_000_000
    max_candidates: int = 64  # candidates per native request, queries per OpenRLHF request
    max_steps: int = 128  # steps per candidate
    max_images: int = 8  # images per request
    max_image_bytes: int = 4_000_000  # one base64 data-URL image, decoded
    max_queued_chains: int = 4096  # chains waiting for the model; more: 503 (come back later)


@dataclass
class OpenRLHFSchema:
    """``POST /v1/openrlhf``: how a query (prompt + response text) becomes a question and steps."""

    aggregation: str = "min"  # the chain score that is the reward
    dense: bool = False  # also return per-step rewards (a request's "dense" overrides it)
    # the question is prompts[i] (OpenRLHF sends query = prompt + response); question_regex, when set,
    # takes its group "question" from the prompt (e.g. the user turn out of a chat-templated prompt)
    question_regex: Optional[str] = None  # noqa: UP045
    # without prompts: the query is cut at the last occurrence of this string (null: prompts required)
    response_separator: Optional[str] = None  # noqa: UP045
    strip: list[str] = field(default_factory=list)  # strings removed from the response's end (EOS, ...)
    skipped_reward: float = 0.0  # the reward of a response with no step, or skipped as too long


@dataclass
class ServeSchema:
    """``conf/serve.yaml``: what ``python -m prm.serve`` composes: ``checkpoint`` (a model train.py
    wrote) or ``backbone`` + ``prompt`` (any model at ``backbone.path``), and the server's settings."""

    checkpoint: Optional[str] = None  # noqa: UP045
    backbone: Any = None
    prompt: Any = None
    seed: int = 0  # only for backbone configs that read ${seed}
    device: str = "auto"
    precision: str = "fp32"  # PRECISIONS
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: Optional[str] = None  # noqa: UP045  (clients send "Authorization: Bearer <key>")
    image_root: Optional[str] = None  # noqa: UP045  (null: image paths refused, data URLs only)
    batch_window_ms: float = 5.0  # how long the worker waits for more requests to batch together
    max_batch: int = 64  # chains per scoring call (one request with more runs alone)
    batch_size: int = 16  # chains per forward pass (evaluate.py's data.eval_batch_size)
    request_timeout_s: float = 60.0
    graceful_shutdown_s: float = 30.0
    # null: the checkpoint's data.<key> (backbone=: the data schema's default)
    max_length: Optional[int] = None  # noqa: UP045
    too_long: Optional[TooLong] = None  # noqa: UP045
    special_tokens: Optional[SpecialTokens] = None  # noqa: UP045
    aggregations: Optional[list[str]] = None  # noqa: UP045  (returned by default; null: all)
    steps: StepSplitSchema = field(default_factory=StepSplitSchema)
    limits: ServeLimitsSchema = field(default_factory=ServeLimitsSchema)
    openrlhf: OpenRLHFSchema = field(default_factory=OpenRLHFSchema)


def register_schemas() -> None:
    """Store ``train_schema``, ``evaluate_schema`` and ``serve_schema`` in Hydra's ConfigStore
    (idempotent)."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainRunSchema)
    store.store(name="evaluate_schema", node=EvaluateSchema)
    store.store(name="serve_schema", node=ServeSchema)


register_schemas()


# ----------------------------------------------------------------------------------------------
# Checks


def _get(cfg, key: str, default=None):
    """The value at dotted ``key``; ``default`` when the key is absent or ``???``."""
    if not _exists(cfg, key):
        return default
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return default if OmegaConf.is_missing(node, leaf) else node[leaf]


def _exists(cfg, key: str) -> bool:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return isinstance(node, DictConfig) and leaf in node


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _number(cfg, key: str):
    value = _get(cfg, key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ConfigError(f"{key}={value!r}: expected a number")
    return value


def _at_least(cfg, key: str, low: float) -> None:
    value = _number(cfg, key)
    _require(value is not None and value >= low, f"{key}={value}: must be >= {low:g}")
    _require(math.isfinite(value), f"{key}={value}: must be a finite number")


def _positive(cfg, key: str) -> None:
    value = _number(cfg, key)
    _require(value is not None and value > 0, f"{key}={value}: must be > 0")
    _require(math.isfinite(value), f"{key}={value}: must be a finite number")


def _check_precision(key: str, precision) -> None:
    if precision == "fp16":
        raise ConfigError(
            f"{key}=fp16 is not supported: float16 needs loss scaling to keep small gradients from "
            "underflowing to 0, and the hypergradient's finite differences and second-order terms are "
            "not scaled; use bf16 (same memory, float32's range) or fp32"
        )
    _require(precision in PRECISIONS, f"{key}={precision!r}: expected one of {', '.join(PRECISIONS)}")


def _check_device(key: str, device) -> None:
    import torch

    device = str(device)
    known = device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
    _require(known, f"{key}={device!r}: expected auto, cpu, cuda or cuda:<index>")
    if device.startswith("cuda"):
        _require(
            torch.cuda.is_available(),
            f"{key}={device} but torch sees no CUDA device (torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda}); use {key}=auto or {key}=cpu",
        )
        if ":" in device:
            index = int(device.split(":")[1])
            count = torch.cuda.device_count()
            _require(index < count, f"{key}={device} but only {count} CUDA device(s) exist")


def _check_label_words(cfg) -> None:
    """``backbone.label_words``: two different non-empty strings (positive, negative). The same word
    twice makes l+ - l- = 0 at every step: every score is 0.5 and the loss ln 2, so nothing trains.
    Whether each word is one token of the tokenizer is checked where it loads
    (:func:`prm.model.backbones.build_backbone`)."""
    if not _exists(cfg, "backbone.label_words"):
        return
    words = _get(cfg, "backbone.label_words")
    listed = list(words) if isinstance(words, list | tuple) or OmegaConf.is_list(words) else None
    _require(
        listed is not None and len(listed) == 2 and all(isinstance(w, str) and w for w in listed),
        f"backbone.label_words={words!r}: expected two non-empty words [positive, negative], e.g. ['+', '-'] "
        "(quote numbers on the command line: \"backbone.label_words=['1','0']\")",
    )
    _require(
        listed[0] != listed[1],
        f"backbone.label_words={listed!r}: the positive and negative words must differ (with the same "
        "word twice every step scores 0.5 and nothing trains)",
    )


def _check_limit(cfg) -> None:
    limit = _get(cfg, "data.limit")
    if limit is None:
        return
    items = limit.items() if isinstance(limit, Mapping) else [(split, limit) for split in SPLITS]
    for split, value in items:
        where = f"data.limit.{split}" if isinstance(limit, Mapping) else "data.limit"
        _require(split in SPLITS, f"{where}: unknown split; expected keys among {', '.join(SPLITS)}")
        ok = value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)
        _require(ok, f"{where}={value!r}: expected null or a record count >= 1")


def _check_data(cfg, evaluate: bool) -> None:
    if not evaluate:
        _at_least(cfg, "data.batch_size", 1)
    _at_least(cfg, "data.eval_batch_size", 1)
    _at_least(cfg, "data.length_window", 1)
    max_length = _get(cfg, "data.max_length")
    _require(max_length is None or max_length >= 1, f"data.max_length={max_length}: must be >= 1 or null")
    _check_limit(cfg)
    _check_reader_options(cfg)


def _check_reader_options(cfg) -> None:
    options = _get(cfg, "data.reader_options")
    if options is None:
        return
    shape = "expected {split: {option: value}}"
    _require(isinstance(options, Mapping), f"data.reader_options={options!r}: {shape}")
    for split, value in options.items():
        where = f"data.reader_options.{split}"
        _require(split in SPLITS, f"{where}: unknown split; expected keys among {', '.join(SPLITS)}")
        _require(value is None or isinstance(value, Mapping), f"{where}={value!r}: {shape}")


def validate_train_config(cfg: DictConfig) -> None:
    """Check a composed ``conf/config.yaml`` before any data or model loads.

    Rules (each failure raises :class:`ConfigError` naming the key): ``train.steps >= 1``; learning
    rates > 0 (``train.optimizer.lr``, and ``reweight.upper.optimizer.lr`` when reweighting);
    ``data.batch_size``, ``data.eval_batch_size``, ``reweight.upper.batch_size``,
    ``train.gradient_accumulation``, ``train.keep_last_n_checkpoints`` and ``train.max_nonfinite_steps``
    >= 1; ``backbone.label_words`` two different non-empty words; ``train.save_every``,
    ``train.validate_every`` and the gradient clipping norms >= 0;
    ``prm.loss_target`` unset (it moved to ``reweight.upper.loss_target``); ``train.precision`` fp32 or bf16
    (fp16 refused, with the reason); ``train.device`` cuda only where torch sees CUDA; with
    reweighting (a ``reweight.upper`` node), a known ``reweight.upper.loss_target``, every group's
    ``reweight.upper.optimizers.<group>.lr`` > 0, a known ``reweight.hypergradient.type``
    (``neumann`` / ``cg`` only with ``backbone.attn_implementation=eager`` and without
    ``train.compile``: they need second derivatives), ``unroll_steps >= 1``, and an aggregation whose
    value is a probability (the meta loss (p - y)^2 with the configured
    ``reweight.upper.loss_target``).
    """
    _at_least(cfg, "train.steps", 1)
    _positive(cfg, "train.optimizer.lr")
    _at_least(cfg, "train.gradient_accumulation", 1)
    _at_least(cfg, "train.save_every", 0)
    _at_least(cfg, "train.validate_every", 0)
    _at_least(cfg, "train.gradient_clipping", 0)
    for key in ("train.keep_last_n_checkpoints", "train.max_nonfinite_steps"):
        if _exists(cfg, key):
            _at_least(cfg, key, 1)
    _check_precision("train.precision", _get(cfg, "train.precision"))
    _check_device("train.device", _get(cfg, "train.device"))
    _check_data(cfg, evaluate=False)
    _check_label_words(cfg)
    old_target = _get(cfg, "prm.loss_target")
    _require(
        old_target is None,
        f"prm.loss_target={old_target}: the meta loss's target moved to reweight.upper.loss_target (only "
        f"the upper level reads it); set reweight.upper.loss_target={old_target} instead",
    )
    if _get(cfg, "reweight.upper") is None:
        return  # plain training (reweight=none), or a baseline without an upper level (small_loss, oracle)
    target = _get(cfg, "reweight.upper.loss_target")
    _require(
        target in LOSS_TARGETS,
        f"reweight.upper.loss_target={target!r}: expected one of {', '.join(LOSS_TARGETS)}",
    )
    kind = _get(cfg, "reweight.hypergradient.type")
    _require(
        kind in HYPERGRADIENTS,
        f"reweight.hypergradient.type={kind!r}: expected one of {', '.join(HYPERGRADIENTS)}",
    )
    _at_least(cfg, "reweight.hypergradient.unroll_steps", 1)
    _at_least(cfg, "reweight.hypergradient.probe_chains", 0)
    _at_least(cfg, "reweight.hypergradient.warmup_steps", 0)
    if kind in SECOND_ORDER_HYPERGRADIENTS:
        # cg needs a step to move off x = 0; neumann's 0 iterations is the estimate H^-1 ~ alpha I
        _at_least(cfg, "reweight.hypergradient.iterations", 1 if kind == "cg" else 0)
        _positive(cfg, "reweight.hypergradient.alpha")
        attention = _get(cfg, "backbone.attn_implementation", "sdpa")
        _require(
            attention == "eager",
            f"reweight.hypergradient.type={kind} differentiates the training loss twice (Hessian-vector "
            f"products), but backbone.attn_implementation={attention} has no second derivative (torch's "
            "fused attention kernels); set backbone.attn_implementation=eager, or use "
            "reweight.hypergradient.type=darts or sama (first derivatives only)",
        )
        _require(
            not _get(cfg, "train.compile", False),
            f"reweight.hypergradient.type={kind} needs second derivatives, which torch.compile'd "
            "blocks do not provide; set train.compile=false",
        )
        stage = _get(cfg, "distributed.deepspeed.zero_optimization.stage")
        _require(
            stage != 3,
            f"reweight.hypergradient.type={kind} is not supported under distributed=zero3 (parameters "
            "exist only as shards outside a forward, so no Hessian-vector product can be taken); use "
            "reweight.hypergradient.type=darts, or distributed=zero2",
        )
    _positive(cfg, "reweight.upper.optimizer.lr")
    for group in _get(cfg, "reweight.upper.optimizers") or {}:
        _positive(cfg, f"reweight.upper.optimizers.{group}.lr")
    _at_least(cfg, "reweight.upper.batch_size", 1)
    _at_least(cfg, "reweight.upper.gradient_clipping", 0)
    from prm.aggregation import PROBABILITY_VALUED, aggregation_spec

    name = _get(cfg, "aggregation.name")
    aggregation_spec(name)
    _require(
        name in PROBABILITY_VALUED or target == "steps",
        f"aggregation={name} is not a probability, so the meta loss of reweight={_get(cfg, 'reweight.name')} "
        f"with reweight.upper.loss_target={target} ((p - y)^2 for '+', (p' - 1)^2 for 'both') has no "
        "meaning; "
        f"choose aggregation= one of {', '.join(sorted(PROBABILITY_VALUED))}",
    )


def _check_model_choice(cfg: DictConfig, command: str, checkpoints: str) -> None:
    """The model of ``evaluate.py`` / ``python -m prm.serve``: ``checkpoint`` (``checkpoints`` says what
    it may name) or ``backbone`` with ``backbone.path``, not both, ``prompt`` only with ``backbone``,
    the backbone's label words, ``precision`` and ``device``; ConfigError naming the key."""
    checkpoint = bool(_get(cfg, "checkpoint"))
    backbone = _get(cfg, "backbone") is not None
    _require(
        checkpoint or backbone,
        f"checkpoint is not set: give checkpoint=<{checkpoints}> (a model "
        "train.py wrote), or backbone=<config> backbone.path=<dir> [prompt=<format>] (any model)",
    )
    _require(
        not (checkpoint and backbone),
        "checkpoint= and backbone= exclude each other: a checkpoint's config.yaml sets its backbone and "
        "prompt; use backbone=<config> backbone.path=<dir> for a model train.py never wrote",
    )
    _require(
        backbone or _get(cfg, "prompt") is None,
        "prompt= goes with backbone=<config> backbone.path=<dir>; a checkpoint's config.yaml sets its prompt",
    )
    _require(
        not backbone or bool(_get(cfg, "backbone.path")),
        f"backbone.path is not set: {command} backbone=<config> backbone.path=<checkpoint dir>",
    )
    if backbone:
        _check_label_words(cfg)
    _check_precision("precision", _get(cfg, "precision"))
    _check_device("device", _get(cfg, "device"))


def validate_evaluate_config(cfg: DictConfig) -> None:
    """Check a composed ``conf/evaluate.yaml`` before any checkpoint or data loads.

    Rules (each failure raises :class:`ConfigError` naming the key): either ``checkpoint`` or
    ``backbone`` with ``backbone.path`` set, not both, and ``prompt`` only with ``backbone``;
    ``backbone.label_words`` two different non-empty words;
    ``precision`` fp32 or bf16; ``device`` cuda only where torch sees CUDA;
    ``data.eval_batch_size >= 1``; ``processbench.threshold`` null or in [0, 1]; a known aggregation;
    ``server.url`` null or ``http(s)://...``, with ``server.concurrency >= 1``, ``server.timeout_s > 0``
    and no ``compare`` (the server serves one model).
    """
    _check_model_choice(cfg, "evaluate.py", "run dir, checkpoint folder or multirun dir")
    _check_data(cfg, evaluate=True)
    threshold = _number(cfg, "processbench.threshold")
    _require(
        threshold is None or 0.0 <= threshold <= 1.0,
        f"processbench.threshold={threshold}: must be null or in [0, 1]",
    )
    from prm.aggregation import aggregation_spec

    aggregation_spec(_get(cfg, "aggregation.name"))
    url = _get(cfg, "server.url")
    if url is not None:
        _require(
            str(url).startswith(("http://", "https://")),
            f"server.url={url!r}: expected http://host:port of a running python -m prm.serve",
        )
        _require(_number(cfg, "server.concurrency") >= 1, "server.concurrency must be >= 1")
        _require(_number(cfg, "server.timeout_s") > 0, "server.timeout_s must be > 0")
        _require(
            not _get(cfg, "compare"),
            "server.url serves one model: compare=[...] scores several; drop one of them",
        )


def validate_serve_config(cfg: DictConfig) -> None:
    """Check a composed ``conf/serve.yaml`` before the model loads.

    Rules (each failure raises :class:`ConfigError` naming the key): ``checkpoint`` or ``backbone``
    with ``backbone.path``, not both, ``prompt`` only with ``backbone``; ``backbone.label_words`` two
    different words; ``precision`` fp32 or bf16; ``device`` known (cuda only where torch sees it);
    ``port`` in [0, 65535]; ``batch_window_ms``, ``request_timeout_s``, ``graceful_shutdown_s`` >= 0;
    ``max_batch``, ``batch_size`` and every ``limits.*`` >= 1; ``max_length`` null or >= 1; every
    name of ``aggregations`` and ``openrlhf.aggregation`` known; ``steps.separator`` non-empty with
    ``steps.split=separator``; ``openrlhf.question_regex`` a regular expression with a group
    ``question``.
    """
    _check_model_choice(cfg, "python -m prm.serve", "run dir or checkpoint folder")
    port = _number(cfg, "port")
    _require(isinstance(port, int) and 0 <= port <= 65535, f"port={port}: expected an integer in [0, 65535]")
    for key in ("batch_window_ms", "request_timeout_s", "graceful_shutdown_s"):
        _at_least(cfg, key, 0)
    for key in ("max_batch", "batch_size", *(f"limits.{name}" for name in _get(cfg, "limits", {}))):
        _at_least(cfg, key, 1)
    max_length = _get(cfg, "max_length")
    _require(max_length is None or max_length >= 1, f"max_length={max_length}: must be >= 1 or null")
    from prm.aggregation import aggregation_spec

    for position, name in enumerate(_get(cfg, "aggregations") or []):
        aggregation_spec(name, f"aggregations[{position}]")
    aggregation_spec(_get(cfg, "openrlhf.aggregation"), "openrlhf.aggregation")
    _require(
        _get(cfg, "steps.split") != "separator" or bool(_get(cfg, "steps.separator")),
        "steps.split=separator needs a non-empty steps.separator",
    )
    pattern = _get(cfg, "openrlhf.question_regex")
    if pattern is not None:
        try:
            compiled = re.compile(pattern)
        except re.error as error:
            message = f"openrlhf.question_regex={pattern!r}: not a regular expression ({error})"
            raise ConfigError(message) from None
        _require(
            "question" in compiled.groupindex,
            f"openrlhf.question_regex={pattern!r}: needs a named group (?P<question>...)",
        )


# ----------------------------------------------------------------------------------------------
# Exit status


def debug_enabled() -> bool:
    """True when ``PRM_DEBUG`` is set to 1/true/yes: user errors then show their traceback."""
    return os.environ.get("PRM_DEBUG", "").strip().lower() in ("1", "true", "yes")


@contextlib.contextmanager
def user_errors(debug: bool | None = None):
    """Context: a :class:`UserError` raised inside becomes ``error: <message>`` (one line) on stderr
    and ``SystemExit(2)``, also when Hydra's ``instantiate`` wrapped it in an
    ``InstantiationException`` (a backbone config that fails as it loads). ``debug`` (default: the
    ``PRM_DEBUG`` variable) prints the traceback too. Other exceptions pass through untouched."""
    try:
        yield
    except Exception as raised:
        error = _user_error(raised)
        if error is None:
            raise
        if debug if debug is not None else debug_enabled():
            import traceback

            traceback.print_exc(file=sys.stderr)
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _user_error(error: BaseException) -> UserError | None:
    """``error`` if it is a :class:`UserError`, or the one Hydra's ``InstantiationException`` wraps
    (its ``__cause__``, through nested instantiations); else None."""
    from hydra.errors import InstantiationException

    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    return error if isinstance(error, UserError) else None


# ``data.limit.<split>=N`` on the command line: data.limit is null in every conf/data/*.yaml (an int or
# a {train, meta, test} dict where set), so Hydra refuses a plain override of a key under it ("Key
# 'test' is not in struct") and only ``+data.limit.test=N`` composes, while ``+`` in turn fails where
# the key exists (experiment=smoke's dict). ``++`` (add or override) composes in both cases.
_SPLIT_LIMIT_OVERRIDE = re.compile(r"data\.limit\.\w+=")


def split_limit_overrides(argv: list[str]) -> list[str]:
    """``argv`` (command-line overrides) with each plain ``data.limit.<split>=N`` written
    ``++data.limit.<split>=N``, so it composes whether data.limit is null, an int or a dict; the
    split name and value are checked later with the config (:func:`validate_train_config`)."""
    return [f"++{arg}" if _SPLIT_LIMIT_OVERRIDE.match(arg) else arg for arg in argv]


def vocabulary_keys(schema: type, prefix: str = "") -> dict[str, type[Enum]]:
    """``{dotted key: its vocabulary}`` for every Enum-typed field of the structured-config dataclass
    ``schema``, nested schemas included: ``{"prm.head": Head, ...}`` for :class:`TrainRunSchema`.
    Fields inside a dict or list of schemas (``bench.<name>.kind``) have no fixed key: Hydra's schema
    check refuses their bad values."""
    keys: dict[str, type[Enum]] = {}
    for name, hint in typing.get_type_hints(schema).items():
        if typing.get_origin(hint) in (dict, list):
            continue
        for kind in (hint, *typing.get_args(hint)):  # Optional[X]: X
            if isinstance(kind, type) and issubclass(kind, Enum):
                keys[prefix + name] = kind
            elif dataclasses.is_dataclass(kind):
                keys.update(vocabulary_keys(kind, f"{prefix}{name}."))
    return keys


def refuse_unknown_choices(argv: list[str], schema: type) -> None:
    """Refuse a command-line override that gives an Enum-typed key of ``schema`` a value outside its
    vocabulary, every value of a sweep (``-m prm.head=token,value``) included.

    The schema refuses it too, at composition, but Hydra reports that in five lines with exit status
    1; this check gives the config checks' one line. Overrides that are not ``key=value`` (Hydra's
    own flags), that Hydra cannot parse, or whose value is an interpolation are left to Hydra.

    Raises:
        ConfigError: ``"prm.head='bad': expected one of token, value"``.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = vocabulary_keys(schema)
    parser = OverridesParser.create()
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            (override,) = parser.parse_overrides([arg])
            vocabulary = keys.get(override.key_or_group)
            if vocabulary is None or override.is_delete() or override.package is not None:
                continue
            sweep = override.is_sweep_override()
            values = list(override.sweep_string_iterator()) if sweep else [override.value()]
        except Exception:  # noqa: BLE001 - a malformed override: Hydra's own message says why
            continue
        for value in values:
            if isinstance(value, str):
                if "${" in value:
                    continue
                value = value.removeprefix(f"{vocabulary.__name__}.")  # OmegaConf takes Head.token too
            check_choice(override.key_or_group, value, vocabulary)


def entry_overrides(argv: list[str], schema: type) -> list[str]:
    """``argv`` as train.py / evaluate.py hand it to Hydra: an enumerated key given an unknown value
    exits with status 2 and one line (:func:`refuse_unknown_choices`, :func:`user_errors`), then
    :func:`split_limit_overrides`."""
    with user_errors():
        refuse_unknown_choices(argv, schema)
    return split_limit_overrides(argv)


def user_error_exit(fn: Callable | None = None, *, debug: bool | None = None):
    """Decorator form of :func:`user_errors`. Put it under ``@hydra.main`` so that Hydra, which
    reports any exception as a crash, sees only the ``SystemExit(2)``::

        @hydra.main(config_path="conf", config_name="config", version_base="1.3")
        @user_error_exit
        def main(cfg): ...

    ``@user_error_exit(debug=True)`` always prints the traceback.
    """
    if fn is None:
        return functools.partial(user_error_exit, debug=debug)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with user_errors(debug):
            return fn(*args, **kwargs)

    return wrapper
