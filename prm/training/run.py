"""What one training job holds once it is set up: config, places, data, model, Betty problems."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from prm.distributed import World
from prm.tracking import Tracker


@dataclass
class TrainingData:
    """``config``: the instantiated data config (batch sizes, max_length, ...); chains of both sets;
    ``domains``: the sorted domain names of the training chains."""

    config: Any
    train_chains: list
    meta_chains: list
    domains: list[str]


@dataclass
class TrainingRun:
    """One training job. ``start_step``: optimiser steps already taken (a resumed run's checkpoint);
    ``state``: the resumed training state (None for a fresh run); ``resumed``: what this resume
    changed against the checkpoint's config (:func:`prm.training.state.check_resume_config`; None
    for a fresh run); ``resume_history``: every resume of the run so far, this one last (saved with
    each checkpoint); ``verified``: the checkpoint folders this run has hashed and found complete
    (:func:`prm.checkpoint.verify_checkpoint`: pruning at each save reads a kept checkpoint again only
    after a file of it changed)."""

    cfg: DictConfig
    run_dir: Path
    device: str
    world: World
    tracker: Tracker
    checkpoint: Path | None = None
    state: dict | None = None
    data: TrainingData | None = None
    backbone: Any = None
    prm: Any = None
    collator: Any = None
    aggregation: Any = None
    lower: Any = None
    upper: Any = None
    reweighter: Any = None  # the weights' module: the upper problem's, or a baseline's (None: none)
    engine: Any = None
    config_yaml: str = ""
    resumed: dict | None = None
    resume_history: list = field(default_factory=list)
    verified: dict = field(default_factory=dict)

    @property
    def start_step(self) -> int:
        return self.state["step"] if self.state is not None else 0

    @property
    def accumulation(self) -> int:
        return self.cfg.train.gradient_accumulation
