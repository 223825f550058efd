"""The demo study's bookkeeping (experiments/reweighting_demo/run.py): gap share, per-domain weights,
the table, and the train.py keys it sets. The study itself is an experiment, not a test."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "reweighting_demo" / "run.py"
spec = importlib.util.spec_from_file_location("reweighting_demo_run", SCRIPT)
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)


def result(accuracy: float, weights: dict | None = None) -> dict:
    return {
        "best_of_n_mean": accuracy,
        "seconds": 100.0,
        "baselines": {"random": 0.5},
        **({"weights": weights} if weights else {}),
    }


def test_gap_share():
    assert study.gap_share(70.0, 60.0, 80.0) == pytest.approx(0.5)
    assert study.gap_share(60.0, 60.0, 80.0) == 0.0
    assert study.gap_share(55.0, 60.0, 80.0) == pytest.approx(-0.25)
    assert study.gap_share(70.0, 60.0, 60.0) is None  # no gap: nothing to win back


def test_summary_and_table():
    table_weights = {
        "domain_weights": {"clean": 1.2, "noisy": 0.3, "easy": 1.5},
        "per_domain": {"clean": {"mean": 9.0}, "noisy": {"mean": 9.0}, "easy": {"mean": 9.0}},
        "corruption": {"ratio": 0.25, "auroc_clean_vs_corrupted": 0.9},
    }
    instance = {"per_domain": {"clean": {"mean": 1.0}, "noisy": {"mean": 0.5}, "easy": {"mean": 0.75}}}
    results = {
        "none": [result(0.60), result(0.62)],
        "domain_table": [result(0.66, table_weights), result(0.68, table_weights)],
        "instance_table": [result(0.61, instance)],
        "oracle": [result(0.70), result(0.72)],
    }
    domains = ["clean", "noisy", "easy"]
    summary = study.summarise(results, domains)
    assert summary["domain_table"]["gap_share"] == pytest.approx(0.6)  # (67 - 61) / (71 - 61)
    assert summary["oracle"]["gap_share"] == pytest.approx(1.0) and summary["none"]["gap_share"] == 0.0
    # the domain table's own weights, not its chains' means; instance strategies: their chains' means
    assert summary["domain_table"]["domains"]["noisy"] == [0.3, 0.3]
    assert summary["instance_table"]["domains"] == {"clean": [1.0], "noisy": [0.5], "easy": [0.75]}
    assert summary["none"]["domains"]["clean"] == [] and summary["none"]["ratio"] == []
    text = study.table(summary, domains, {"random": 0.5})
    row = next(line for line in text.splitlines() if line.startswith("| domain_table"))
    assert (
        row == "| domain_table | 67.00 ± 1.00 | +6.00 | 60% | 1.20 ± 0.00 | 0.30 ± 0.00 | 1.50 ± 0.00 | "
        "0.250 ± 0.000 | 0.900 ± 0.000 | 100 ± 0 | 2 |"
    )
    assert "| none | 61.00 ± 1.00 | +0.00 | 0% | - | - | - | - | - | 100 ± 0 | 2 |" in text
    assert "random 50.00%" in text


def test_override_names_follow_the_checkout():
    keys = study.override_names()
    upper = OmegaConf.load(study.ROOT / "conf" / "reweight" / "base" / "bilevel.yaml").upper
    assert keys["upper_lr"] == (
        "reweight.upper.optimizer.lr" if "optimizer" in upper else "reweight.upper.lr"
    )
    assert set(study.UPPER_LR) == {"domain_table", "instance_table", "instance_net", "domain_instance"}
    groups = OmegaConf.load(study.ROOT / "conf" / "reweight" / "domain_instance.yaml").upper.optimizers
    assert keys["instance_lr"] == "reweight.upper.optimizers.instance.lr" and "lr" in groups.instance


def test_oracle_train_files_drop_corrupted_chains_or_their_domains(tmp_path):
    records = [
        {"id": "c0", "domain": "clean", "meta": {"corrupted": False}},
        {"id": "n0", "domain": "noisy", "meta": {"corrupted": True}},
        {"id": "n1", "domain": "noisy", "meta": {"corrupted": False}},
        {"id": "e0", "domain": "easy"},
    ]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in records))
    data_cfg = OmegaConf.create(
        {"_target_": "prm.data.sources.DataSources", "train": str(train), "meta": None, "test": None}
    )

    def kept(path):
        return [json.loads(line)["id"] for line in path.read_text().splitlines()]

    assert kept(study.oracle_train_file(tmp_path, data_cfg, "chains")) == ["c0", "n1", "e0"]
    assert kept(study.oracle_train_file(tmp_path, data_cfg, "domains")) == ["c0", "e0"]


def test_domain_weight_path_and_its_run_mean(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    rows = [
        {"step": 1, "reweight/weight/noisy": 1.0, "reweight/weight/clean": 1.0},
        {"step": 2, "prm/loss": 0.5},
        {"step": 3, "reweight/weight/noisy": 0.5, "reweight/weight/clean": 1.5},
    ]
    metrics.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert study.domain_weight_path(metrics) == {"noisy": [1.0, 0.5], "clean": [1.0, 1.5]}
    assert study.domain_weight_path(tmp_path / "absent.jsonl") == {}
    row = {"domains": {"noisy": [0.25, 0.75]}, "domains_run_mean": {"noisy": [0.5, 1.0]}}
    assert study.domain_cell(row, "noisy") == "0.50 ± 0.25 (run mean 0.75 ± 0.25)"
    assert study.domain_cell({"domains": {"noisy": [0.25]}}, "noisy") == "0.25"
