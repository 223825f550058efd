"""Setup steps of the training recipe: seed, run directory, device and process group, tracker, data, model."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from prm.checkpoint import load_head, resolve_checkpoint
from prm.data.dataset import PRMCollator
from prm.device import pick_device
from prm.distributed import World, setup
from prm.model.prm import ProcessRewardModel
from prm.tracking import Tracker, job_identity
from prm.training.run import TrainingData, TrainingRun

log = logging.getLogger("train")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_directory(run_dir: str | Path | None = None) -> Path:
    """``run_dir``, else Hydra's output directory, else outputs/manual (a call outside Hydra)."""
    if run_dir is not None:
        return Path(run_dir)
    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path("outputs/manual")


def setup_device(cfg: DictConfig) -> tuple[str, World]:
    """The device from ``train.device`` and the process group of ``distributed`` (one GPU per rank)."""
    device = pick_device(cfg.train.device)
    world = setup(cfg, device)
    if world.deepspeed and str(device).startswith("cuda"):
        device = f"cuda:{world.local_rank}"
    return device, world


def setup_tracker(cfg: DictConfig, run_dir: Path, world: World) -> Tracker:
    """The ``logger`` group's tracker, started; only rank 0 writes metrics."""
    tracker = instantiate(cfg.logger) if world.is_main else Tracker(jsonl=False)
    tracker.start(
        run_dir, OmegaConf.to_container(cfg, resolve=True), job_type="train", **job_identity(run_dir)
    )
    return tracker


def setup_data(run: TrainingRun) -> None:
    """Training chains (lower level) and the meta set (validation, and the upper level's data)."""
    data = instantiate(run.cfg.data)
    train_chains, meta_chains = data.load("train"), data.load("meta")
    domains = sorted({chain.domain for chain in train_chains})
    run.data = TrainingData(data, train_chains, meta_chains, domains)


def setup_model(run: TrainingRun) -> None:
    """Backbone, PRM and collator; the aggregation. Weights come from the checkpoint being resumed,
    else from ``backbone.path`` (a checkpoint folder or a run directory: its latest checkpoint), else
    from the backbone config (a random tiny model or a pretrained one)."""
    cfg = run.cfg
    start_from = run.checkpoint or (
        resolve_checkpoint(cfg.backbone.path) if cfg.backbone.get("path") else None
    )
    run.backbone = instantiate(cfg.backbone, **({"path": str(start_from)} if start_from is not None else {}))
    run.prm = ProcessRewardModel(run.backbone, head=cfg.prm.head)
    if start_from:
        run.prm.load_head_state_dict(load_head(start_from))
    run.collator = PRMCollator(run.backbone, run.data.config.max_length, run.data.config.packing)
    if cfg.train.get("compile"):
        # In place (nn.Module.compile): parameter names, checkpoints and optimisers are unchanged.
        # dynamic: batch shapes vary (lengths, packing), one graph serves them all.
        run.backbone.model.model.compile(dynamic=True)
    run.config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    log.info(
        "PRM: %s backbone, %s head, %d parameters; %d training chains, %d meta chains",
        run.backbone.family,
        cfg.prm.head,
        sum(p.numel() for p in run.prm.parameters()),
        len(run.data.train_chains),
        len(run.data.meta_chains),
    )
