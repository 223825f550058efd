"""Finding checkpoints: the step folders of a run, the newest one that verifies, what a path names.

Nothing here writes to disk. ``checkpoints/latest`` is a hint only: the newest checkpoint that
verifies (:func:`prm.checkpoint.manifest.verify_checkpoint`) wins, whatever ``latest`` says.
"""

from __future__ import annotations

import logging
from pathlib import Path

from prm.checkpoint.layout import CHECKPOINTS, LATEST, MANIFEST, STEP_FOLDER, CheckpointError
from prm.checkpoint.manifest import VerifiedFolders, verify_checkpoint

log = logging.getLogger("prm.checkpoint")


def checkpoint_step(checkpoint: str | Path) -> int:
    """The step a checkpoint folder was saved at (from its name ``step-NNNNNNN``).
    Raises ValueError for any other folder name."""
    match = STEP_FOLDER.match(Path(checkpoint).name)
    if match is None:
        raise ValueError(f"{checkpoint}: not a checkpoint folder name (step-NNNNNNN)")
    return int(match.group(1))


def step_folders(root: Path) -> list[Path]:
    """``step-*`` folders under ``root`` (a ``checkpoints/`` folder), newest step first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_FOLDER.match(p.name)]
    return sorted(found, key=checkpoint_step, reverse=True)


def checkpoint_folders(run_dir: str | Path) -> list[Path]:
    """Every ``checkpoints/step-*`` folder of a run directory, valid or not, newest step first."""
    return step_folders(Path(run_dir) / CHECKPOINTS)


def _latest_pointer(root: Path) -> str | None:
    pointer = root / LATEST
    try:
        return pointer.read_text(encoding="utf-8").strip() or None
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
        return None


def newest_valid(run_dir: str | Path, report: bool, verified: VerifiedFolders | None = None) -> Path | None:
    """The newest checkpoint of ``run_dir`` that verifies, or None. ``report``: log a warning for each
    skipped folder (with its reason) and for a ``latest`` that names another folder."""
    root = Path(run_dir) / CHECKPOINTS
    pointer = _latest_pointer(root)
    for folder in step_folders(root):
        reason = verify_checkpoint(folder, verified)
        if reason is None:
            if report and pointer is not None and pointer != folder.name:
                log.warning(
                    "%s names %s; resuming from %s, the newest that verifies",
                    root / LATEST,
                    pointer,
                    folder.name,
                )
            return folder
        if report:
            log.warning("skipping checkpoint %s: %s", folder, reason)
    if report and pointer is not None:
        log.warning("%s names %s, but no checkpoint under %s verifies", root / LATEST, pointer, root)
    return None


def latest_checkpoint(run_dir: str | Path, verified: VerifiedFolders | None = None) -> Path | None:
    """The newest checkpoint of ``run_dir`` that verifies (None if there is none); logs nothing."""
    return newest_valid(run_dir, report=False, verified=verified)


def resolve_checkpoint(path: str | Path, verified: VerifiedFolders | None = None) -> Path:
    """A checkpoint folder from a checkpoint folder, a run directory or its ``checkpoints/`` folder.

    A checkpoint folder (with ``manifest.json``) must verify; a plain ``save_pretrained`` model folder
    (``config.json``, no manifest: e.g. a downloaded backbone) is returned as is. A run directory
    gives its newest checkpoint that verifies. Raises CheckpointError (a FileNotFoundError, with the
    reasons) otherwise.
    """
    path = Path(path)
    if (path / MANIFEST).is_file():
        reason = verify_checkpoint(path, verified)
        if reason is not None:
            raise CheckpointError(f"{path}: damaged checkpoint: {reason}")
        return path
    if (path / "config.json").is_file():
        return path
    for run_dir in (path, path.parent):
        if (run_dir / CHECKPOINTS).is_dir():
            found = newest_valid(run_dir, report=True, verified=verified)
            if found is not None:
                return found
            raise CheckpointError(
                f"{run_dir / CHECKPOINTS}: no checkpoint verifies (see the log); a model folder "
                "written by an older version can still be named directly: <run>/checkpoints/step-NNNNNNN"
            )
    raise CheckpointError(
        f"{path}: neither a checkpoint (no config.json) nor a run directory with checkpoints"
    )
