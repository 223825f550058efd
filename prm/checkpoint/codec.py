"""The training state of a checkpoint without pickle: tensors to safetensors, the rest to JSON.

Tensors go to ``training_state.safetensors`` under their path in the state
(``optimizer/state/0/exp_avg``), everything else (numbers, strings, tuples, dicts with integer keys,
numpy arrays of the RNG state) to ``training_state.json`` with small type markers, so loading runs no
code from the file. A JSON object with exactly one marker key (:data:`MARKERS`) is a marker.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from prm.checkpoint.layout import FORMAT, LEGACY_STATE, STATE_JSON, STATE_TENSORS, CheckpointError

# Markers of the JSON encoding (a JSON object with exactly one of these keys is a marker).
TENSOR, TUPLE, ITEMS, NDARRAY, NPSCALAR = (
    "__tensor__",
    "__tuple__",
    "__items__",
    "__ndarray__",
    "__npscalar__",
)
MARKERS = frozenset({TENSOR, TUPLE, ITEMS, NDARRAY, NPSCALAR})


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


# ---------------------------------------------------------------------------- encode, decode


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


# ------------------------------------------------------------------------------------- files


def write_training_state(folder: Path, state: dict[str, Any]) -> None:
    """``training_state.safetensors`` (every tensor, named by its path) + ``training_state.json``.
    Raises TypeError naming the path of a value :func:`encode_state` refuses."""
    structure, tensors = encode_state(state)
    save_file(tensors, folder / STATE_TENSORS)
    text = json.dumps({"format": FORMAT, "state": structure}, allow_nan=True)
    (folder / STATE_JSON).write_text(text, encoding="utf-8")


def load_training_state(checkpoint: str | Path) -> dict[str, Any]:
    """The training state saved with a checkpoint: the dict given to
    :func:`prm.checkpoint.store.save_checkpoint` plus ``step`` (int) and ``rng`` (for
    :func:`set_rng_state`). Tensors come back on the CPU. Reading changes nothing else: which
    checkpoints pruning keeps is the caller's (``protected`` of :func:`prm.checkpoint.store.prune`).

    Reads only safetensors and JSON. Raises CheckpointError (a FileNotFoundError) when the folder has
    no such state, and says so when it holds an old pickled ``training_state.pt`` instead (that file is
    never opened); ValueError for a JSON file that does not parse, of another format, or naming a
    tensor the safetensors file lacks.
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
        return decode_state(saved["state"], tensors)
    except KeyError as error:
        raise ValueError(
            f"{folder / STATE_TENSORS}: tensor {error} named in {STATE_JSON} is missing"
        ) from None
