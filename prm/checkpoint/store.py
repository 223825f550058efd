"""Writing checkpoints: atomic save, pruning, and the removal of what killed saves left behind.

A checkpoint is written into a hidden temporary folder ``.step-NNNNNNN.*`` and renamed into place;
its manifest is written last (:mod:`prm.checkpoint.manifest`), so a resume picks the newest
checkpoint that verifies and a truncated or half-copied folder is skipped with a logged reason.
Temporary folders left by a killed write are removed by :func:`clean_stale` at the start of each
save and of each resume (:func:`find_resume_checkpoint`).

Nothing is remembered between calls: which checkpoints pruning must keep (the one a run resumed
from) and which folders were already hashed are the caller's, passed as ``protected`` and
``verified``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from prm.checkpoint.codec import rng_state, write_training_state
from prm.checkpoint.discovery import checkpoint_step, newest_valid, step_folders
from prm.checkpoint.layout import CHECKPOINTS, HEAD_FILE, LATEST
from prm.checkpoint.manifest import VerifiedFolders, verify_checkpoint, write_manifest
from prm.data.native import atomic_write_text
from prm.distributed import barrier, broadcast_object

log = logging.getLogger("prm.checkpoint")

ASIDE = ".replaced"  # suffix of a same-step checkpoint moved aside while its successor is renamed in


# ------------------------------------------------------------------------------ stale folders


def clean_stale(run_dir: str | Path, verified: VerifiedFolders | None = None) -> list[Path]:
    """Remove the temporary folders (``checkpoints/.step-*``) that killed saves left; returns them.

    One exception: a complete checkpoint moved aside (``.step-N.replaced``) while its same-step
    successor was being renamed in, when ``step-N`` itself is missing, is renamed back.
    """
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    removed = []
    for stale in sorted(root.glob(".step-*")):
        if not stale.is_dir():
            continue
        final = root / stale.name[1:].split(".")[0]
        if stale.name.endswith(ASIDE) and not final.exists() and verify_checkpoint(stale, verified) is None:
            with contextlib.suppress(OSError):
                os.replace(stale, final)
                log.warning("restored %s from %s (a save was interrupted)", final.name, stale.name)
                continue
        shutil.rmtree(stale, ignore_errors=True)
        removed.append(stale)
    if removed:
        log.warning(
            "removed %d stale temporary checkpoint folder(s): %s", len(removed), [p.name for p in removed]
        )
    return removed


def find_resume_checkpoint(run_dir: str | Path, verified: VerifiedFolders | None = None) -> Path | None:
    """The checkpoint to resume ``run_dir`` from: the newest that verifies, or None.

    Removes stale temporary folders first (:func:`clean_stale`). ``checkpoints/latest`` is not
    trusted: missing, dangling or naming a damaged checkpoint, the newest complete one still wins;
    every skipped folder is logged with its reason.
    """
    clean_stale(run_dir, verified)
    return newest_valid(run_dir, report=True, verified=verified)


def prune(
    root: Path,
    keep_last: int,
    newest: Path,
    protected: Iterable[str | Path] = (),
    verified: VerifiedFolders | None = None,
) -> list[Path]:
    """Remove checkpoints beyond the ``keep_last`` newest that verify (0: keep all); returns them.

    ``root``: a run's ``checkpoints/`` folder. Never removed: ``newest`` (just written), the
    ``protected`` checkpoints (the one a run resumed from; compared by resolved path), and damaged
    folders newer than ``newest`` (the run will replace them). Damaged folders older than ``newest``
    are removed (they can never be resumed from).
    """
    if keep_last <= 0:
        return []
    protected = {Path(p).resolve() for p in protected}
    kept, removed = 0, []
    for folder in step_folders(root):
        if folder == newest:
            kept += 1
            continue
        newer = checkpoint_step(folder) > checkpoint_step(newest)
        reason = None if newer else verify_checkpoint(folder, verified)
        if newer or folder.resolve() in protected:
            kept += reason is None and not newer
            continue
        if reason is None and kept < keep_last:
            kept += 1
            continue
        if reason is not None:
            log.warning("removing damaged checkpoint %s: %s", folder, reason)
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


# ------------------------------------------------------------------------------------- save


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
    protected: Iterable[str | Path] = (),
    verified: VerifiedFolders | None = None,
) -> Path:
    """Write checkpoint ``step`` (the optimiser step) of ``prm`` (a ProcessRewardModel); returns its folder.

    ``training_state``: nested dicts/lists/tuples of tensors, numbers, strings, bools, None (see
    :func:`prm.checkpoint.codec.encode_state`; TypeError names anything else); the RNG states are
    added here. ``extra_files`` maps file names to text written beside the model (e.g. the learned
    weights). Several ranks (DeepSpeed): every rank calls this; ``sharded(folder)`` writes each rank's
    share of the state (DeepSpeed's own checkpoint), ``gathered()`` makes partitioned parameters whole
    while the main rank writes the model, and only the main rank writes the rest and renames the
    folder. Afterwards at most ``keep_last`` verified checkpoints remain besides ``protected`` (see
    :func:`prune`); ``verified``: the caller's record of folders already hashed.
    """
    root = Path(run_dir) / CHECKPOINTS
    final = root / f"step-{step:07d}"
    tmp = None
    if is_main:
        root.mkdir(parents=True, exist_ok=True)
        clean_stale(run_dir, verified)
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
        barrier()  # every rank's share is on disk before the manifest hashes it
        if is_main:
            write_training_state(tmp, {**training_state, "step": step, "rng": rng_state()})
            (tmp / "config.yaml").write_text(config_yaml, encoding="utf-8")
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text, encoding="utf-8")
            write_manifest(tmp, step)
            # A checkpoint of the same step (a resumed run saving again) is moved aside, not deleted
            # first: only two renames stand between the old folder and the new one.
            aside = root / f".{final.name}{ASIDE}"
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
        prune(root, keep_last, final, protected, verified)
    return final


# ------------------------------------------------------------------------------------- read


def load_head(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """The value head's tensors of a checkpoint folder (``head.safetensors``; {} when it has none, e.g.
    a token head or a plain backbone folder)."""
    file = Path(checkpoint) / HEAD_FILE
    return load_file(file) if file.is_file() else {}
