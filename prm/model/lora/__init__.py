"""LoRA adapters (through ``peft``) and gradient checkpointing for any backbone family.

``backbone.lora.enabled=true`` freezes the backbone and injects low-rank adapters (Hu et al. 2021,
"LoRA: Low-Rank Adaptation of Large Language Models": W x + (alpha / r) B A x, with A of shape
``[r, in]`` drawn at random and B of shape ``[out, r]`` zero, so training starts from the base model)
into the modules named by ``backbone.lora.target_modules`` (default ``all-linear``: every linear layer
except the language-model head, vision tower and projector included for multimodal families).

What trains with adapters:

- the adapters' A and B matrices;
- the value head (``prm.head=value``), which sits outside the backbone and is never frozen;
- the step marker's embedding row when the tokenizer had to add the marker (a checkpoint without it):
  that row is new and random, so it is trained and saved with the adapter (peft's
  ``trainable_token_indices``), which also makes a reloaded adapter independent of how it was drawn.

Everything else is frozen (``requires_grad=False``), including the language-model head, so with
``prm.head=token`` the two label rows stay fixed and the adapters move the hidden state at the step
markers instead. The optimiser receives only the trainable parameters, and the lower problem's
``trainable_parameters()`` (what Betty differentiates and what DARTS perturbs) are only those too.

A checkpoint of an adapted backbone (``Backbone.save_pretrained``) holds ``adapter_config.json`` and
``adapter_model.safetensors`` (peft's ``save_pretrained``), the base model's ``config.json`` and the
tokenizer / processor. The adapter config's ``base_model_name_or_path`` is the absolute path of the
base checkpoint, or null for a tiny random base, which is rebuilt from ``tiny_base.json`` (family,
sizes, seed, step marker, dtype: what it was built from, whatever the loading run's config says).
``build_backbone(path=<such a checkpoint>)`` rebuilds the base and loads the adapter: trainable with
``lora.enabled=true``, merged into the weights otherwise.

``python -m prm.model.lora merge <checkpoint> <out>`` (:mod:`prm.model.lora.merging`) writes a merged
``save_pretrained`` model (plus the value head and a config.yaml without adapters), loadable by
``backbone.path=<out>`` and by ``evaluate.py checkpoint=<out>``.

``backbone.gradient_checkpointing=true`` recomputes each decoder (and vision) layer's activations in
the backward pass instead of storing them (transformers' ``activation_checkpointing_enable`` with the
non-reentrant ``torch.utils.checkpoint``); losses and gradients are unchanged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from torch import nn

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TINY_BASE = "tiny_base.json"  # how a tiny random base was built: family, sizes, seed, step marker

__all__ = [
    "ADAPTER_CONFIG",
    "LoraSettings",
    "add_lora",
    "adapter_base",
    "enable_gradient_checkpointing",
    "is_adapter_checkpoint",
    "load_lora",
    "merge",
    "trainable_parameters",
]


@dataclass(frozen=True)
class LoraSettings:
    """``backbone.lora``: ``enabled``; rank ``r`` (>= 1); ``alpha`` (the update is scaled by
    alpha / r); ``dropout`` on the adapter's input, in [0, 1); ``target_modules``: ``all-linear``, a
    list of module-name suffixes (``[q_proj, v_proj]``) or a regular expression over full names."""

    enabled: bool = False
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"

    @classmethod
    def of(cls, value: Any) -> LoraSettings:
        """Settings from None (disabled), a mapping / DictConfig or LoraSettings.
        Raises ValueError naming the key for an unknown key or a value out of range."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            from omegaconf import DictConfig, OmegaConf

            if not isinstance(value, DictConfig):
                raise ValueError(f"backbone.lora must be a mapping, got {type(value).__name__}")
            value = OmegaConf.to_container(value, resolve=True)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"backbone.lora: unknown key(s) {unknown}; expected {sorted(known)}")
        settings = dict(value)
        if not isinstance(settings.get("target_modules", "all-linear"), str):
            settings["target_modules"] = tuple(settings["target_modules"])
        result = cls(**settings)
        if result.r < 1:
            raise ValueError(f"backbone.lora.r must be >= 1, got {result.r}")
        if not 0.0 <= result.dropout < 1.0:
            raise ValueError(f"backbone.lora.dropout must be in [0, 1), got {result.dropout}")
        if not result.target_modules:
            raise ValueError("backbone.lora.target_modules is empty")
        return result


def _peft():
    try:
        import peft
    except ImportError as error:  # pragma: no cover - peft is a default dependency
        raise ImportError("backbone.lora needs peft: pip install peft") from error
    return peft


