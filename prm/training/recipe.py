"""The training recipe: ``train(cfg, run_dir)`` runs the named steps of one job, top to bottom.

seed -> run directory -> resume checkpoint -> the check that it continues the same config -> device
and process group -> tracker -> model -> data
(read and checked by the preflight pass with the model's chain format)
-> Betty problems (each with its optimiser and schedule) -> engine -> restore -> train -> finish.
Every step count is an optimiser step (micro-batches / ``train.gradient_accumulation``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from omegaconf import DictConfig

from prm.bilevel import hypergradient
from prm.config import validate_train_config
from prm.distributed import same_on_every_rank
from prm.training.problems import setup_engine, setup_problems
from prm.training.run import TrainingRun
from prm.training.setup import (
    run_directory,
    seed_everything,
    setup_data,
    setup_device,
    setup_model,
    setup_tracker,
)
from prm.training.state import check_resume_config, load_state, restore, resume_checkpoint, save
from prm.training.validation import validate, weights_now, write_weight_report

log = logging.getLogger("train")


def train(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, float]:
    """Run one training job in ``run_dir`` (default: Hydra's output directory); returns the final
    validation metrics (keys: auroc, auroc_<aggregation>, ...). Raises NonFiniteError after
    ``train.max_nonfinite_steps`` non-finite steps in a row."""
    validate_train_config(cfg)  # before any data or model loads: ConfigError names the key
    seed_everything(cfg.seed)
    run_dir = run_directory(run_dir)
    verified: dict = {}  # checkpoint folders this run has hashed (resume, then pruning at each save)
    checkpoint = resume_checkpoint(cfg, run_dir, verified)
    resumed = check_resume_config(cfg, checkpoint)  # ConfigError for another run's config, nothing touched
    device, world = setup_device(cfg)
    hypergradient.register()
    tracker = setup_tracker(cfg, run_dir, world, checkpoint)
    try:  # the JSONL file and the wandb run are closed even when training fails
        run = TrainingRun(
            cfg, run_dir, device, world, tracker, checkpoint, resumed=resumed, verified=verified
        )
        setup_model(run)
        setup_data(run)
        load_state(run)
        setup_problems(run)
        setup_engine(run, validate=lambda step: validate(run, step), save=lambda step: save(run, step))
        restore(run)
        if run.start_step < cfg.train.steps:
            run.engine.run()
        return finish(run)
    finally:
        tracker.finish()


def finish(run: TrainingRun) -> dict[str, float]:
    """Final validation metrics (those of the last step, else computed now); with an upper level, the
    check that every rank holds the same reweighter and the learned-weight report."""
    metrics = run.engine.last_validation or validate(run, run.cfg.train.steps)
    upper = run.upper
    if upper is not None and run.world.size > 1:
        drift = same_on_every_rank(list(upper.module.parameters()))
        log.info("upper parameters agree across %d ranks: max difference %.3g", run.world.size, drift)
        if drift > 0:
            raise RuntimeError(f"the reweighter differs across ranks (max difference {drift})")
    if run.reweighter is not None:
        final_weights = weights_now(run)  # every rank: a net's pass over the data is collective under ZeRO-3
        if run.world.is_main:
            write_weight_report(run.run_dir, run.reweighter, final_weights, run.data.train_chains)
            run.tracker.log_histogram("weights/instances", final_weights.tolist(), run.cfg.train.steps)
    log.info(
        "final validation: %s",
        {k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v) for k, v in metrics.items()},
    )
    return metrics
