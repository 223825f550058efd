"""Helpers of the tests that train tiny runs: the ``experiment=smoke`` config and a checkpoint's weights."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent


def config(*overrides):
    """The training config ``conf/config.yaml`` with ``experiment=smoke`` and ``overrides``."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=["experiment=smoke", *overrides])


def weights(checkpoint):
    """A checkpoint folder's ``model.safetensors`` as a dict of tensors."""
    return load_file(checkpoint / "model.safetensors")