def is_adapter_checkpoint(path: str | Path | None) -> bool:
    """Does ``path`` hold a peft adapter (``adapter_config.json``)?"""
    return path is not None and (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(path: str | Path) -> str | None:
    """The base checkpoint an adapter was trained on (``base_model_name_or_path`` of its
    ``adapter_config.json``): an absolute path, or None for a tiny random base.
    Raises FileNotFoundError when the adapter names a base folder that does not exist."""
    config = json.loads((Path(path) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path") or None
    if base is not None and not Path(base).exists():
        raise FileNotFoundError(
            f"{Path(path) / ADAPTER_CONFIG}: base_model_name_or_path={base} does not exist; the adapter "
            "needs its base checkpoint (edit that field if the base moved)"
        )
    return base


def add_lora(model: nn.Module, settings: LoraSettings, base_path: str | None, new_token_ids=()) -> Any:
    """Freeze ``model`` and inject fresh adapters into it in place; returns the ``peft.PeftModel``
    around it (used to save the adapter). ``model`` itself stays the transformers model the PRM calls.

    ``base_path``: recorded in the adapter config (absolute; None for a tiny random base).
    ``new_token_ids``: embedding rows the backbone added (the step marker), trained and saved with
    the adapter. Raises ValueError when ``target_modules`` matches no module (peft's message)."""
    peft = _peft()
    target = settings.target_modules
    config = peft.LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(target) if isinstance(target, tuple) else target,
        bias="none",
        trainable_token_indices=list(new_token_ids) or None,
    )
    peft_model = peft.get_peft_model(model, config)
    peft_model.peft_config["default"].base_model_name_or_path = (
        str(Path(base_path).resolve()) if base_path is not None else None
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info(
        "LoRA r=%d alpha=%g on %s: %d of %d backbone parameters train (%.2f%%)",
        settings.r,
        settings.alpha,
        target,
        trainable,
        total,
        100.0 * trainable / max(total, 1),
    )
    return peft_model


def load_lora(model: nn.Module, directory: str | Path, trainable: bool) -> Any:
    """The adapter saved in ``directory`` injected into ``model`` (in place); returns the PeftModel.
    ``trainable``: the adapter trains (everything else stays frozen); else every parameter is frozen."""
    peft = _peft()
    peft_model = peft.PeftModel.from_pretrained(model, str(directory), is_trainable=trainable)
    log.info("loaded the LoRA adapter of %s (%s)", directory, "trainable" if trainable else "frozen")
    return peft_model


def merge(peft_model) -> nn.Module:
    """Fold the adapter into the base weights (W + (alpha / r) B A; trained token rows copied in) and
    return the plain transformers model."""
    return peft_model.merge_and_unload()


def save_adapter(peft_model, directory: str | Path, tiny_base: dict | None = None) -> None:
    """peft's ``save_pretrained`` of the adapter (safetensors) plus the base model's ``config.json``;
    for a tiny random base, ``tiny_base`` (what rebuilds it exactly) as ``tiny_base.json``."""
    card = Path(directory) / "README.md"
    had_card = card.exists()
    peft_model.save_pretrained(str(directory), safe_serialization=True, save_embedding_layers=False)
    if not had_card:  # peft's boilerplate model card says nothing about this checkpoint
        card.unlink(missing_ok=True)
    peft_model.get_base_model().config.save_pretrained(str(directory))
    if tiny_base is not None:
        (Path(directory) / TINY_BASE).write_text(json.dumps(tiny_base, indent=2) + "\n", encoding="utf-8")


def saved_tiny_base(path: str | Path) -> dict:
    """The ``tiny_base.json`` of an adapter checkpoint over a tiny random base: ``family``, ``tiny``
    (sizes), ``seed``, ``step_marker``, ``dtype``. Raises FileNotFoundError when it is missing."""
    file = Path(path) / TINY_BASE
    if not file.is_file():
        raise FileNotFoundError(
            f"{Path(path) / ADAPTER_CONFIG} names no base model and {file} is missing: "
            "cannot rebuild the base"
        )
    return json.loads(file.read_text(encoding="utf-8"))


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Non-reentrant activation checkpointing on every layer of ``model`` that supports it (decoder
    layers, and the vision tower's blocks for multimodal families); active in training mode only.
    Raises ValueError for a model class without gradient checkpointing support."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(model).__name__} does not support gradient checkpointing")
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``module`` that require gradients (all of them without adapters)."""
    return [p for p in module.parameters() if p.requires_grad]
