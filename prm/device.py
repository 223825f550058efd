"""Device placement and precision: shared by training (Betty problems) and evaluation."""

from __future__ import annotations

import contextlib
from typing import Any

import torch


def pick_device(name: str) -> str:
    """``auto`` means CUDA when available, else CPU; any other name is used as given."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def to_device(batch: Any, device) -> Any:
    """Move the tensors of a (nested) batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(value, device) for value in batch)
    return batch


def autocast(device, precision: str):
    """A real bf16 autocast on the device's own type (Betty's switch is CUDA-only), or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    return contextlib.nullcontext()
