"""Setup steps of the training recipe: seed, run directory, device and process group, tracker, data, model."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from transformers import set_seed

from prm.checkpoint import checkpoint_step, resolve_checkpoint
from prm.config import ConfigError
from prm.data.dataset import PRMCollator
from prm.device import pick_device
from prm.distributed import World, setup
from prm.model.build import build_prm
from prm.model.compilation import compile_blocks
from prm.preflight import preflight
from prm.tracking import Tracker, job_identity
from prm.training.run import TrainingData, TrainingRun

log = logging.getLogger("train")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and every accelerator's) global generators, through
    transformers' ``set_seed``."""
    set_seed(seed)


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


def setup_tracker(cfg: DictConfig, run_dir: Path, world: World, checkpoint: Path | None) -> Tracker:
    """The ``logger`` group's tracker, started; only rank 0 writes metrics. On resume, the rows of
    ``metrics.jsonl`` past the resumed checkpoint's step are dropped (all rows when ``resume=true``
    found no checkpoint), so a resumed run never repeats a step."""
    tracker = instantiate(cfg.logger) if world.is_main else Tracker(jsonl=False)
    resume_step = None
    if cfg.resume not in (False, None):
        resume_step = checkpoint_step(checkpoint) if checkpoint is not None else 0
    tracker.start(
        run_dir,
        OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        job_type="train",
        resume_step=resume_step,
        **job_identity(run_dir),
    )
    return tracker


def setup_model(run: TrainingRun) -> None:
    """Backbone and PRM. Weights come from the checkpoint being resumed,
    else from ``backbone.path`` (a checkpoint folder or a run directory: its latest checkpoint), else
    from the backbone config (a random tiny model or a pretrained one)."""
    cfg = run.cfg
    start_from = run.checkpoint or (
        resolve_checkpoint(cfg.backbone.path, run.verified) if cfg.backbone.get("path") else None
    )
    run.prm = build_prm(
        cfg.backbone,
        head=cfg.prm.head,
        last_layer=cfg.prm.last_layer,
        prompt=cfg.get("prompt"),
        weights=start_from,
    )
    run.backbone = run.prm.backbone
    if cfg.train.get("compile"):
        compile_blocks(run.prm)  # in place, layer by layer: parameter names are unchanged
    run.config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    log.info(
        "PRM: %s backbone, %s head, %d parameters",
        run.backbone.family,
        cfg.prm.head,
        sum(p.numel() for p in run.prm.parameters()),
    )


def setup_data(run: TrainingRun) -> None:
    """Training chains (lower level) and the meta set (validation, and the upper level's data), read and
    checked by the preflight pass with the backbone's own chain format (:func:`prm.preflight.preflight`:
    policies ``data.too_long``, ``data.bad_image``, ``data.special_tokens``; every case counted in the
    report, which is logged and written to ``preflight.json``). Needs :func:`setup_model` first.

    Raises:
        PreflightError / RecordError (user errors): a record fails a check.
    """
    data = instantiate(run.cfg.data)
    records, report = preflight(data, run.backbone, ("train", "meta"))
    if run.world.is_main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        (run.run_dir / "preflight.json").write_text(json.dumps(report.as_dict(), indent=1), encoding="utf-8")
    missing = [split for split in ("train", "meta") if split not in records]
    if missing:
        raise ConfigError(
            f"data.{missing[0]} is not set: training needs data.train (step-labelled chains) and "
            "data.meta (whole-chain labels, both classes) files"
        )
    train_chains, meta_chains = records["train"], records["meta"]
    domains = sorted({chain.domain for chain in train_chains})
    run.data = TrainingData(data, train_chains, meta_chains, domains)
    run.collator = PRMCollator(run.backbone, data.max_length, data.packing)
    log.info(
        "data: %d training chains (%d domains), %d meta chains",
        len(train_chains),
        len(domains),
        len(meta_chains),
    )
