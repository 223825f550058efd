"""Train a process reward model: python train.py [group=option ...] [key=value ...]

Reads top to bottom like a recipe: compose the config (conf/config.yaml), build data, backbone and
PRM, wrap the PRM as a Betty problem, run Betty's engine with validation and checkpoints. Examples:
    python train.py                                  # tiny Qwen2-VL PRM on the demo benchmark
    python train.py backbone=tiny_internvl experiment=smoke
    python train.py resume=true hydra.run.dir=<interrupted run dir>   # continue a run
    python train.py -m aggregation=mean,min,max      # a Hydra multirun sweep under multirun/
"""
from __future__ import annotations

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

from prm.bilevel.engine import PRMEngine
from prm.aggregation import pad_ragged
from prm.bilevel.lower import PRMLower
from prm.checkpoint import (latest_checkpoint, load_head, load_training_state, resolve_checkpoint,
                            save_checkpoint, set_rng_state)
from prm.data.dataset import ChainDataset, PRMCollator
from prm.data.sampling import ResumableSampler
from prm.device import pick_device
from prm.evaluation.best_of_n import chain_metrics
from prm.evaluation.scoring import score_chains
from prm.model.prm import ProcessRewardModel

log = logging.getLogger("train")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_directory() -> Path:
    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path("outputs/manual")


def find_resume_checkpoint(cfg: DictConfig, run_dir: Path) -> Path | None:
    """``resume=true``: this run directory's latest checkpoint; ``resume=<dir>``: that run's."""
    if cfg.resume in (False, None):
        return None
    if cfg.resume is True:
        found = latest_checkpoint(run_dir)
        if found is None:
            log.warning("resume=true but %s has no checkpoint yet: starting from scratch", run_dir)
        return found
    return resolve_checkpoint(cfg.resume)


def build_scheduler(cfg: DictConfig, optimizer, total_steps: int):
    make = instantiate(cfg.schedule)
    return make(optimizer, total_steps=total_steps) if "name" in cfg.schedule else make(optimizer)


def train(cfg: DictConfig, run_dir: Path | None = None) -> dict[str, float]:
    """Run one training job in ``run_dir`` (default: Hydra's); returns the final validation metrics."""
    seed_everything(cfg.seed)
    run_dir = Path(run_dir) if run_dir is not None else run_directory()
    resume_from = find_resume_checkpoint(cfg, run_dir)
    device = pick_device(cfg.train.device)
    tracker = instantiate(cfg.logger)
    tracker.start(run_dir, OmegaConf.to_container(cfg, resolve=True), name=run_dir.name)

    # Data: training chains (lower level) and the meta set (validation now, upper level later).
    data = instantiate(cfg.data)
    train_chains, meta_chains = data.load("train"), data.load("meta")

    # Model: the backbone from config, or from the checkpoint being resumed.
    backbone_overrides = {"path": str(resume_from)} if resume_from is not None else {}
    backbone = instantiate(cfg.backbone, **backbone_overrides)
    prm = ProcessRewardModel(backbone, head=cfg.prm.head)
    start_from = resume_from or cfg.backbone.get("path")
    if start_from:
        prm.load_head_state_dict(load_head(start_from))
    log.info("PRM: %s backbone, %s head, %d parameters; %d training chains, %d meta chains",
             backbone.family, cfg.prm.head, sum(p.numel() for p in prm.parameters()), len(train_chains),
             len(meta_chains))

    # Steps: Betty counts micro-batches; optimiser steps = micro-batches / accumulation.
    accumulation = cfg.train.gradient_accumulation
    total_micro = cfg.train.steps * accumulation
    state = load_training_state(resume_from) if resume_from is not None else None
    start_micro = state["step"] if state is not None else 0
    sampler = ResumableSampler(len(train_chains), seed=cfg.seed, start=start_micro * data.batch_size)
    loader = DataLoader(ChainDataset(train_chains), batch_size=data.batch_size, sampler=sampler,
                        collate_fn=PRMCollator(backbone, data.max_length), num_workers=data.num_workers)
    optimizer = torch.optim.AdamW(prm.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                                  betas=tuple(cfg.train.betas))
    lower = PRMLower(
        name="prm", module=prm, optimizer=optimizer, train_data_loader=loader, precision=cfg.train.precision,
        config=Config(gradient_accumulation=accumulation, gradient_clipping=cfg.train.gradient_clipping,
                      precision="fp32", log_step=-1),
    )

    aggregation = instantiate(cfg.aggregation)
    meta_labels = [chain.label for chain in meta_chains]

    def validate() -> dict[str, float]:
        scores = score_chains(prm, meta_chains, data.eval_batch_size, data.max_length, device, cfg.train.precision)
        result = chain_metrics(aggregation(*pad_ragged(scores)), meta_labels, probability=aggregation.is_probability)
        metrics = {"auroc": result.auroc, f"auroc_{aggregation.name}": result.auroc}
        if result.mse is not None:
            metrics.update(loss=result.mse, accuracy=result.accuracy)
        return metrics

    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)

    def save(micro_step: int) -> None:
        training_state = {"optimizer": lower.optimizer.state_dict(),
                          "scheduler": lower.lr_scheduler.state_dict(), "micro_step": micro_step}
        path = save_checkpoint(run_dir, micro_step, prm, training_state, config_yaml)
        log.info("checkpoint %s", path)

    engine = PRMEngine(
        problems=[lower],
        config=EngineConfig(train_iters=total_micro - start_micro, valid_step=total_micro + 1, logger_type="none"),
        start_step=start_micro, total_steps=total_micro,
        validate_every=cfg.train.validate_every * accumulation, save_every=cfg.train.save_every * accumulation,
        validate=validate, save=save, log_metrics=tracker.log,
    )
    # Betty rebuilds the optimiser while setting up the problem: attach the schedule and any resumed
    # state to the optimiser it actually steps.
    lower.lr_scheduler = build_scheduler(cfg, lower.optimizer, cfg.train.steps)
    if state is not None:
        lower.optimizer.load_state_dict(state["optimizer"])
        lower.lr_scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        log.info("resumed from %s at step %d of %d", resume_from, start_micro // accumulation, cfg.train.steps)
    if start_micro < total_micro:
        engine.run()
    metrics = engine.last_validation or validate()
    tracker.finish()
    log.info("final validation: %s", {k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v)
                                      for k, v in metrics.items()})
    return metrics


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    metrics = train(cfg)
    return metrics.get("auroc", float("nan"))


if __name__ == "__main__":
    main()
