"""Checkpoints: save_pretrained directories plus training state, written atomically, verified on load.

Layout of a run directory::

    checkpoints/step-0000100/   model.safetensors, config.json, tokenizer + processor files
                                (save_pretrained: loadable with backbone.path=<this folder>),
                                head.safetensors (value head, if any),
                                training_state.safetensors + training_state.json (optimiser,
                                scheduler, step, sampler position, RNG: tensors and the rest),
                                config.yaml, deepspeed/ (each rank's share, under distributed=zero*),
                                manifest.json (every other file: size and sha256)
    checkpoints/latest          name of the newest checkpoint written (a hint only)

Nothing is unpickled: tensors go to safetensors under their path in the state
(``optimizer/state/0/exp_avg``), everything else (numbers, strings, tuples, dicts with integer keys,
numpy arrays of the RNG state) to JSON with small type markers, so loading runs no code from the file.
A checkpoint is written into a hidden temporary folder ``.step-NNNNNNN.*`` and renamed into place;
the manifest is written last. A checkpoint counts only if every file matches its manifest, so a
resume picks the newest checkpoint that verifies, whatever ``latest`` says, and a truncated or
half-copied folder is skipped with a logged reason. Temporary folders left by a killed write are
removed by :func:`clean_stale` at the start of each save and of each resume.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
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
from prm.errors import UserError

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LATEST = "latest"
MANIFEST = "manifest.json"
STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"
LEGACY_STATE = "training_state.pt"  # a pickle written by older versions: never loaded
HEAD_FILE = "head.safetensors"
FORMAT = 1
STEP_FOLDER = re.compile(r"^step-(\d+)$")


class CheckpointError(UserError, FileNotFoundError):
    """A checkpoint that is missing, damaged or not of the expected kind; the message names the folder
    and what is wrong (a user error: exit status 2 from the entry points)."""


ASIDE = ".replaced"  # suffix of a same-step checkpoint moved aside while its successor is renamed in

# Markers of the JSON encoding (a JSON object with exactly one of these keys is a marker).
TENSOR, TUPLE, ITEMS, NDARRAY, NPSCALAR = (
    "__tensor__",
    "__tuple__",
    "__items__",
    "__ndarray__",
    "__npscalar__",
)
MARKERS = {TENSOR, TUPLE, ITEMS, NDARRAY, NPSCALAR}

# Checkpoints a resumed run started from (by resolved path): pruning never removes them.
_resumed_from: set[Path] = set()
# Checkpoints this process hashed and found complete: (file, size, mtime, inode) of each listed file.
# Pruning verifies the kept checkpoints at every save; a folder whose files were not touched since is
# not read again (a multi-GB model would otherwise be hashed once per save).
_verified: dict[Path, tuple] = {}


# ----------------------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """The RNG states of torch (CPU and every CUDA device), python ``random`` and numpy's global one."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (also after a JSON/safetensors round trip)."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------ training state: no pickle


