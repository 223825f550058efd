"""The typed schema of the configs and the checks a config must pass before any data or model loads.

**Schema.** :func:`register_schemas` stores structured-config dataclasses in Hydra's ConfigStore:
``train_schema`` (the top of ``conf/config.yaml``) and ``evaluate_schema`` (``conf/evaluate.yaml``).
Each config lists its schema first in its defaults, so every YAML file, preset and command-line
override is merged into typed, closed nodes: a misspelt key (``train.stpes=3``) or a value of the
wrong type (``train.steps=abc``) fails at composition with Hydra's own message, before ``main`` runs.
Groups whose options differ in shape (backbone, schedule, logger, ...) stay untyped (``Any``); Hydra's
struct mode still refuses unknown keys in them. Importing :mod:`prm` registers the schemas.

**Checks.** :func:`validate_train_config` and :func:`validate_evaluate_config` test ranges and
combinations that types cannot express (steps >= 1, lr > 0, a known hypergradient, a probability
aggregation for the meta loss, ...) and raise :class:`ConfigError` whose message names the key.

**Exit.** :func:`user_error_exit` turns a :class:`prm.errors.UserError` (ConfigError, data errors)
into one line on stderr and exit status 2; ``PRM_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from prm.errors import UserError

HYPERGRADIENTS = ("darts", "neumann", "cg", "sama")
SECOND_ORDER_HYPERGRADIENTS = ("neumann", "cg")  # Hessian-vector products: double backward
PRECISIONS = ("fp32", "bf16")
HEADS = ("token", "value")
LAST_LAYER_MODES = ("scores", "full")
LOSS_TARGETS = ("+", "both", "steps")
EVALUATE_MODES = ("auto", "best_of_n", "processbench")
SPLITS = ("train", "meta", "test")

# The preflight pass's policies (prm/preflight.py) and their allowed values, default first.
PREFLIGHT_POLICIES = {
    "too_long": ("truncate", "error", "skip"),
    "bad_image": ("fix", "skip", "error"),
    "special_tokens": ("neutralize", "error"),
}


class ConfigError(UserError, ValueError):
    """A config value or combination that cannot work; the message names the key and what to set."""


# ----------------------------------------------------------------------------------------------
# Schema. Optional[...] (not X | None): OmegaConf reads these annotations at runtime.


@dataclass
class PRMSchema:
    head: str = "token"  # token | value
    # moved to reweight.upper.loss_target (only the upper level reads it); kept so that a config still
    # setting it gets a ConfigError naming the new key instead of Hydra's "not in struct"
    loss_target: Optional[str] = None  # noqa: UP045
    last_layer: str = "scores"  # scores | full (prm/model/last_layer.py)


@dataclass
class TrainSchema:
    steps: int = 3000
    # instantiate(train.optimizer)(params): any torch optimiser; a dict node so that its keys can
    # follow the optimiser (+train.optimizer.momentum=0.9 for SGD), yet a misspelt key is refused.
    optimizer: dict[str, Any] = MISSING
    gradient_clipping: float = 1.0
    gradient_accumulation: int = 1
    precision: str = "fp32"
    validate_every: int = 500
    save_every: int = 1000
    keep_last_n_checkpoints: int = 2
    max_nonfinite_steps: int = 10
    device: str = "auto"
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
    grad_scale: str = "none"  # none | rms (prm/bilevel/upper.py rms_scale)
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
# schema's, which every conf/data/*.yaml inherits unless it sets its own (demo.yaml: 512, its chains
# are short); DataSources takes the same constant.
DEFAULT_MAX_LENGTH = 4096


@dataclass
class DataSchema:
    """The fields of :class:`prm.data.sources.DataSources` (same defaults)."""

    _target_: str = "prm.data.sources.DataSources"
    name: str = "custom"
    train: Optional[str] = None  # noqa: UP045
    meta: Optional[str] = None  # noqa: UP045
    test: Optional[str] = None  # noqa: UP045
    format: str = "auto"
    train_format: Optional[str] = None  # noqa: UP045
    meta_format: Optional[str] = None  # noqa: UP045
    test_format: Optional[str] = None  # noqa: UP045
    image_root: Optional[str] = None  # noqa: UP045
    missing_image: str = "error"  # error | skip | blank
    generator: Any = None
    batch_size: int = 8
    eval_batch_size: int = 16
    max_length: Optional[int] = DEFAULT_MAX_LENGTH  # noqa: UP045
    num_workers: int = 0
    group_by_length: bool = False  # training batches of chains of similar token length
    length_window: int = 64  # global batches per length-sorting window (group_by_length)
    packing: bool = False  # one padding-free row per batch, per-chain positions and attention
    limit: Any = None  # null | records per split (int) | {train: int, meta: int, test: int}
    too_long: str = "truncate"  # error | truncate | skip (preflight)
    bad_image: str = "fix"  # fix | skip | error (preflight)
    special_tokens: str = "neutralize"  # neutralize | error (preflight)
    allow_one_class_meta: bool = False
    allow_outside_paths: bool = False


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
    seed: int = 0
    resume: Any = False  # false | true (this run dir's latest checkpoint) | a run or checkpoint path
    # dotted keys (and the keys under them) a resume may change on purpose, e.g. [train.steps];
    # every other result key must equal the checkpoint's (prm/training/state.py)
    resume_allow_changes: list[str] = field(default_factory=list)
    prm: PRMSchema = field(default_factory=PRMSchema)
    train: TrainSchema = field(default_factory=TrainSchema)
    optimized_metric: str = "auroc"


@dataclass
class ProcessBenchSchema:
    threshold: Optional[float] = None  # noqa: UP045
    threshold_split: Optional[str] = None  # noqa: UP045


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
    device: str = "auto"
    precision: str = "fp32"
    mode: str = "auto"  # auto | best_of_n | processbench
    prefix_sharing: bool = True  # best-of-N: one encoding of each problem's question + images
    processbench: ProcessBenchSchema = field(default_factory=ProcessBenchSchema)


def register_schemas() -> None:
    """Store ``train_schema`` and ``evaluate_schema`` in Hydra's ConfigStore (idempotent)."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainRunSchema)
    store.store(name="evaluate_schema", node=EvaluateSchema)


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
    missing = _get(cfg, "data.missing_image", "error")
    _require(
        missing in ("error", "skip", "blank"),
        f"data.missing_image={missing!r}: expected one of error, skip, blank",
    )
    for key, allowed in PREFLIGHT_POLICIES.items():
        value = _get(cfg, f"data.{key}", allowed[0])
        _require(value in allowed, f"data.{key}={value!r}: expected one of {', '.join(allowed)}")
    _check_limit(cfg)


