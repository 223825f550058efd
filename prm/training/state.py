"""Resume and checkpoints of a training run, in one place: what is saved, and how it is put back.

A checkpoint's training state holds, besides the PRM written by save_pretrained: the lower
optimiser and schedule (not under DeepSpeed, which writes its own sharded state), and with an upper
level the reweighter's module, optimiser, schedule and step count. ``step`` (added by
save_checkpoint) counts optimiser steps; the data samplers skip what the saved steps consumed.

A resume continues one run, so before anything loads :func:`check_resume_config` compares the
checkpoint's ``config.yaml`` with the new config: a key that changes results and differs is a
ConfigError naming every such key, unless ``resume_allow_changes`` names it (then the change is
logged and recorded in the ``resume_history`` of every later checkpoint and in a comment at the end of
its ``config.yaml``). Result-neutral keys (:data:`RESULT_NEUTRAL_KEYS`) may differ; every other key,
including any key added to the configs later, counts as a result key.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.optim.lr_scheduler import LambdaLR

from prm.bilevel.deepspeed_lower import DeepSpeedLower
from prm.bilevel.nonfinite import NonFiniteError, all_finite
from prm.checkpoint import (
    CheckpointError,
    VerifiedFolders,
    checkpoint_folders,
    checkpoint_step,
    find_resume_checkpoint,
    load_training_state,
    resolve_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from prm.config import ConfigError
from prm.reweight.report import weights_json
from prm.training.run import TrainingRun
from prm.training.validation import weights_now

log = logging.getLogger("train")

DEEPSPEED_DIR, DEEPSPEED_TAG = "deepspeed", "state"


# ------------------------------------------------------------------ resume under the same config

# Keys whose value does not change what a run computes (its weights, optimiser and schedule state,
# data order, random streams, the metrics of its steps), with the reason. A key is result-neutral when
# it is one of these or lies under one; every other key, present or added later, is a result key.
RESULT_NEUTRAL_KEYS: dict[str, str] = {
    "resume": "which checkpoint to continue from, not what the run computes",
    "resume_allow_changes": "this check's own switch",
    "logger": "where metrics are written (JSONL, wandb project and mode), not their values",
    "optimized_metric": "which final metric train.py returns to a sweeper",
    "train.save_every": "a checkpoint reads the state (RNG included) without advancing it",
    "train.keep_last_n_checkpoints": "which older checkpoints are pruned",
    "train.max_nonfinite_steps": "a guard: a run it does not stop computes the same",
    "train.device": "the hardware (train.device=auto already resolves per machine); results agree up "
    "to float rounding across devices, not bit for bit",
    "data.num_workers": "loader processes: the samplers fix the batches, collation is deterministic, "
    "and every loader draws its one base seed whatever the count",
    "data.generator.root": "the demo benchmark's cache folder: its files are a function of the other "
    "generator keys (built under root/<hash of them>)",
    "data.test": "training reads the train and meta splits only",
    "data.test_format": "training reads the train and meta splits only",
    "data.limit.test": "training reads the train and meta splits only",
    "data.allow_outside_paths": "a permission: a run it does not refuse reads the same files",
}
# Not neutral, on purpose: train.validate_every (each validation's DataLoader draws a base seed from
# torch's global generator, which dropout then reads: backbone.lora.dropout, a pretrained model's
# dropout layers; and the val/ rows logged) and data.eval_batch_size (the validation metrics' rounding).

# Result keys whose new value a resume cannot apply: the checkpoint restores the optimisers'
# hyperparameters (lr, betas, weight decay, ... are in their state) and the schedules' state (StepLR
# keeps its step_size and gamma; a schedule of another kind cannot load it). resume_allow_changes
# does not accept them; backbone.path=<checkpoint> starts a new run from the weights instead.
FIXED_ON_RESUME = (
    "train.optimizer",
    "schedule",
    "reweight.upper.optimizer",
    "reweight.upper.optimizers",
    "reweight.upper.schedule",
)


# Keys renamed since older checkpoints were written: old dotted key -> new one. A resume reads the old
# value under the new key (when the new key's parent exists in that config), then compares as usual.
MOVED_KEYS = {"prm.loss_target": "reweight.upper.loss_target"}
# Keys added since, with the value that reproduces what the older code did when the key did not exist;
# a checkpoint without the key is read as holding that value (only where the parent node exists).
ADDED_KEYS: dict[str, Any] = {
    "prm.loss_target": None,
    "reweight.upper.optimizers": None,
    "reweight.upper.grad_scale": "none",
}


def upgrade_saved_config(old: dict) -> tuple[dict, list[str]]:
    """``old`` (a checkpoint's ``config.yaml`` as a plain dict) in today's key names: the values of
    :data:`MOVED_KEYS` moved (the old key keeps ``None``, its placeholder), :data:`ADDED_KEYS`
    filled in. Returns (a new dict, one line per upgrade for the log); ``old`` is not changed."""
    config = json.loads(json.dumps(old, default=str))
    notes = []

    def parent(node: dict, key: str) -> tuple[dict | None, str]:
        *path, last = key.split(".")
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        return (node if isinstance(node, dict) else None), last

    for source, target in MOVED_KEYS.items():
        here, name = parent(config, source)
        there, new_name = parent(config, target)
        if here is None or here.get(name) is None:
            continue
        value = here[name]
        here[name] = None
        if there is not None and new_name not in there:
            there[new_name] = value
            notes.append(f"{source}={value} read as {target}={value} (renamed)")
        else:
            notes.append(f"{source}={value} dropped (renamed to {target}, which this config has no use for)")
    for key, value in ADDED_KEYS.items():
        node, name = parent(config, key)
        if node is not None and name not in node:
            node[name] = value
            notes.append(f"{key} absent, read as {value!r} (added later, the older behaviour)")
    return config, notes


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


ABSENT: Any = _Absent()  # the value of a key one of two configs does not have


@dataclass(frozen=True)
class ConfigChange:
    """One dotted ``key`` whose value differs between two configs. ``old`` / ``new``: the values
    (plain dicts and lists for a subtree or a list), :data:`ABSENT` where that config lacks the key."""

    key: str
    old: Any = ABSENT
    new: Any = ABSENT

    def __str__(self) -> str:
        return f"{self.key}: {_show(self.old)} -> {_show(self.new)}"

    def as_dict(self) -> dict[str, Any]:
        """``{"key", "old", "new"}`` for the training state; an absent side is left out."""
        sides = {"old": self.old, "new": self.new}
        return {"key": self.key, **{name: v for name, v in sides.items() if v is not ABSENT}}


def _show(value: Any) -> str:
    return "(absent)" if value is ABSENT else json.dumps(value, ensure_ascii=False, default=str)


def _same_path(a: str, b: str) -> bool:
    """Two spellings of one existing file or folder (relative ones resolve from the current directory)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def same_value(a: Any, b: Any) -> bool:
    """Equality of two config values: nested dicts and lists element by element; a bool equals only a
    bool (``True != 1`` here); NaN equals NaN; two different strings are equal when both name the same
    existing file or folder (``outputs/cold`` and its absolute path); ints and floats by value."""
    if a is ABSENT or b is ABSENT:
        return a is b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return not config_differences(a, b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, str) and isinstance(b, str) and a != b:
        return _same_path(a, b)
    return a == b


def config_differences(old: Mapping, new: Mapping) -> list[ConfigChange]:
    """Every dotted key whose value differs between two plain nested configs, sorted by key.

    Dicts are walked key by key; a list is one value (compared element by element, see
    :func:`same_value`); a key present on one side only, or a dict on one side and a value on the
    other, is one change at that key (with the whole subtree as its value).
    """
    changes: list[ConfigChange] = []

    def walk(a: Mapping, b: Mapping, prefix: str) -> None:
        for key in sorted(set(a) | set(b), key=str):
            path = f"{prefix}{key}"
            x, y = a.get(key, ABSENT), b.get(key, ABSENT)
            if isinstance(x, Mapping) and isinstance(y, Mapping):
                walk(x, y, path + ".")
            elif not same_value(x, y):
                changes.append(ConfigChange(path, x, y))

    walk(old, new, "")
    return changes


def is_under(key: str, prefixes: Iterable[str]) -> bool:
    """True when dotted ``key`` is one of ``prefixes`` or lies under one (``train.steps`` is under
    ``train``, ``train.stepsize`` is not under ``train.steps``)."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _has_key(tree: Any, key: str) -> bool:
    for part in key.split("."):
        if not isinstance(tree, Mapping) or part not in tree:
            return False
        tree = tree[part]
    return True


@dataclass
class ResumeChanges:
    """What a resume changed against the checkpoint's config: ``accepted`` (result keys named in
    ``resume_allow_changes``) and ``neutral`` (keys of :data:`RESULT_NEUTRAL_KEYS`)."""

    accepted: list[ConfigChange]
    neutral: list[ConfigChange]


def compare_resume_configs(
    old: Mapping, new: Mapping, allow: Iterable[str] = (), checkpoint: str = "the checkpoint"
) -> ResumeChanges:
    """Check that ``new`` (the resolved config of a resume) continues the run ``old`` (the resumed
    checkpoint's ``config.yaml``) describes, both as plain nested dicts.

    Every key of :func:`config_differences` is result-neutral (under :data:`RESULT_NEUTRAL_KEYS`),
    accepted (under a key of ``allow``, the ``resume_allow_changes`` list) or refused.

    Raises:
        ConfigError: a key of ``allow`` that neither config has (a misspelt key); or refused keys:
            the message names every one with its old and new value, the ``resume_allow_changes``
            list that would accept them, and those no list accepts (under :data:`FIXED_ON_RESUME`,
            even when allowed).
    """
    allow = list(allow)
    unknown = [key for key in allow if not (_has_key(old, key) or _has_key(new, key))]
    if unknown:
        raise ConfigError(
            f"resume_allow_changes={allow}: {', '.join(unknown)} is not a key of this run's config nor "
            f"of {checkpoint}'s config.yaml (dotted keys such as train.steps)"
        )
    neutral, accepted, refused = [], [], []
    for change in config_differences(old, new):
        if is_under(change.key, RESULT_NEUTRAL_KEYS):
            neutral.append(change)
        elif is_under(change.key, allow) and not is_under(change.key, FIXED_ON_RESUME):
            accepted.append(change)
        else:
            refused.append(change)
    if refused:
        fixed = [c.key for c in refused if is_under(c.key, FIXED_ON_RESUME)]
        allowable = [c.key for c in refused if not is_under(c.key, FIXED_ON_RESUME)]
        message = (
            f"resume: {checkpoint} was written under another config, and continuing it would mix two "
            f"runs. Keys that change results (checkpoint -> now): {'; '.join(map(str, refused))}. "
            "Resume with the checkpoint's values, or start a new run in another hydra.run.dir "
            "(backbone.path=<checkpoint> starts it from these weights)."
        )
        if allowable:
            keys = ",".join(allow + allowable)
            message += f" To continue this run under these values on purpose: resume_allow_changes=[{keys}]."
        if fixed:
            message += (
                f" {', '.join(fixed)} cannot change on resume: the checkpoint restores the "
                "optimisers' hyperparameters and the schedules' state, which would override them."
            )
        raise ConfigError(message)
    return ResumeChanges(accepted, neutral)


def _plain(node: Any, source: str) -> dict:
    if isinstance(node, DictConfig | ListConfig):
        node = OmegaConf.to_container(node, resolve=False)
    if not isinstance(node, dict):
        raise CheckpointError(f"{source}: not a config (a YAML mapping of keys)")
    return node


def check_resume_config(cfg: DictConfig, checkpoint: Path | None) -> dict | None:
    """The check :func:`compare_resume_configs` between ``checkpoint``'s ``config.yaml`` and ``cfg``
    (resolved and read back as it would be saved), run before anything loads. Returns this resume's
    entry for ``resume_history``: ``{"checkpoint": str, "changes": [...], "neutral": [...]}`` (lists
    of :meth:`ConfigChange.as_dict`); None when ``checkpoint`` is None (a fresh run).

    Raises:
        ConfigError: see :func:`compare_resume_configs`.
        CheckpointError: the checkpoint has no ``config.yaml`` (not written by train.py).
    """
    allow = list(cfg.get("resume_allow_changes") or [])
    if checkpoint is None:
        if allow:
            log.warning("resume_allow_changes=%s has no effect: no checkpoint is resumed", allow)
        return None
    saved = Path(checkpoint) / "config.yaml"
    if not saved.is_file():
        raise CheckpointError(
            f"{checkpoint}: no config.yaml, so resume cannot check that it continues the same run (not "
            f"a checkpoint written by train.py); backbone.path={checkpoint} starts a new run from it"
        )
    old, upgrades = upgrade_saved_config(_plain(OmegaConf.load(saved), str(saved)))
    if upgrades:
        log.info("resume: %s was written by an older version: %s", checkpoint, "; ".join(upgrades))
    new = _plain(OmegaConf.create(OmegaConf.to_yaml(cfg, resolve=True)), "the config")
    changes = compare_resume_configs(old, new, allow, str(checkpoint))
    step, steps = checkpoint_step(checkpoint), int(cfg.train.steps)
    if step > steps:
        raise ConfigError(
            f"resume: {checkpoint} is at step {step}, past train.steps={steps}: a run cannot be shortened "
            f"on resume (its steps are taken); pass train.steps >= {step}, or evaluate that checkpoint"
        )
    if changes.neutral:
        log.info("resume: result-neutral changes: %s", "; ".join(map(str, changes.neutral)))
    if changes.accepted:
        log.warning(
            "resume: continuing %s under changed settings (resume_allow_changes): %s; recorded as "
            "resume_history in its next checkpoints",
            checkpoint,
            "; ".join(map(str, changes.accepted)),
        )
    unused = [key for key in allow if not any(is_under(c.key, [key]) for c in changes.accepted)]
    if unused:
        log.info("resume_allow_changes: %s did not change", ", ".join(unused))
    return {
        "checkpoint": str(checkpoint),
        "changes": [c.as_dict() for c in changes.accepted],
        "neutral": [c.as_dict() for c in changes.neutral],
    }


def history_comment(history: list[dict]) -> str:
    """YAML comment lines for the end of a checkpoint's ``config.yaml``: each resume of the run (step,
    checkpoint, the changes it accepted and the result-neutral ones); "" for a run never resumed."""
    if not history:
        return ""

    def listed(entries: list[dict]) -> str:
        changes = (ConfigChange(e["key"], e.get("old", ABSENT), e.get("new", ABSENT)) for e in entries)
        return "; ".join(map(str, changes))

    lines = ["", "# This run was resumed (resume_history in training_state.json); the values above hold from"]
    lines.append("# the last resume on. Per resume: step, checkpoint, changes (checkpoint -> resumed run).")
    for entry in history:
        lines.append(f"# - at step {entry['step']} from {entry['checkpoint']}")
        if entry.get("changes"):
            lines.append(f"#   changed on purpose (resume_allow_changes): {listed(entry['changes'])}")
        if entry.get("neutral"):
            lines.append(f"#   result-neutral: {listed(entry['neutral'])}")
    return "\n".join(lines) + "\n"


def continue_schedule(scheduler) -> None:
    """After a resume that changed the config (e.g. ``train.steps``): set each parameter group's
    learning rate to ``base_lr * lambda(last_epoch)`` of the schedule built from the new config, so
    the next step already follows it (the optimiser's saved lr is the old schedule's, e.g. 0 at the
    end of a cosine or linear decay). Only LambdaLR (every warmup schedule) depends on the run's
    length; StepLR and others are left as they are."""
    if not isinstance(scheduler, LambdaLR):
        return
    groups = scheduler.optimizer.param_groups
    for group, base, factor in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in groups]  # what get_last_lr() reports


# ------------------------------------------------------------------------ checkpoint, resume


def resume_checkpoint(cfg: DictConfig, run_dir: Path, verified: VerifiedFolders | None = None) -> Path | None:
    """``resume=true``: this run directory's newest checkpoint that verifies (None, with a warning, when
    it has none yet); ``resume=<dir>``: that run's or checkpoint folder's; ``resume=false``: None.
    ``verified``: the run's record of checkpoint folders already hashed (:attr:`TrainingRun.verified`).

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
        found = find_resume_checkpoint(run_dir, verified)
        if found is None and existing:
            raise CheckpointError(
                f"resume=true: none of the {len(existing)} checkpoint(s) in {run_dir / 'checkpoints'} "
                "verifies (see the log for each reason); nothing was changed. Move them away to start "
                "afresh in this directory"
            )
        if found is None:
            log.warning("resume=true but %s has no checkpoint yet: starting from scratch", run_dir)
        return found
    return resolve_checkpoint(cfg.resume, verified)


