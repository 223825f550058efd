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


# The per-batch hypergradient for smoke-sized bi-level runs: an upper step after every lower step, on
# the lower batch, with a meta batch the size of the lower one (the instance strategies' defaults wait
# 10 lower steps and probe 256 chains: no upper step at all in a 4-step smoke run).
PER_BATCH = [
    "reweight.hypergradient.unroll_steps=1",
    "reweight.hypergradient.probe_chains=0",
    "reweight.upper.batch_size=${data.batch_size}",
]