def validate_train_config(cfg: DictConfig) -> None:
    """Check a composed ``conf/config.yaml`` before any data or model loads.

    Rules (each failure raises :class:`ConfigError` naming the key): ``train.steps >= 1``; learning
    rates > 0 (``train.optimizer.lr``, and ``reweight.upper.optimizer.lr`` when reweighting);
    ``data.batch_size``, ``data.eval_batch_size``, ``reweight.upper.batch_size``,
    ``train.gradient_accumulation``, ``train.keep_last_n_checkpoints`` and ``train.max_nonfinite_steps``
    >= 1; ``backbone.label_words`` two different non-empty words; ``train.save_every``,
    ``train.validate_every`` and the gradient clipping norms >= 0;
    ``prm.head`` and ``prm.last_layer`` known, ``prm.loss_target`` unset (it moved to
    ``reweight.upper.loss_target``); ``train.precision`` fp32 or bf16
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
    _check_device("train.device", _get(cfg, "train.device", "auto"))
    _check_data(cfg, evaluate=False)
    _check_label_words(cfg)
    head, old_target = _get(cfg, "prm.head"), _get(cfg, "prm.loss_target")
    _require(
        old_target is None,
        f"prm.loss_target={old_target}: the meta loss's target moved to reweight.upper.loss_target (only "
        f"the upper level reads it); set reweight.upper.loss_target={old_target} instead",
    )
    _require(head in HEADS, f"prm.head={head!r}: expected one of {', '.join(HEADS)}")
    last = _get(cfg, "prm.last_layer")
    _require(
        last in LAST_LAYER_MODES, f"prm.last_layer={last!r}: expected one of {', '.join(LAST_LAYER_MODES)}"
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
    from prm.aggregation import PROBABILITY_VALUED, REGISTRY

    name = _get(cfg, "aggregation.name")
    _require(name in REGISTRY, f"aggregation.name={name!r}: expected one of {', '.join(sorted(REGISTRY))}")
    _require(
        name in PROBABILITY_VALUED or target == "steps",
        f"aggregation={name} is not a probability, so the meta loss of reweight={_get(cfg, 'reweight.name')} "
        f"with reweight.upper.loss_target={target} ((p - y)^2 for '+', (p' - 1)^2 for 'both') has no "
        "meaning; "
        f"choose aggregation= one of {', '.join(sorted(PROBABILITY_VALUED))}",
    )


def validate_evaluate_config(cfg: DictConfig) -> None:
    """Check a composed ``conf/evaluate.yaml`` before any checkpoint or data loads.

    Rules (each failure raises :class:`ConfigError` naming the key): either ``checkpoint`` or
    ``backbone`` with ``backbone.path`` set, not both, and ``prompt`` only with ``backbone``;
    ``backbone.label_words`` two different non-empty words;
    ``precision`` fp32 or bf16; ``device`` cuda only where torch sees CUDA; ``mode`` known;
    ``data.eval_batch_size >= 1``; ``processbench.threshold`` null or in [0, 1]; a known aggregation.
    """
    checkpoint = bool(_get(cfg, "checkpoint"))
    backbone = _get(cfg, "backbone") is not None
    _require(
        checkpoint or backbone,
        "checkpoint is not set: give checkpoint=<run dir, checkpoint folder or multirun dir> (a model "
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
        "backbone.path is not set: evaluate.py backbone=<config> backbone.path=<checkpoint dir>",
    )
    if backbone:
        _check_label_words(cfg)
    _check_precision("precision", _get(cfg, "precision"))
    _check_device("device", _get(cfg, "device", "auto"))
    mode = _get(cfg, "mode", "auto")
    _require(mode in EVALUATE_MODES, f"mode={mode!r}: expected one of {', '.join(EVALUATE_MODES)}")
    _check_data(cfg, evaluate=True)
    threshold = _number(cfg, "processbench.threshold")
    _require(
        threshold is None or 0.0 <= threshold <= 1.0,
        f"processbench.threshold={threshold}: must be null or in [0, 1]",
    )
    from prm.aggregation import REGISTRY

    name = _get(cfg, "aggregation.name")
    _require(name in REGISTRY, f"aggregation.name={name!r}: expected one of {', '.join(sorted(REGISTRY))}")


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
