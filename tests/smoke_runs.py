"""Helpers of the tests that train tiny runs: a checkpoint's weights and the per-batch hypergradient
overrides (the ``experiment=smoke`` config itself: ``conftest.smoke_config``)."""

from __future__ import annotations

from safetensors.torch import load_file


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
