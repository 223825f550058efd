"""Tracking and sweeps: a two-job multirun with offline wandb, read back from the run files; the sweep
comparison of evaluate.py; launcher configs compose. wandb stays offline (never the network)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import compose_config
from wandb.proto import wandb_internal_pb2

from prm.tracking import Tracker

ROOT = Path(__file__).resolve().parent.parent
BLOCK, HEADER = 32768, 7


def wandb_records(path: Path):
    """Records of an offline ``run-*.wandb`` file (a LevelDB-style log of protobuf records)."""
    data, position, pending = path.read_bytes(), HEADER, b""
    assert data[:4] == b":W&B"
    while position + HEADER <= len(data):
        left = BLOCK - position % BLOCK
        if left < HEADER:
            position += left
            continue
        length = int.from_bytes(data[position + 4 : position + 6], "little")
        kind = data[position + 6]
        payload = data[position + HEADER : position + HEADER + length]
        position += HEADER + length
        if kind == 0:
            continue
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def read_run(run_dir: Path) -> dict:
    files = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    run, keys = None, set()
    for record in wandb_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        elif kind == "history":
            keys |= {item.key or item.nested_key[0] for item in record.history.item}
    return {"group": run.run_group, "name": run.display_name, "job_type": run.job_type, "keys": keys}


@pytest.mark.slow
def test_two_job_multirun_logs_two_offline_wandb_runs_in_one_group(tmp_path):
    sweep = tmp_path / "sweep"
    env = {
        **os.environ,
        "PRM_CACHE_DIR": str(tmp_path / "cache"),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
    }
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            "-m",
            "experiment=smoke",
            "logger=wandb",
            "reweight=instance_table",
            "reweight.hypergradient.unroll_steps=2",  # upper steps within the 4 (default: every 10)
            "aggregation=mean,min",
            "seed=3",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 2
    runs = [read_run(job) for job in jobs]
    assert runs[0]["group"] == runs[1]["group"] and runs[0]["group"].startswith("sweep-")
    assert {run["name"] for run in runs} == {
        "experiment=smoke,reweight=instance_table,reweight.hypergradient.unroll_steps=2,aggregation=mean",
        "experiment=smoke,reweight=instance_table,reweight.hypergradient.unroll_steps=2,aggregation=min",
    }
    expected = {
        "prm/loss",
        "prm/raw_loss",
        "prm/mean_weight",
        "prm/grad_norm",
        "prm/lr",
        "reweight/loss",
        "reweight/lr",
        "reweight/grad_norm",
        "throughput/chains_per_s",
        "throughput/tokens_per_s",
        "memory/peak_gb",
        "val/auroc",
        "val/weight/clean",
        "val/weight/noisy",
        "val/weight/easy",
        "val/weight/corrupted_over_clean",
        "weights/instances",
    }
    for run, job in zip(runs, jobs):
        assert run["job_type"] == "train"
        assert expected <= run["keys"], expected - run["keys"]
        rows = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
        assert {"prm/loss", "reweight/loss", "val/weight/noisy"} <= set().union(*rows)
        assert (job / "weight_distributions.png").exists() and (job / "report.md").exists()

    # evaluate.py on the sweep: every job, one comparison table and plot
    result = subprocess.run(
        [sys.executable, "evaluate.py", f"checkpoint={sweep}", f"hydra.run.dir={sweep / 'eval'}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = (sweep / "eval" / "comparison.md").read_text()
    assert "aggregation=mean" in table and "aggregation=min" in table and "random" in table
    assert (sweep / "eval" / "comparison.png").stat().st_size > 10_000
    assert len(json.loads((sweep / "eval" / "comparison.json").read_text())) == 2


def test_tracker_writes_tables_and_histograms_to_jsonl(tmp_path):
    tracker = Tracker(jsonl=True)
    tracker.start(tmp_path, {"a": 1})
    tracker.log({"x": 1.0, "bad": float("nan")}, step=1)
    tracker.log_histogram("w", [3.0, 1.0, 2.0, 4.0], step=1)
    tracker.log_table("t", ["m", "acc"], [["mean", 0.5]])
    tracker.finish()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["x"] == 1.0 and rows[0]["bad"] is None
    assert rows[1]["w/q00"] == 1.0 and rows[1]["w/q50"] == 3.0 and rows[1]["w/q100"] == 4.0
    assert rows[2] == {**rows[2], "table": "t", "columns": ["m", "acc"], "rows": [["mean", 0.5]]}


@pytest.mark.parametrize(
    "launcher, target", [("slurm", "SlurmLauncher"), ("local_parallel", "JoblibLauncher")]
)
def test_launcher_options_compose(launcher, target):
    cfg = compose_config(f"hydra/launcher={launcher}", hydra=True)
    assert target in cfg.hydra.launcher._target_


def test_aggregation_sweep_preset_sweeps_four_aggregations():
    cfg = compose_config("experiment=aggregation_sweep", hydra=True)
    assert cfg.hydra.sweeper.params.aggregation == "mean,min,max,log_mean"
    assert cfg.reweight.name == "instance_table"
