"""The bi-level step of a training run: the reweighter, the two Betty problems and the engine.

The reweighter comes from ``reweight.module`` (none for reweight=none). The lower problem is the PRM
(``prm``), handed the reweighter as the callable that weighs its chains. A strategy with an ``upper``
node learns the weights: the upper problem (``reweight``) holds the reweighter and is handed the
lower problem's PRM, whose meta loss it minimises; it builds one optimiser per parameter group the
reweighter declares (``reweight.upper.optimizers.<group>``, else ``reweight.upper.optimizer``), each
with a schedule from ``reweight.upper.schedule``. The lower problem's optimiser and schedule come from
``train.optimizer`` and ``schedule``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from betty.configs import Config, EngineConfig
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from prm.bilevel.deepspeed_lower import DeepSpeedLower
from prm.bilevel.engine import PRMEngine
from prm.bilevel.lower import PRMLower
from prm.bilevel.meta_loss import check_meta_loss
from prm.bilevel.probe import ProbeSampler
from prm.bilevel.upper import ReweightUpper
from prm.config import ConfigError
from prm.data.dataset import ChainDataset, chain_lengths
from prm.data.sampling import LengthGroupedSampler, ResumableSampler
from prm.distributed import deepspeed_config
from prm.model.lora import trainable_parameters
from prm.reweight import ParameterGroup, TrainingSet
from prm.training.run import TrainingRun

log = logging.getLogger("train")

LOWER, UPPER = "prm", "reweight"


def darts_alpha(configured: float | None, precision: str) -> float:
    """``null``: 0.01 in fp32, 0.1 in bf16 (a smaller finite-difference radius drowns in bf16 rounding:
    the estimate comes out 20-30% too small)."""
    if configured is not None:
        return float(configured)
    return 0.1 if precision == "bf16" else 0.01


def hypergradient_config(reweight: DictConfig, precision: str = "fp32") -> dict:
    """Betty Config fields of the lower problem that choose and tune the best-response Jacobian.
    ``reweight`` has passed :func:`prm.config.validate_train_config` (type known, ``unroll_steps`` >= 1)."""
    h = reweight.hypergradient
    return dict(
        type=h.type,
        unroll_steps=h.unroll_steps,
        warmup_steps=h.get("warmup_steps", 0),
        darts_alpha=darts_alpha(h.darts_alpha, precision),
        neumann_iterations=h.iterations,
        neumann_alpha=h.alpha,
        cg_iterations=h.iterations,
        cg_alpha=h.alpha,
        sama_adam_alpha=h.sama_adam_alpha,
    )


def learns_weights(cfg: DictConfig) -> bool:
    """Whether ``reweight`` is a bi-level strategy (it has an ``upper`` node: an upper problem learns
    the weights); none (no module) and the baselines (small_loss, oracle: a module without ``upper``)
    train the PRM alone."""
    return cfg.reweight.get("upper") is not None


def build_reweighter(run: TrainingRun):
    """The ``reweight.module`` of the run over its training set (None for reweight=none). Raises what
    the strategy raises for a training set it cannot weigh (e.g. domain_table: a ConfigError for fewer
    than two domains)."""
    module = run.cfg.reweight.get("module")  # reweight=none has none
    if module is None:
        return None
    extra = {}
    if "hidden" in (module.get("features") or []):  # an instance net reading hidden states
        extra["prm_hidden_size"] = run.prm.hidden_size
    return instantiate(run.cfg.reweight.module)(
        training_set=TrainingSet.of(run.data.train_chains, run.data.domains),
        activation=instantiate(run.cfg.activation),
        **extra,
    )


def build_optimizer(node: DictConfig, parameters):
    """``instantiate(node)(parameters)``: a ``_partial_`` optimiser config completed with the parameters."""
    return instantiate(node, _convert_="all")(parameters)


def group_optimizers(upper: DictConfig, reweighter) -> Callable[[ParameterGroup], Optimizer]:
    """``fn(group) -> optimiser`` for the upper problem: ``reweight.upper.optimizers.<group>`` where
    set, else ``reweight.upper.optimizer``. Raises ConfigError when ``reweight.upper.optimizers``
    names a group the reweighter does not declare."""
    by_group = upper.get("optimizers") or {}
    names = [group.name for group in reweighter.parameter_groups()]
    unknown = [name for name in by_group if name not in names]
    if unknown:
        raise ConfigError(
            f"reweight.upper.optimizers.{unknown[0]}: {type(reweighter).__name__} has no parameter "
            f"group {unknown[0]!r}; its groups: {', '.join(names)}"
        )
    return lambda group: build_optimizer(by_group.get(group.name) or upper.optimizer, list(group.parameters))


def build_schedule(node: DictConfig, optimizer, total_steps: int):
    """``instantiate(node)(optimizer, total_steps=...)``: every schedule takes the run's optimiser steps."""
    return instantiate(node, _convert_="all")(optimizer, total_steps=total_steps)


