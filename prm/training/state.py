"""Resume and checkpoints of a training run, in one place: what is saved, and how it is put back.

A checkpoint's training state holds, besides the PRM written by save_pretrained: the lower
optimiser and schedule (not under DeepSpeed, which writes its own sharded state), and with an upper
level the reweighter's module, optimiser, schedule and step count. ``step`` (added by
save_checkpoint) counts optimiser steps; the data samplers skip what the saved steps consumed.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from omegaconf import DictConfig

from prm.bilevel.deepspeed_lower import DeepSpeedLower
from prm.bilevel.nonfinite import NonFiniteError, all_finite
from prm.checkpoint import (
    CheckpointError,
    checkpoint_folders,
    find_resume_checkpoint,
    load_training_state,
    resolve_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from prm.reweight.report import weights_json
from prm.training.run import TrainingRun
from prm.training.validation import weights_now

log = logging.getLogger("train")

DEEPSPEED_DIR, DEEPSPEED_TAG = "deepspeed", "state"


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> Path | None:
    """``resume=true``: this run directory's newest checkpoint that verifies (None, with a warning, when
    it has none yet); ``resume=<dir>``: that run's or checkpoint folder's; ``resume=false``: None.

    Raises:
        CheckpointError: ``resume=false`` in a run directory that already holds checkpoints (a new
            run would overwrite and prune them and mix its metrics with theirs), or ``resume=true``
            where checkpoints exist but none verifies (nothing is overwritten or pruned; the log
            names each one and why it was skipped).
    """
    existing = checkpoint_folders(run_dir)
    if cfg.resume in (False, None):
        if existing:
            raise CheckpointError(
                f"{run_dir} already holds checkpoints ({existing[0].name}, ...): pass resume=true to "
                "continue that run, or choose a new hydra.run.dir"
            )
        return None
    if cfg.resume is True:
        found = find_resume_checkpoint(run_dir)
        if found is None and existing:
            raise CheckpointError(
                f"resume=true: none of the {len(existing)} checkpoint(s) in {run_dir / 'checkpoints'} "
                "verifies (see the log for each reason); nothing was changed. Move them away to start "
                "afresh in this directory"
            )
        if found is None:
            log.warning("resume=true but %s has no checkpoint yet: starting from scratch", run_dir)
        return found
    return resolve_checkpoint(cfg.resume)


def load_state(run: TrainingRun) -> None:
    """Read the resumed checkpoint's training state (before the problems are built: the samplers
    start where it stopped)."""
    if run.checkpoint is not None:
        run.state = load_training_state(run.checkpoint)


def restore(run: TrainingRun) -> None:
    """Put the resumed state back into the built problems, then the RNG state (last, so that nothing
    drawn while setting up shifts the random streams)."""
    state, lower, upper = run.state, run.lower, run.upper
    if state is None:
        return
    if run.world.deepspeed:
        lower.engine.load_checkpoint(
            str(run.checkpoint / DEEPSPEED_DIR), tag=DEEPSPEED_TAG, load_module_strict=True
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
    log.info("resumed from %s at step %d of %d", run.checkpoint, run.start_step, run.cfg.train.steps)


def training_state(run: TrainingRun) -> dict:
    """The state :func:`restore` puts back (tensors, numbers and nested dicts/lists only)."""
    lower, upper = run.lower, run.upper
    state: dict = {"micro_batches": run.engine.global_step}
    if not run.world.deepspeed:  # DeepSpeed writes its own (sharded) optimiser and schedule state
        state.update(optimizer=lower.optimizer.state_dict(), scheduler=lower.lr_scheduler.state_dict())
    if upper is not None:
        state["upper"] = {
            "module": upper.module.state_dict(),
            "optimizer": upper.optimizer.state_dict(),
            "scheduler": upper.lr_scheduler.state_dict(),
            "steps": upper.steps_taken,
        }
    return state


def save(run: TrainingRun, step: int) -> Path:
    """Checkpoint ``step`` (optimiser steps) of the run. Raises NonFiniteError, writing nothing, when a
    parameter of the PRM or the reweighter is not finite."""
    modules = [run.prm] + ([run.upper.module] if run.upper is not None else [])
    if not all(all_finite(p.detach() for p in module.parameters()) for module in modules):
        raise NonFiniteError(f"step {step}: the model holds non-finite parameters; not saving a checkpoint")
    extra = {}
    if run.upper is not None and not run.upper.module.needs_data_pass:  # a net's weights: at the end
        extra["weights.json"] = weights_json(run.upper.module, weights_now(run), run.data.train_chains)
    path = save_checkpoint(
        run.run_dir,
        step,
        run.prm,
        training_state(run),
        run.config_yaml,
        keep_last=run.cfg.train.keep_last_n_checkpoints,
        extra_files=extra,
        is_main=run.world.is_main,
        **deepspeed_saving(run.lower),
    )
    if run.world.is_main:
        log.info("checkpoint %s", path)
    return path


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
