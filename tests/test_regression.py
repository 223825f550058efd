"""Pinned figures of the smoke run: a change that moves the training numbers must say so here.

Like an expected-loss test: ``experiment=smoke`` (tiny random Qwen2-VL, 48 demo training chains,
16 meta chains, 4 optimiser steps of batch 4, seed 0) trained through ``train.train`` on CPU, plain
and with ``reweight=instance_table``. The values were obtained by running exactly these two configs
(torch 2.13 CPU, transformers 5.23) and copying ``metrics.jsonl``. If a change is meant to move them
(new data order, new defaults), rerun the test, check the new figures are sane, and pin them again
with a note in the commit message.

Float32 training rounds differently on each CPU (kernels, thread count), so the figures are checked
at tolerances derived from a measurement: both configs run under six combinations of ATen's AVX2 and
default kernels (``ATEN_CPU_CAPABILITY``), MKL's AUTO and COMPATIBLE paths (``MKL_CBWR``) and 1 and 2
threads, on an AVX2 EPYC:

- losses and gradient norms moved by at most 1.03e-6 relative (``reweight/grad_norm``, step 1);
  ``RTOL`` = 1e-4 leaves 100x for other CPUs, while a real change (data order, a default, a
  weighting bug) moves them by 1e-3 or more;
- the mean learned weight per domain (1 + 7.0e-4 and 1 - 4.7e-4 after 4 steps) moved by at most
  1.1e-8; ``WEIGHT_ATOL`` = 1e-6 leaves 90x and still sees a 0.2% error in how far they moved;
- AUROC and accuracy are counts, equal everywhere as long as no score crosses another or 0.5: the
  validation scores moved by at most 3e-7, and the test asserts that each positive/negative pair
  and each score's distance to 0.5 stays over ``MARGIN`` = 1e-5 (measured 1.6e-5 and 2.2e-2), 30x
  the movement, before it compares them exactly.
"""

import json
from pathlib import Path

import pytest
from conftest import smoke_config

RTOL = 1e-4  # losses, MSE, gradient norms (relative)
WEIGHT_ATOL = 1e-6  # learned weights (absolute)
COUNTS = ("val/auroc", "val/accuracy")  # exact, once MARGIN holds
MARGIN = 1e-5  # validation scores: pair gaps and distance to 0.5

PLAIN = {
    1: {"prm/loss": 0.7082380652427673},
    2: {
        "prm/loss": 0.7802561521530151,
        "val/loss": 0.29933872652123356,
        "val/auroc": 0.8333333333333334,
        "val/accuracy": 0.375,
    },
    3: {"prm/loss": 0.8308137655258179},
    4: {
        "prm/loss": 0.7160440683364868,
        "val/loss": 0.2562009217022268,
        "val/auroc": 0.8333333333333334,
        "val/accuracy": 0.375,
    },
}
INSTANCE_TABLE = {
    1: {
        "prm/loss": 0.7082380652427673,
        "reweight/loss": 0.296653687953949,
        "reweight/grad_norm": 1.8509114980697632,
    },
    2: {
        "prm/loss": 0.7802560925483704,
        "reweight/loss": 0.27193334698677063,
        "reweight/grad_norm": 1.5504416227340698,
        "val/loss": 0.2993387361615598,
        "val/auroc": 0.8333333333333334,
    },
    3: {
        "prm/loss": 0.8308137655258179,
        "reweight/loss": 0.24478185176849365,
        "reweight/grad_norm": 0.9680033326148987,
    },
    4: {
        "prm/loss": 0.7160440683364868,
        "reweight/loss": 0.2816964089870453,
        "reweight/grad_norm": 6.053337574005127,
        "val/loss": 0.25620092225134944,
        "val/auroc": 0.8333333333333334,
        "val/weight/easy": 1.0007008016109467,
        "val/weight/noisy": 0.9995301924645901,
    },
}


def logged(run_dir: Path) -> dict[int, dict[str, float]]:
    """metrics.jsonl merged by step."""
    rows: dict[int, dict[str, float]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "step" in row:
            rows.setdefault(int(row["step"]), {}).update(row)
    return rows


def assert_figure(key: str, got: float, pinned: float, where: str) -> None:
    if key in COUNTS:
        assert got == pytest.approx(pinned, rel=1e-12), where  # a count ratio: exact up to its division
    elif key.startswith("val/weight/"):
        assert got == pytest.approx(pinned, abs=WEIGHT_ATOL), where
    else:
        assert got == pytest.approx(pinned, rel=RTOL), where


# The per-batch hypergradient the instance table's figures were pinned with (the strategy's defaults
# before probe_chains: one upper step per lower step, on the lower batch, meta batch 4, lr 5e-3).
PER_BATCH = [
    "reweight.hypergradient.unroll_steps=1",
    "reweight.hypergradient.probe_chains=0",
    "reweight.upper.batch_size=4",
    "reweight.upper.optimizer.lr=5e-3",
]


@pytest.mark.slow
@pytest.mark.numerics
@pytest.mark.parametrize(
    "overrides,expected",
    [([], PLAIN), (["reweight=instance_table", *PER_BATCH], INSTANCE_TABLE)],
    ids=["plain", "instance_table"],
)
def test_smoke_figures_reproduce(overrides, expected, tmp_path, monkeypatch):
    import prm.training.validation as validation
    from train import train

    validations = []  # (chain scores, labels) of every validation

    def recording(scores, labels, probability=True):
        validations.append(([float(v) for v in scores], list(labels)))
        return chain_metrics(scores, labels, probability)

    chain_metrics = validation.chain_metrics
    monkeypatch.setattr(validation, "chain_metrics", recording)
    monkeypatch.setenv("PRM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = smoke_config(*overrides)
    train(cfg, run_dir=tmp_path / "run")
    rows = logged(tmp_path / "run")
    assert len(validations) == 2  # steps 2 and 4
    for scores, labels in validations:  # no score near another of the other class, or near 0.5
        positive = [s for s, y in zip(scores, labels, strict=True) if y == 1]
        negative = [s for s, y in zip(scores, labels, strict=True) if y == 0]
        assert min(abs(p - n) for p in positive for n in negative) > MARGIN
        assert min(abs(s - 0.5) for s in scores) > MARGIN
    for step, figures in expected.items():
        assert step in rows, f"no metrics logged at step {step}"
        for key, value in figures.items():
            assert_figure(key, rows[step][key], value, f"step {step} {key}")