def load_state(run: TrainingRun) -> None:
    """Read the resumed checkpoint's training state (before the problems are built: the samplers
    start where it stopped), and the run's ``resume_history`` with this resume appended."""
    if run.checkpoint is not None:
        run.state = load_training_state(run.checkpoint)
        run.resume_history = list(run.state.get("resume_history", []))
        if run.resumed is not None:
            run.resume_history.append({"step": run.start_step, **run.resumed})


def restore(run: TrainingRun) -> None:
    """Put the resumed state back into the built problems, then the RNG state (last, so that nothing
    drawn while setting up shifts the random streams)."""
    state, lower, upper = run.state, run.lower, run.upper
    if state is None:
        return
    lower._count = run.start_step * run.accumulation  # Betty's micro-batch count: unroll and warm-up line up
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
    elif run.reweighter is not None and "reweighter" in state:  # a baseline's counters (small_loss)
        run.reweighter.load_state_dict(state["reweighter"])
    if run.resumed is not None and run.resumed["changes"]:  # e.g. train.steps: the new schedule from here
        lower_schedule = lower.engine.lr_scheduler if run.world.deepspeed else lower.lr_scheduler
        upper_schedules = (
            [] if upper is None else getattr(upper.lr_scheduler, "schedules", [upper.lr_scheduler])
        )
        for scheduler in [lower_schedule, *upper_schedules]:  # a GroupedSchedule: one per parameter group
            continue_schedule(scheduler)
    set_rng_state(state["rng"])
    log.info("resumed from %s at step %d of %d", run.checkpoint, run.start_step, run.cfg.train.steps)


