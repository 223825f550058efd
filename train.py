"""Train a process reward model: python train.py [group=option ...] [key=value ...]

Reads top to bottom like a recipe: compose the config (conf/config.yaml), build data, backbone and
PRM, wrap the PRM as a Betty problem, run Betty's engine with validation and checkpoints. Examples:
    python train.py                                  # tiny Qwen2-VL PRM on the demo benchmark
    python train.py backbone=tiny_internvl experiment=smoke
    python train.py resume=true hydra.run.dir=<interrupted run dir>   # continue a run
    python train.py -m aggregation=mean,min,max      # a Hydra multirun sweep under multirun/
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from pathlib import Path

import hydra
import numpy as np
import torch
from betty.configs import Config, EngineConfig
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from prm import plots
from prm.aggregation import pad_ragged
from prm.bilevel import hypergradient
from prm.bilevel.deepspeed_lower import DeepSpeedLower
from prm.bilevel.engine import PRMEngine
from prm.bilevel.lower import PRMLower
from prm.bilevel.meta_loss import check_meta_loss
from prm.bilevel.upper import ReweightUpper
from prm.checkpoint import (
    checkpoint_step,
    find_resume_checkpoint,
    load_head,
    load_training_state,
    resolve_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from prm.data.dataset import ChainDataset, PRMCollator
from prm.data.sampling import ResumableSampler
from prm.device import pick_device
from prm.distributed import World, deepspeed_config, same_on_every_rank, setup
from prm.evaluation.best_of_n import chain_metrics
from prm.evaluation.scoring import score_chains
from prm.model.prm import ProcessRewardModel
from prm.reweight import TrainingSet
from prm.reweight.report import instance_weights, weight_report, weights_json, weights_markdown
from prm.schedules import warmup_schedule
from prm.tracking import Tracker, job_identity, read_metrics

log = logging.getLogger("train")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_directory() -> Path:
    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path("outputs/manual")


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> Path | None:
    """``resume=true``: this run directory's newest checkpoint that verifies; ``resume=<dir>``: that run's."""
    if cfg.resume in (False, None):
        return None
    if cfg.resume is True:
        found = find_resume_checkpoint(run_dir)
        if found is None:
            log.warning("resume=true but %s has no checkpoint yet: starting from scratch", run_dir)
        return found
    return resolve_checkpoint(cfg.resume)


def build_scheduler(cfg: DictConfig, optimizer, total_steps: int):
    make = instantiate(cfg.schedule)
    return make(optimizer, total_steps=total_steps) if "name" in cfg.schedule else make(optimizer)


HYPERGRADIENTS = ("darts", "neumann", "cg", "sama")  # Betty's reinforce crashes in 0.2.1 (STACK.md)


def darts_alpha(configured: float | None, precision: str) -> float:
    """``null``: 0.01 in fp32, 0.1 in bf16 (a smaller finite-difference radius drowns in bf16 rounding:
    the estimate comes out 20-30% too small, STACK.md)."""
    if configured is not None:
        return float(configured)
    return 0.1 if precision == "bf16" else 0.01


def hypergradient_config(reweight: DictConfig, precision: str = "fp32") -> dict:
    """Betty Config fields of the lower problem that choose and tune the best-response Jacobian."""
    h = reweight.hypergradient
    if h.type not in HYPERGRADIENTS:
        raise ValueError(f"reweight.hypergradient.type={h.type!r}; expected one of {HYPERGRADIENTS}")
    if h.unroll_steps < 1:
        raise ValueError("reweight.hypergradient.unroll_steps must be >= 1")
    return dict(
        type=h.type,
        unroll_steps=h.unroll_steps,
        darts_alpha=darts_alpha(h.darts_alpha, precision),
        neumann_iterations=h.iterations,
        neumann_alpha=h.alpha,
        cg_iterations=h.iterations,
        cg_alpha=h.alpha,
        sama_adam_alpha=h.sama_adam_alpha,
    )


def build_upper(
    cfg: DictConfig,
    data,
    train_chains,
    meta_chains,
    domains,
    backbone,
    aggregation,
    start_step: int,
    world: World,
):
    """The reweighter from ``cfg.reweight`` as a Betty problem over the meta set (not yet linked)."""
    upper_cfg = cfg.reweight.upper
    reweighter = instantiate(cfg.reweight.module)(
        training_set=TrainingSet.of(train_chains, domains), activation=instantiate(cfg.activation)
    )
    if reweighter.sparse_rows:  # lazy Adam: only rows with a gradient move (prm/reweight/instance_table.py)
        optimizer = torch.optim.SparseAdam(
            list(reweighter.parameters()), lr=upper_cfg.lr, betas=tuple(upper_cfg.betas)
        )
    else:
        optimizer = torch.optim.AdamW(
            reweighter.parameters(),
            lr=upper_cfg.lr,
            betas=tuple(upper_cfg.betas),
            weight_decay=upper_cfg.weight_decay,
        )
    sampler = ResumableSampler(
        len(meta_chains),
        seed=cfg.seed + 1,
        start=start_step * upper_cfg.batch_size * world.size,
        rank=world.rank,
        world_size=world.size,
    )
    loader = DataLoader(
        ChainDataset(meta_chains),
        batch_size=upper_cfg.batch_size,
        sampler=sampler,
        collate_fn=PRMCollator(backbone, data.max_length),
        num_workers=data.num_workers,
    )
    return ReweightUpper(
        name="reweight",
        module=reweighter,
        optimizer=optimizer,
        train_data_loader=loader,
        lower_name="prm",
        aggregation=aggregation,
        loss_target=cfg.prm.loss_target,
        precision=cfg.train.precision,
        config=Config(gradient_clipping=upper_cfg.gradient_clipping, precision="fp32", log_step=-1),
    )


def build_lower(cfg: DictConfig, prm, loader, world: World, reweighting: bool):
    """The PRM as Betty's lower problem: plain, or inside a DeepSpeed engine (``distributed=zero*``)."""
    bilevel = hypergradient_config(cfg.reweight, cfg.train.precision) if reweighting else {}
    optimizer = torch.optim.AdamW(
        prm.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, betas=tuple(cfg.train.betas)
    )
    if not world.deepspeed:
        return PRMLower(
            name="prm",
            module=prm,
            optimizer=optimizer,
            train_data_loader=loader,
            precision=cfg.train.precision,
            config=Config(
                gradient_accumulation=cfg.train.gradient_accumulation,
                precision="fp32",
                log_step=-1,
                gradient_clipping=cfg.train.gradient_clipping,
                **bilevel,
            ),
        )
    import deepspeed

    engine, *_ = deepspeed.initialize(
        model=prm,
        optimizer=optimizer,
        config=deepspeed_config(cfg),
        lr_scheduler=lambda opt: build_scheduler(cfg, opt, cfg.train.steps),
    )
    # DeepSpeed accumulates and clips; Betty sees one micro-batch per step, so the upper level
    # steps every unroll_steps x accumulation micro-batches.
    if bilevel:
        bilevel["unroll_steps"] *= cfg.train.gradient_accumulation
    return DeepSpeedLower(
        name="prm",
        engine=engine,
        train_data_loader=loader,
        precision=cfg.train.precision,
        config=Config(
            gradient_accumulation=1, gradient_clipping=0.0, precision="fp32", log_step=-1, **bilevel
        ),
    )