def encode_state(state: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested state into a JSON-able structure and a flat ``{path: tensor}`` dictionary.

    Accepts dicts (any hashable keys of the accepted kinds), lists, tuples, tensors (dense),
    numpy arrays and scalars, and JSON scalars (str, int, float incl. inf/nan, bool, None). Tuples stay
    tuples and integer dict keys stay integers (``optimizer.state_dict()["state"]``).
    Raises TypeError naming the path of any other object (it would need pickle).
    """
    tensors: dict[str, torch.Tensor] = {}
    pointers: set[int] = set()

    def tensor_name(path: str) -> str:
        name, n = path or "tensor", 1
        while name in tensors:
            name, n = f"{path}#{n}", n + 1
        return name

    def encode(value: Any, path: str) -> Any:
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, (int, float)) and type(value) in (int, float):
            return value
        if isinstance(value, torch.Tensor):
            if value.layout != torch.strided:
                raise TypeError(f"training state {path!r}: {value.layout} tensors are not supported")
            tensor = value.detach().to("cpu").contiguous()
            if tensor.numel() and tensor.data_ptr() in pointers:  # shared storage: safetensors refuses
                tensor = tensor.clone()
            if tensor.numel():
                pointers.add(tensor.data_ptr())
            name = tensor_name(path)
            tensors[name] = tensor
            return {TENSOR: name}
        if isinstance(value, np.ndarray):
            return {NDARRAY: value.tolist(), "dtype": value.dtype.str, "shape": list(value.shape)}
        if isinstance(value, np.generic):
            return {NPSCALAR: value.item(), "dtype": value.dtype.str}
        if isinstance(value, (int, float)):  # subclasses (e.g. IntEnum) lose their type
            return int(value) if isinstance(value, int) else float(value)
        if isinstance(value, tuple):
            return {TUPLE: [encode(v, f"{path}/{i}") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [encode(v, f"{path}/{i}") for i, v in enumerate(value)]
        if isinstance(value, dict):
            if all(isinstance(k, str) for k in value) and not set(value) & MARKERS:
                return {k: encode(v, f"{path}/{k}" if path else k) for k, v in value.items()}
            return {
                ITEMS: [
                    [encode(k, f"{path}/<key>"), encode(v, f"{path}/{k}" if path else str(k))]
                    for k, v in value.items()
                ]
            }
        raise TypeError(
            f"training state {path or '<root>'!r}: {type(value).__name__} cannot be stored without "
            "pickle (allowed: dict, list, tuple, tensor, numpy array, str, int, float, bool, None)"
        )

    return encode(state, ""), tensors


def decode_state(data: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode_state`. Raises KeyError for a tensor name missing from ``tensors``."""

    def decode(value: Any) -> Any:
        if isinstance(value, list):
            return [decode(v) for v in value]
        if not isinstance(value, dict):
            return value
        if marker := set(value) & MARKERS:
            kind = marker.pop()
            if kind == TENSOR:
                return tensors[value[TENSOR]]
            if kind == TUPLE:
                return tuple(decode(v) for v in value[TUPLE])
            if kind == ITEMS:
                return {decode(k): decode(v) for k, v in value[ITEMS]}
            if kind == NDARRAY:
                return np.array(value[NDARRAY], dtype=np.dtype(value["dtype"])).reshape(value["shape"])
            return np.dtype(value["dtype"]).type(value[NPSCALAR])
        return {k: decode(v) for k, v in value.items()}

    return decode(data)


def write_training_state(folder: Path, state: dict[str, Any]) -> None:
    """``training_state.safetensors`` (every tensor, named by its path) + ``training_state.json``."""
    structure, tensors = encode_state(state)
    save_file(tensors, folder / STATE_TENSORS)
    text = json.dumps({"format": FORMAT, "state": structure}, allow_nan=True)
    (folder / STATE_JSON).write_text(text, encoding="utf-8")


def load_training_state(checkpoint: str | Path) -> dict[str, Any]:
    """The training state saved with a checkpoint: the dict given to :func:`save_checkpoint` plus
    ``step`` (int) and ``rng`` (for :func:`set_rng_state`). Tensors come back on the CPU.

    Reads only safetensors and JSON. Raises FileNotFoundError when the folder has no such state, and
    says so when it holds an old pickled ``training_state.pt`` instead (that file is never opened).
    """
    folder = Path(checkpoint)
    if not (folder / STATE_JSON).is_file():
        if (folder / LEGACY_STATE).exists():
            raise CheckpointError(
                f"{folder}: holds {LEGACY_STATE}, a pickle written by an older version; it is never "
                "loaded (unpickling can run arbitrary code). Resume from a newer checkpoint, or start "
                f"a new run with backbone.path={folder} (the weights are safetensors)."
            )
        raise CheckpointError(f"{folder}: no {STATE_JSON} (not a training checkpoint)")
    try:
        saved = json.loads((folder / STATE_JSON).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{folder / STATE_JSON}: not valid JSON ({error})") from error
    if saved.get("format") != FORMAT:
        raise ValueError(f"{folder / STATE_JSON}: format {saved.get('format')!r}, expected {FORMAT}")
    tensors = load_file(folder / STATE_TENSORS) if (folder / STATE_TENSORS).is_file() else {}
    try:
        state = decode_state(saved["state"], tensors)
    except KeyError as error:
        raise ValueError(
            f"{folder / STATE_TENSORS}: tensor {error} named in {STATE_JSON} is missing"
        ) from None
    _resumed_from.add(folder.resolve())
    return state


# ------------------------------------------------------------------------- manifest, verify


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path, step: int) -> None:
    """``manifest.json``: every file under ``folder`` (relative path) with its size and sha256."""
    files = {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in _files(folder)
    }
    text = json.dumps({"format": FORMAT, "step": step, "files": files}, indent=1)
    (folder / MANIFEST).write_text(text, encoding="utf-8")


def verify_checkpoint(folder: str | Path) -> str | None:
    """None when ``folder`` is a complete checkpoint, else why not (a short reason for the log).

    Complete: ``manifest.json`` parses, and every file it lists exists with the listed size and
    sha256 (files not listed are ignored). Cost: one read of every file, skipped when this process
    verified the same folder before and no listed file's size, mtime or inode changed since.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return "not a folder"
    if not (folder / MANIFEST).is_file():
        if (folder / LEGACY_STATE).exists():
            return f"no {MANIFEST}: written by an older version (its pickled {LEGACY_STATE} is never loaded)"
        return f"no {MANIFEST} (an incomplete or foreign folder)"
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as error:
        return f"{MANIFEST} unreadable ({error!r})"
    if STATE_JSON not in files:
        return f"{MANIFEST} lists no {STATE_JSON}"
    signature = []
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} missing"
        stat = path.stat()
        if stat.st_size != entry["size"]:
            return (
                f"{name} has {stat.st_size} bytes, the manifest says {entry['size']} (truncated or replaced)"
            )
        signature.append((name, stat.st_size, stat.st_mtime_ns, stat.st_ino))
    key, signature = folder.resolve(), tuple(signature)
    if _verified.get(key) == signature:  # hashed before in this process, no file touched since
        return None
    for name, entry in files.items():
        if _sha256(folder / name) != entry["sha256"]:
            return f"{name}: sha256 differs from the manifest (corrupted)"
    _verified[key] = signature
    return None


def checkpoint_step(checkpoint: str | Path) -> int:
    """The step a checkpoint folder was saved at (from its name ``step-NNNNNNN``)."""
    match = STEP_FOLDER.match(Path(checkpoint).name)
    if match is None:
        raise ValueError(f"{checkpoint}: not a checkpoint folder name (step-NNNNNNN)")
    return int(match.group(1))


def _step_folders(root: Path) -> list[Path]:
    """``step-*`` folders under ``root``, newest step first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_FOLDER.match(p.name)]
    return sorted(found, key=checkpoint_step, reverse=True)


