"""Validation on the meta set during training, and the learned-weight report at the end of a run."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from prm import plots
from prm.aggregation import pad_ragged
from prm.evaluation.best_of_n import chain_metrics
from prm.evaluation.scoring import score_chains
from prm.reweight.report import instance_weights, weight_report, weights_json, weights_markdown
from prm.tracking import read_metrics
from prm.training.run import TrainingRun

log = logging.getLogger("train")


def weights_now(run: TrainingRun) -> torch.Tensor:
    """Every training chain's current weight, shape (train chains,)."""
    data = run.data
    return instance_weights(
        run.reweighter, run.prm, data.train_chains, run.collator, data.config.eval_batch_size, run.device
    )


def validate(run: TrainingRun, step: int) -> dict[str, float]:
    """Chain-level AUROC (and MSE/accuracy for probabilities) of the aggregated PRM scores on the meta
    set; with a table reweighter, the mean weight per domain (and corrupted/clean ratio) too."""
    data, aggregation = run.data, run.aggregation
    scores = score_chains(
        run.prm,
        data.meta_chains,
        data.config.eval_batch_size,
        data.config.max_length,
        run.device,
        run.cfg.train.precision,
        packing=data.config.packing,
    )
    labels = [chain.label for chain in data.meta_chains]
    result = chain_metrics(aggregation(*pad_ragged(scores)), labels, probability=aggregation.is_probability)
    metrics = {"auroc": result.auroc, f"auroc_{aggregation.name}": result.auroc}
    if result.mse is not None:
        metrics.update(loss=result.mse, accuracy=result.accuracy)
    if run.reweighter is not None and not run.reweighter.needs_data_pass:  # tables: cheap to read
        current = weights_now(run)
        if run.world.is_main:
            run.tracker.log_histogram("weights/instances", current.tolist(), step)
        report = weight_report(run.reweighter, current, data.train_chains, extremes=0)
        metrics.update({f"weight/{name}": s["mean"] for name, s in report["per_domain"].items()})
        if "corruption" in report:
            metrics["weight/corrupted_over_clean"] = report["corruption"]["ratio"]
    return metrics


def write_weight_report(run_dir: Path, reweighter, weights: torch.Tensor, chains) -> None:
    """weights.json (every instance's weight by id), weights.md (tables), plots and report.md."""
    report = weight_report(reweighter, weights, chains)
    (run_dir / "weights.json").write_text(weights_json(reweighter, weights, chains, report), encoding="utf-8")
    markdown = weights_markdown(report)
    (run_dir / "weights.md").write_text(markdown, encoding="utf-8")
    images = [
        plots.plot_weight_distributions(
            weights.tolist(),
            [c.domain for c in chains],
            [c.meta.get("corrupted") for c in chains],
            run_dir / "weight_distributions.png",
        )
    ]
    trajectory = plots.plot_weight_trajectories(
        read_metrics(run_dir / "metrics.jsonl"), run_dir / "weight_trajectories.png"
    )
    images += [trajectory] if trajectory else []
    plots.write_report(
        run_dir, f"Training run {run_dir.name}", [("Learned weights", markdown.split("\n", 2)[2])], images
    )
    log.info("learned weights: %s\n%s", run_dir / "weights.md", markdown.split("\n\nLowest")[0])