def train(cfg: DictConfig, run_dir: Path | None = None) -> dict[str, float]:
    """Run one training job in ``run_dir`` (default: Hydra's); returns the final validation metrics."""
    seed_everything(cfg.seed)
    run_dir = Path(run_dir) if run_dir is not None else run_directory()
    resume_from = resume_checkpoint(cfg, run_dir)
    device = pick_device(cfg.train.device)
    world = setup(cfg, device)
    if world.deepspeed and str(device).startswith("cuda"):
        device = f"cuda:{world.local_rank}"
    hypergradient.register()
    tracker = instantiate(cfg.logger) if world.is_main else Tracker(jsonl=False)  # rank 0 logs
    tracker.start(
        run_dir,
        OmegaConf.to_container(cfg, resolve=True),
        job_type="train",
        # resume=true without a checkpoint starts over: rows a killed first attempt logged go too
        resume_step=checkpoint_step(resume_from) if resume_from is not None else (0 if cfg.resume else None),
        **job_identity(run_dir),
    )
    try:  # the JSONL file and the wandb run are closed even when training fails
        return run_training(cfg, run_dir, resume_from, device, world, tracker)
    finally:
        tracker.finish()


def run_training(
    cfg: DictConfig, run_dir: Path, resume_from: Path | None, device: str, world: World, tracker: Tracker
) -> dict[str, float]:
    """The body of :func:`train` once the run directory, device, process group and tracker exist."""
    # Data: training chains (lower level) and the meta set (validation now, upper level later).
    data = instantiate(cfg.data)
    train_chains, meta_chains = data.load("train"), data.load("meta")

    # Model: the backbone from config, or from the checkpoint being resumed.
    # backbone.path may name a run directory (its latest checkpoint) as well as a checkpoint folder.
    start_from = resume_from or (resolve_checkpoint(cfg.backbone.path) if cfg.backbone.get("path") else None)
    backbone = instantiate(cfg.backbone, **({"path": str(start_from)} if start_from is not None else {}))
    prm = ProcessRewardModel(backbone, head=cfg.prm.head)
    if start_from:
        prm.load_head_state_dict(load_head(start_from))
    log.info(
        "PRM: %s backbone, %s head, %d parameters; %d training chains, %d meta chains",
        backbone.family,
        cfg.prm.head,
        sum(p.numel() for p in prm.parameters()),
        len(train_chains),
        len(meta_chains),
    )

    reweighting = cfg.reweight.name != "none"
    # Steps: Betty counts micro-batches; optimiser steps = micro-batches / accumulation.
    accumulation = cfg.train.gradient_accumulation
    total_micro = cfg.train.steps * accumulation
    state = load_training_state(resume_from) if resume_from is not None else None
    start_micro = state["step"] if state is not None else 0
    sampler = ResumableSampler(
        len(train_chains),
        seed=cfg.seed,
        start=start_micro * data.batch_size * world.size,
        rank=world.rank,
        world_size=world.size,
    )
    domains = sorted({chain.domain for chain in train_chains})
    collator = PRMCollator(backbone, data.max_length)
    loader = DataLoader(
        ChainDataset(train_chains, domains),
        batch_size=data.batch_size,
        sampler=sampler,
        collate_fn=collator,
        num_workers=data.num_workers,
    )
    lower = build_lower(cfg, prm, loader, world, reweighting)

    aggregation = instantiate(cfg.aggregation)
    meta_labels = [chain.label for chain in meta_chains]

    # Upper level (reweight != none): the reweighter, tuned on the meta set through the lower problem.
    upper, problems, dependencies = None, [lower], {"u2l": {}, "l2u": {}}
    if reweighting:
        check_meta_loss(aggregation, cfg.prm.loss_target)
        unroll = cfg.reweight.hypergradient.unroll_steps
        upper_start = state["upper"]["steps"] if state is not None else 0
        upper = build_upper(
            cfg, data, train_chains, meta_chains, domains, backbone, aggregation, upper_start, world
        )
        lower.weigh = lambda *args: upper.module(*args)
        problems.append(upper)
        dependencies = {"u2l": {upper: [lower]}, "l2u": {lower: [upper]}}
        log.info(
            "reweighting: %s, %s hypergradient, unroll %d, meta loss %s with %s",
            cfg.reweight.name,
            cfg.reweight.hypergradient.type,
            unroll,
            cfg.prm.loss_target,
            aggregation.name,
        )

    def weights_now() -> torch.Tensor:
        return instance_weights(upper.module, prm, train_chains, collator, data.eval_batch_size, device)

    def validate() -> dict[str, float]:
        scores = score_chains(
            prm, meta_chains, data.eval_batch_size, data.max_length, device, cfg.train.precision
        )
        result = chain_metrics(
            aggregation(*pad_ragged(scores)), meta_labels, probability=aggregation.is_probability
        )
        metrics = {"auroc": result.auroc, f"auroc_{aggregation.name}": result.auroc}
        if result.mse is not None:
            metrics.update(loss=result.mse, accuracy=result.accuracy)
        if upper is not None and not upper.module.needs_data_pass:  # tables: cheap to read
            current = weights_now()
            if world.is_main:
                tracker.log_histogram("weights/instances", current.tolist(), engine.global_step)
            report = weight_report(upper.module, current, train_chains, extremes=0)
            metrics.update({f"weight/{name}": s["mean"] for name, s in report["per_domain"].items()})
            if "corruption" in report:
                metrics["weight/corrupted_over_clean"] = report["corruption"]["ratio"]
        return metrics

    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)

    def save(micro_step: int) -> None:
        training_state = {"micro_step": micro_step}
        if not world.deepspeed:  # DeepSpeed writes its own (sharded) optimiser and schedule state
            training_state.update(
                optimizer=lower.optimizer.state_dict(), scheduler=lower.lr_scheduler.state_dict()
            )
        extra = {}
        if upper is not None:
            training_state["upper"] = {
                "module": upper.module.state_dict(),
                "optimizer": upper.optimizer.state_dict(),
                "scheduler": upper.lr_scheduler.state_dict(),
                "steps": upper.steps_taken,
            }
            if not upper.module.needs_data_pass:  # a net's weights need a pass: written at the end
                extra["weights.json"] = weights_json(upper.module, weights_now(), train_chains)
        path = save_checkpoint(
            run_dir,
            micro_step,
            prm,
            training_state,
            config_yaml,
            extra_files=extra,
            is_main=world.is_main,
            **deepspeed_saving(lower),
        )
        if world.is_main:
            log.info("checkpoint %s", path)

    engine = PRMEngine(
        problems=problems,
        dependencies=dependencies,
        config=EngineConfig(
            train_iters=total_micro - start_micro, valid_step=total_micro + 1, logger_type="none"
        ),
        start_step=start_micro,
        total_steps=total_micro,
        validate_every=cfg.train.validate_every * accumulation,
        save_every=cfg.train.save_every * accumulation,
        validate=validate,
        save=save,
        log_metrics=tracker.log,
        device=device,
    )
    # Betty rebuilds the optimiser while setting up the problem: attach the schedule and any resumed
    # state to the optimiser it actually steps.
    if not world.deepspeed:
        lower.lr_scheduler = build_scheduler(cfg, lower.optimizer, cfg.train.steps)
    if upper is not None:
        upper.lr_scheduler = warmup_schedule(
            upper.optimizer,
            total_steps=max(1, cfg.train.steps // cfg.reweight.hypergradient.unroll_steps),
            name=cfg.reweight.upper.schedule.name,
            warmup_ratio=cfg.reweight.upper.schedule.warmup_ratio,
        )
    if state is not None:
        if world.deepspeed:
            lower.engine.load_checkpoint(
                str(resume_from / DEEPSPEED_DIR), tag=DEEPSPEED_TAG, load_module_strict=True
            )
        else:
            lower.optimizer.load_state_dict(state["optimizer"])
            lower.lr_scheduler.load_state_dict(state["scheduler"])
        if upper is not None:
            upper.module.load_state_dict(state["upper"]["module"])
            upper.optimizer.load_state_dict(state["upper"]["optimizer"])
            upper.lr_scheduler.load_state_dict(state["upper"]["scheduler"])
            upper.steps_taken = state["upper"]["steps"]
        set_rng_state(state["rng"])
        log.info(
            "resumed from %s at step %d of %d", resume_from, start_micro // accumulation, cfg.train.steps
        )
    if start_micro < total_micro:
        engine.run()
    metrics = engine.last_validation or validate()
    if upper is not None and world.size > 1:
        drift = same_on_every_rank(list(upper.module.parameters()))
        log.info("upper parameters agree across %d ranks: max difference %.3g", world.size, drift)
        if drift > 0:
            raise RuntimeError(f"the reweighter differs across ranks (max difference {drift})")
    if upper is not None:
        final_weights = weights_now()  # every rank: a net's pass over the data is collective under ZeRO-3
        if world.is_main:
            write_weight_report(run_dir, upper.module, final_weights, train_chains)
            tracker.log_histogram("weights/instances", final_weights.tolist(), engine.global_step)
    log.info(
        "final validation: %s",
        {k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v) for k, v in metrics.items()},
    )
    return metrics