def chain_loader(
    run: TrainingRun, chains, batch_size: int, seed: int, start: int, domains=None
) -> DataLoader:
    """A resumable loader over ``chains``: ``start`` batches already drawn (per rank) are skipped;
    with ``data.group_by_length`` its batches hold chains of similar token length."""
    world, config = run.world, run.data.config
    position = dict(start=start * batch_size * world.size, rank=world.rank, world_size=world.size)
    if config.group_by_length:
        sampler = LengthGroupedSampler(
            chain_lengths(chains, run.backbone), batch_size, config.length_window, seed=seed, **position
        )
    else:
        sampler = ResumableSampler(len(chains), seed=seed, **position)
    dataset = ChainDataset(chains, domains) if domains is not None else ChainDataset(chains)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=run.collator,
        num_workers=run.data.config.num_workers,
    )


def setup_reweighter(run: TrainingRun) -> None:
    """``run.reweighter`` from ``reweight.module`` (None for reweight=none). A baseline (no upper
    level) is moved to the run's device here; a learned one moves with the upper problem (Betty)."""
    run.reweighter = build_reweighter(run)
    if run.reweighter is not None and not learns_weights(run.cfg):
        run.reweighter = run.reweighter.to(run.device)
        log.info("reweighting: %s (a baseline, no upper problem)", run.cfg.reweight.name)


def setup_lower(run: TrainingRun) -> None:
    """The PRM as Betty's lower problem, plain or inside a DeepSpeed engine (``distributed=zero*``)."""
    cfg, data = run.cfg, run.data
    reweighting = learns_weights(cfg)
    bilevel = hypergradient_config(cfg.reweight, cfg.train.precision) if reweighting else {}
    if bilevel:  # Betty counts its warm-up in micro-batches
        bilevel["warmup_steps"] *= run.accumulation
    loader = chain_loader(
        run,
        data.train_chains,
        data.config.batch_size,
        cfg.seed,
        run.start_step * run.accumulation,
        data.domains,
    )
    optimizer = build_optimizer(cfg.train.optimizer, trainable_parameters(run.prm))  # LoRA: adapters only
    common = dict(
        name=LOWER, train_data_loader=loader, precision=cfg.train.precision, reweighter=run.reweighter
    )
    if not run.world.deepspeed:
        run.lower = PRMLower(
            module=run.prm,
            optimizer=optimizer,
            schedule=build_schedule(cfg.schedule, optimizer, cfg.train.steps),
            max_nonfinite_steps=cfg.train.max_nonfinite_steps,
            config=Config(
                gradient_accumulation=run.accumulation,
                precision="fp32",
                log_step=-1,
                gradient_clipping=cfg.train.gradient_clipping,
                **bilevel,
            ),
            **common,
        )
        attach_probe(run)
        return
    import deepspeed

    engine, *_ = deepspeed.initialize(
        model=run.prm,
        optimizer=optimizer,
        config=deepspeed_config(cfg),
        lr_scheduler=lambda opt: build_schedule(cfg.schedule, opt, cfg.train.steps),
    )
    # DeepSpeed accumulates and clips; Betty sees one micro-batch per step, so the upper level
    # steps every unroll_steps x accumulation micro-batches.
    if bilevel:
        bilevel["unroll_steps"] *= run.accumulation
    config = Config(gradient_accumulation=1, gradient_clipping=0.0, precision="fp32", log_step=-1, **bilevel)
    run.lower = DeepSpeedLower(engine=engine, config=config, **common)
    attach_probe(run)