def training_state(run: TrainingRun) -> dict:
    """The state :func:`restore` puts back (tensors, numbers and nested dicts/lists only)."""
    lower, upper = run.lower, run.upper
    state: dict = {"micro_batches": run.engine.global_step}
    if run.resume_history:
        state["resume_history"] = run.resume_history
    if not run.world.deepspeed:  # DeepSpeed writes its own (sharded) optimiser and schedule state
        state.update(optimizer=lower.optimizer.state_dict(), scheduler=lower.lr_scheduler.state_dict())
    if upper is not None:
        state["upper"] = {
            "module": upper.module.state_dict(),
            "optimizer": upper.optimizer.state_dict(),
            "scheduler": upper.lr_scheduler.state_dict(),
            "steps": upper.steps_taken,
        }
    elif run.reweighter is not None:
        state["reweighter"] = run.reweighter.state_dict()
    return state


def save(run: TrainingRun, step: int) -> Path:
    """Checkpoint ``step`` (optimiser steps) of the run; pruning never removes the checkpoint the run
    resumed from. Raises NonFiniteError, writing nothing, when a parameter of the PRM or the reweighter
    is not finite."""
    modules = [run.prm] + ([run.reweighter] if run.reweighter is not None else [])
    if not all(all_finite(p.detach() for p in module.parameters()) for module in modules):
        raise NonFiniteError(f"step {step}: the model holds non-finite parameters; not saving a checkpoint")
    extra = {}
    if run.reweighter is not None and not run.reweighter.needs_data_pass:  # a net's weights: at the end
        extra["weights.json"] = weights_json(run.reweighter, weights_now(run), run.data.train_chains)
    path = save_checkpoint(
        run.run_dir,
        step,
        run.prm,
        training_state(run),
        run.config_yaml + history_comment(run.resume_history),
        keep_last=run.cfg.train.keep_last_n_checkpoints,
        extra_files=extra,
        is_main=run.world.is_main,
        protected=[run.checkpoint] if run.checkpoint is not None else [],  # never pruned
        verified=run.verified,
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