DEEPSPEED_DIR, DEEPSPEED_TAG = "deepspeed", "state"


def deepspeed_saving(lower) -> dict:
    """save_checkpoint arguments for a DeepSpeed lower problem: its sharded state, gathered weights."""
    if not isinstance(lower, DeepSpeedLower):
        return {}
    import deepspeed

    engine = lower.engine
    stage3 = engine.zero_optimization_stage() == 3
    return {
        "sharded": lambda folder: engine.save_checkpoint(str(folder / DEEPSPEED_DIR), tag=DEEPSPEED_TAG),
        "gathered": (
            lambda: deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None)
        )
        if stage3
        else contextlib.nullcontext,
    }


def write_weight_report(run_dir: Path, reweighter, weights: torch.Tensor, chains) -> None:
    """weights.json (every instance's weight by id), weights.md (tables), plots and report.md."""
    report = weight_report(reweighter, weights, chains)
    (run_dir / "weights.json").write_text(weights_json(reweighter, weights, chains, report), encoding="utf-8")
    markdown = weights_markdown(report)
    (run_dir / "weights.md").write_text(markdown, encoding="utf-8")
    images = [
        plots.plot_weight_distributions(
            weights.tolist(),
            [c.domain for c in chains],
            [c.meta.get("corrupted") for c in chains],
            run_dir / "weight_distributions.png",
        )
    ]
    trajectory = plots.plot_weight_trajectories(
        read_metrics(run_dir / "metrics.jsonl"), run_dir / "weight_trajectories.png"
    )
    images += [trajectory] if trajectory else []
    plots.write_report(
        run_dir, f"Training run {run_dir.name}", [("Learned weights", markdown.split("\n", 2)[2])], images
    )
    log.info("learned weights: %s\n%s", run_dir / "weights.md", markdown.split("\n\nLowest")[0])


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    metrics = train(cfg)
    return metrics.get("auroc", float("nan"))


if __name__ == "__main__":
    main()
