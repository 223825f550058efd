"""Building the process reward model: one function for training, evaluation and checkpoint loading.

:func:`build_prm` instantiates the ``backbone`` config node (its ``_target_``, e.g.
:func:`prm.model.backbones.build_backbone`), wraps it with the step head in a
:class:`prm.model.prm.ProcessRewardModel` and, given a checkpoint folder, takes the weights and the
value head from it. :func:`load_prm` rebuilds the model a checkpoint's own ``config.yaml`` describes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from prm.checkpoint import CheckpointError, VerifiedFolders, load_head, resolve_checkpoint
from prm.model.prm import ProcessRewardModel


def build_prm(
    backbone: Mapping[str, Any],
    head: str = "token",
    last_layer: str = "scores",
    prompt: Mapping[str, Any] | None = None,
    weights: str | Path | None = None,
) -> ProcessRewardModel:
    """The PRM of a ``backbone`` config node (instantiated with ``prompt``, the ``prompt`` node; None:
    the marker format) and a ``head`` (``token`` or ``value``) with ``last_layer`` (``scores`` or
    ``full``), see :class:`~prm.model.prm.ProcessRewardModel`.

    ``weights``: a checkpoint or ``save_pretrained`` folder (already resolved, see
    :func:`prm.checkpoint.resolve_checkpoint`) whose weights replace ``backbone.path``'s and whose
    value head (``head.safetensors``, if any) is loaded; None keeps what the backbone node loads.
    The model stays where the backbone put it (the caller moves it to a device).

    Raises:
        ValueError: an unknown head or last-layer mode, or what the backbone's builder refuses.
    """
    path = {"path": str(weights)} if weights is not None else {}
    model = ProcessRewardModel(instantiate(backbone, prompt=prompt, **path), head=head, last_layer=last_layer)
    if weights is not None:
        model.load_head_state_dict(load_head(weights))
    return model


def load_prm(
    checkpoint: str | Path,
    device: str | torch.device | None = None,
    verified: VerifiedFolders | None = None,
) -> ProcessRewardModel:
    """The ProcessRewardModel a checkpoint's ``config.yaml`` describes, with its weights and head, on
    ``device`` (None: where it was built).

    ``checkpoint``: anything :func:`prm.checkpoint.resolve_checkpoint` accepts (``verified``: the
    caller's record of folders already hashed). Raises CheckpointError (a FileNotFoundError) for a
    damaged checkpoint or one without ``config.yaml``.
    """
    checkpoint = resolve_checkpoint(checkpoint, verified)
    if not (checkpoint / "config.yaml").is_file():
        raise CheckpointError(f"{checkpoint}: no config.yaml (not a checkpoint written by train.py)")
    saved = OmegaConf.load(checkpoint / "config.yaml")
    # The saved prompt format (none in checkpoints older than prompt formats: the marker layout).
    prm = build_prm(
        saved.backbone,
        head=saved.prm.head,
        last_layer=saved.prm.get("last_layer", "scores"),
        prompt=saved.get("prompt"),
        weights=checkpoint,
    )
    return prm.to(device) if device is not None else prm
