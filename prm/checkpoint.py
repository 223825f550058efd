"""Checkpoints: save_pretrained directories plus training state, written atomically.

Layout of a run directory::

    checkpoints/step-0000100/   model.safetensors, config.json, tokenizer + processor files
                                (save_pretrained: loadable with backbone.path=<this folder>),
                                head.safetensors (value head, if any), training_state.pt
                                (optimiser, scheduler, step, sampler position, RNG), config.yaml,
                                deepspeed/ (each rank's share of the state, under distributed=zero*)
    checkpoints/latest          name of the newest complete checkpoint

A checkpoint is written into a hidden temporary folder and renamed into place, and ``latest`` is
replaced atomically afterwards, so a crash while saving never corrupts the previous checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from prm.data.native import atomic_write_text
from prm.distributed import barrier, broadcast_object

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE_FILE = "training_state.pt"
HEAD_FILE = "head.safetensors"


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    prm,
    training_state: dict[str, Any],
    config_yaml: str,
    keep_last: int = 2,
    extra_files: dict[str, str] | None = None,
    is_main: bool = True,
    sharded: Callable[[Path], None] | None = None,
    gathered: Callable[[], Any] = contextlib.nullcontext,
) -> Path:
    """Write checkpoint ``step`` of ``prm`` (a ProcessRewardModel) atomically; returns its folder.

    ``extra_files`` maps file names to text written beside the model (e.g. the learned weights).
    Several ranks (DeepSpeed): every rank calls this; ``sharded(folder)`` writes each rank's share of
    the state (DeepSpeed's own checkpoint), ``gathered()`` makes partitioned parameters whole while
    the main rank writes the model, and only the main rank writes the rest and renames the folder.
    """
    root = Path(run_dir) / CHECKPOINTS
    final = root / f"step-{step:07d}"
    tmp = None
    if is_main:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}."))
    tmp = Path(broadcast_object(str(tmp) if tmp else None))
    try:
        if sharded is not None:
            sharded(tmp)
        with gathered():
            if is_main:
                prm.backbone.save_pretrained(tmp)
                head = prm.head_state_dict()
                if head:
                    save_file({k: v.contiguous() for k, v in head.items()}, tmp / HEAD_FILE)
        if is_main:
            torch.save({**training_state, "step": step, "rng": rng_state()}, tmp / STATE_FILE)
            (tmp / "config.yaml").write_text(config_yaml, encoding="utf-8")
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text, encoding="utf-8")
            # A checkpoint of the same step (a resumed run saving again) is moved aside, not deleted
            # first: only two renames stand between the old folder and the new one.
            aside = root / f".{final.name}.replaced"
            if final.exists():
                shutil.rmtree(aside, ignore_errors=True)
                os.replace(final, aside)
            os.replace(tmp, final)
            shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    barrier()
    if is_main:
        atomic_write_text(root / LATEST, final.name + "\n")
        for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    pointer = Path(run_dir) / CHECKPOINTS / LATEST
    if not pointer.is_file():
        return None
    folder = pointer.parent / pointer.read_text(encoding="utf-8").strip()
    return folder if folder.is_dir() else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint folder, a run directory or its checkpoints/ folder."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    for run_dir in (path, path.parent):
        found = latest_checkpoint(run_dir)
        if found is not None:
            return found
    raise FileNotFoundError(
        f"{path}: neither a checkpoint (no config.json) nor a run directory with checkpoints"
    )


def load_training_state(checkpoint: str | Path) -> dict[str, Any]:
    return torch.load(Path(checkpoint) / STATE_FILE, weights_only=False)


def load_head(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    file = Path(checkpoint) / HEAD_FILE
    return load_file(file) if file.is_file() else {}


def find_resume_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under ``run_dir`` (the one ``checkpoints/latest`` names), or None."""
    return latest_checkpoint(run_dir)


def load_prm(checkpoint: str | Path, device=None):
    """The ProcessRewardModel a checkpoint's config.yaml describes, with its weights and head, on
    ``device`` (None: where it was built). Raises FileNotFoundError when config.yaml is missing."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from prm.model.prm import ProcessRewardModel

    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.yaml").is_file():
        raise FileNotFoundError(f"{checkpoint}: no config.yaml (not a checkpoint folder)")
    saved = OmegaConf.load(checkpoint / "config.yaml")
    backbone = instantiate(saved.backbone, path=str(checkpoint))
    prm = ProcessRewardModel(backbone, head=saved.prm.head)
    prm.load_head_state_dict(load_head(checkpoint))
    return prm if device is None else prm.to(device)