def attach_probe(run: TrainingRun) -> None:
    """With ``reweight.hypergradient.probe_chains`` > 0, the sampler of probe chains DARTS reads
    (prm/bilevel/probe.py), seeded by the run's seed."""
    hyper = run.cfg.reweight.get("hypergradient") or {}
    if not learns_weights(run.cfg) or not hyper.get("probe_chains", 0):
        return
    if hyper.type != "darts":  # neumann / cg / sama differentiate the lower batch twice: no probes
        log.info(
            "reweight.hypergradient.probe_chains applies to darts only; %s uses the lower batch", hyper.type
        )
        return
    data = run.data
    run.lower.probe = ProbeSampler(
        data.train_chains,
        data.domains,
        run.collator,
        hyper.probe_chains,
        data.config.eval_batch_size,
        run.cfg.seed + 2,
        rank=run.world.rank,
        world_size=run.world.size,
    )


def setup_upper(run: TrainingRun) -> None:
    """The reweighter from ``reweight`` as Betty's upper problem over the meta set (reweight=none: none)."""
    cfg, data = run.cfg, run.data
    if not learns_weights(cfg):
        return
    upper = cfg.reweight.upper
    check_meta_loss(run.aggregation, upper.loss_target)
    hyper = cfg.reweight.hypergradient
    upper_steps = max(1, (cfg.train.steps - hyper.get("warmup_steps", 0)) // hyper.unroll_steps)
    seed = cfg.seed + 1 if upper.sampler_seed is None else upper.sampler_seed
    start = run.state["upper"]["steps"] if run.state is not None else 0
    run.upper = ReweightUpper(
        name=UPPER,
        module=run.reweighter,
        optimizer=group_optimizers(upper, run.reweighter),
        schedule=lambda optimizer: build_schedule(upper.schedule, optimizer, upper_steps),
        train_data_loader=chain_loader(run, data.meta_chains, upper.batch_size, seed, start),
        prm=run.lower.module,
        aggregation=run.aggregation,
        loss_target=upper.loss_target,
        precision=cfg.train.precision,
        max_nonfinite_steps=cfg.train.max_nonfinite_steps,
        grad_scale=upper.grad_scale,
        config=Config(gradient_clipping=upper.gradient_clipping, precision="fp32", log_step=-1),
    )
    log.info(
        "reweighting: %s, %s hypergradient, unroll %d, meta loss %s with %s",
        cfg.reweight.name,
        cfg.reweight.hypergradient.type,
        cfg.reweight.hypergradient.unroll_steps,
        upper.loss_target,
        run.aggregation.name,
    )


def setup_problems(run: TrainingRun) -> None:
    """Aggregation, reweighter, lower problem, upper problem (the reweighter's initialisation draws
    from the global generator after the PRM's, which setup_model built)."""
    run.aggregation = instantiate(run.cfg.aggregation)
    setup_reweighter(run)
    setup_lower(run)
    setup_upper(run)


def setup_engine(run: TrainingRun, validate, save) -> None:
    """Betty's engine over the problems, counting optimiser steps (prm/bilevel/engine.py)."""
    cfg = run.cfg
    problems = [run.lower] + ([run.upper] if run.upper is not None else [])
    dependencies = {"u2l": {}, "l2u": {}}
    if run.upper is not None:
        dependencies = {"u2l": {run.upper: [run.lower]}, "l2u": {run.lower: [run.upper]}}
    total_micro = cfg.train.steps * run.accumulation
    run.engine = PRMEngine(
        problems=problems,
        dependencies=dependencies,
        config=EngineConfig(
            train_iters=total_micro - run.start_step * run.accumulation,
            valid_step=total_micro + 1,
            logger_type="none",
        ),
        start_step=run.start_step,
        total_steps=cfg.train.steps,
        accumulation=run.accumulation,
        validate_every=cfg.train.validate_every,
        save_every=cfg.train.save_every,
        validate=validate,
        save=save,
        log_metrics=run.tracker.log,
        device=run.device,
    )