def checkpoint_folders(run_dir: str | Path) -> list[Path]:
    """Every ``checkpoints/step-*`` folder of a run directory, valid or not, newest step first."""
    return _step_folders(Path(run_dir) / CHECKPOINTS)


def _latest_pointer(root: Path) -> str | None:
    pointer = root / LATEST
    try:
        return pointer.read_text(encoding="utf-8").strip() or None
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
        return None


def _newest_valid(run_dir: str | Path, report: bool) -> Path | None:
    root = Path(run_dir) / CHECKPOINTS
    pointer = _latest_pointer(root)
    for folder in _step_folders(root):
        reason = verify_checkpoint(folder)
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


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint of ``run_dir`` that verifies (None if there is none); logs nothing."""
    return _newest_valid(run_dir, report=False)


def find_resume_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint to resume ``run_dir`` from: the newest that verifies, or None.

    Removes stale temporary folders first (:func:`clean_stale`). ``checkpoints/latest`` is not
    trusted: missing, dangling or naming a damaged checkpoint, the newest complete one still wins;
    every skipped folder is logged with its reason.
    """
    clean_stale(run_dir)
    return _newest_valid(run_dir, report=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint folder, a run directory or its ``checkpoints/`` folder.

    A checkpoint folder (with ``manifest.json``) must verify; a plain ``save_pretrained`` model folder
    (``config.json``, no manifest: e.g. a downloaded backbone) is returned as is. A run directory
    gives its newest checkpoint that verifies. Raises FileNotFoundError (with the reasons) otherwise.
    """
    path = Path(path)
    if (path / MANIFEST).is_file():
        reason = verify_checkpoint(path)
        if reason is not None:
            raise CheckpointError(f"{path}: damaged checkpoint: {reason}")
        return path
    if (path / "config.json").is_file():
        return path
    for run_dir in (path, path.parent):
        if (run_dir / CHECKPOINTS).is_dir():
            found = _newest_valid(run_dir, report=True)
            if found is not None:
                return found
            raise CheckpointError(
                f"{run_dir / CHECKPOINTS}: no checkpoint verifies (see the log); a model folder "
                "written by an older version can still be named directly: <run>/checkpoints/step-NNNNNNN"
            )
    raise CheckpointError(
        f"{path}: neither a checkpoint (no config.json) nor a run directory with checkpoints"
    )


# ------------------------------------------------------------------------------ stale folders


def clean_stale(run_dir: str | Path) -> list[Path]:
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
        if stale.name.endswith(ASIDE) and not final.exists() and verify_checkpoint(stale) is None:
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


def prune(root: Path, keep_last: int, newest: Path) -> list[Path]:
    """Remove checkpoints beyond the ``keep_last`` newest that verify (0: keep all); returns them.

    Never removed: ``newest`` (just written), any checkpoint a run resumed from in this process
    (:func:`load_training_state`), and damaged folders newer than ``newest`` (the run will replace
    them). Damaged folders older than ``newest`` are removed (they can never be resumed from).
    """
    if keep_last <= 0:
        return []
    kept, removed = 0, []
    for folder in _step_folders(root):
        if folder == newest:
            kept += 1
            continue
        newer = checkpoint_step(folder) > checkpoint_step(newest)
        reason = None if newer else verify_checkpoint(folder)
        if newer or folder.resolve() in _resumed_from:
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
) -> Path:
    """Write checkpoint ``step`` (the optimiser step) of ``prm`` (a ProcessRewardModel); returns its folder.

    ``training_state``: nested dicts/lists/tuples of tensors, numbers, strings, bools, None (see
    :func:`encode_state`; TypeError names anything else); the RNG states are added here.
    ``extra_files`` maps file names to text written beside the model (e.g. the learned weights).
    Several ranks (DeepSpeed): every rank calls this; ``sharded(folder)`` writes each rank's share of
    the state (DeepSpeed's own checkpoint), ``gathered()`` makes partitioned parameters whole while
    the main rank writes the model, and only the main rank writes the rest and renames the folder.
    Afterwards at most ``keep_last`` verified checkpoints remain (see :func:`prune`).
    """
    root = Path(run_dir) / CHECKPOINTS
    final = root / f"step-{step:07d}"
    tmp = None
    if is_main:
        root.mkdir(parents=True, exist_ok=True)
        clean_stale(run_dir)
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
        prune(root, keep_last, final)
    return final


# ------------------------------------------------------------------------------------- load


def load_head(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """The value head's tensors of a checkpoint ({} when it has none, e.g. a token head)."""
    file = Path(checkpoint) / HEAD_FILE
    return load_file(file) if file.is_file() else {}


def load_prm(checkpoint: str | Path, device: str | torch.device | None = None):
    """The ProcessRewardModel a checkpoint's ``config.yaml`` describes, with its weights and head.

    ``checkpoint``: anything :func:`resolve_checkpoint` accepts. Raises FileNotFoundError for a
    damaged checkpoint or one without ``config.yaml``.
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from prm.model.prm import ProcessRewardModel

    checkpoint = resolve_checkpoint(checkpoint)
    if not (checkpoint / "config.yaml").is_file():
        raise CheckpointError(f"{checkpoint}: no config.yaml (not a checkpoint written by train.py)")
    saved = OmegaConf.load(checkpoint / "config.yaml")
    # The saved prompt format (none in checkpoints older than prompt formats: the marker layout).
    backbone = instantiate(saved.backbone, path=str(checkpoint), prompt=saved.get("prompt"))
    prm = ProcessRewardModel(backbone, head=saved.prm.head, last_layer=saved.prm.get("last_layer", "scores"))
    prm.load_head_state_dict(load_head(checkpoint))
    return prm.to(device) if device is not None else prm
