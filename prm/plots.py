"""PNG plots and the Markdown report beside them, so results read without wandb.

Training with reweighting writes ``weight_trajectories.png`` (mean weight per domain over the
validations, and the corrupted/clean ratio where known) and ``weight_distributions.png`` (instance
weights per domain, corrupted and clean apart where known); evaluation writes
``accuracy_vs_n.png`` (best-of-N accuracy against N per aggregation, baselines dashed). Each run
directory gets a ``report.md`` embedding its plots.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402

BASELINE_STYLE = {"random": ":", "first": (0, (1, 4)), "majority_vote": "--", "pass_at_n": "-."}
BASELINE_COLOUR = {"random": "black", "first": "grey", "majority_vote": "black", "pass_at_n": "black"}


def plot_weight_trajectories(metrics: list[dict], out: Path) -> Path | None:
    rows = [row for row in metrics if any(key.startswith("val/weight/") for key in row)]
    if not rows:
        return None
    keys = sorted(
        {
            k
            for row in rows
            for k in row
            if k.startswith("val/weight/") and k != "val/weight/corrupted_over_clean"
        }
    )
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in keys:
        points = [(row["step"], row[key]) for row in rows if row.get(key) is not None]
        ax.plot(*zip(*points), marker="o", label=key.removeprefix("val/weight/"))
    ratio = [
        (row["step"], row["val/weight/corrupted_over_clean"])
        for row in rows
        if row.get("val/weight/corrupted_over_clean") is not None
    ]
    if ratio:
        ax.plot(*zip(*ratio), color="black", linestyle="--", label="corrupted / clean")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set(xlabel="training step", ylabel="mean weight", title="Learned weights per domain")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_weight_distributions(
    weights: Sequence[float], domains: Sequence[str], corrupted: Sequence[bool | None], out: Path
) -> Path:
    names = sorted(set(domains))
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.4), sharex=True, squeeze=False)
    low, high = min(weights), max(weights)
    bins = [low + (high - low) * i / 30 for i in range(31)] if high > low else 10
    for ax, name in zip(axes[0], names):
        groups = {"clean": [], "corrupted": [], "all": []}
        for w, d, c in zip(weights, domains, corrupted):
            if d == name:
                groups["all" if c is None else ("corrupted" if c else "clean")].append(w)
        for label, values in groups.items():
            if values:
                ax.hist(values, bins=bins, alpha=0.6, label=f"{label} ({len(values)})")
        ax.set(title=name, xlabel="weight")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("chains")
    fig.suptitle("Instance weights per domain")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_accuracy_vs_n(curve: dict, out: Path, highlight: str = "mean") -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    n = curve["n"]
    for name, values in curve["aggregations"].items():
        ax.plot(
            n,
            [100 * v for v in values],
            linewidth=2.5 if name == highlight else 1.2,
            label=name + (" (headline)" if name == highlight else ""),
        )
    if highlight in curve.get("weighted_vote", {}):
        ax.plot(
            n,
            [100 * v for v in curve["weighted_vote"][highlight]],
            linewidth=2.0,
            linestyle="-.",
            color="black",
            label=f"weighted vote ({highlight})",
        )
    for name, values in curve["baselines"].items():
        ax.plot(
            n,
            [100 * v for v in values],
            color=BASELINE_COLOUR.get(name, "black"),
            linestyle=BASELINE_STYLE.get(name, ":"),
            label=name,
        )
    ax.set(xlabel="candidates N", ylabel="best-of-N accuracy (%)", title="Best-of-N accuracy against N")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def varying_parts(labels: Sequence[str]) -> list[str]:
    """Each label reduced to the space-separated overrides that differ between the labels."""
    parts = [label.split() for label in labels]
    common = set.intersection(*(set(p) for p in parts)) if parts else set()
    return [" ".join(x for x in p if x not in common) or "(same)" for p in parts]


def plot_comparison(
    labels: Sequence[str], values: Sequence[float], baselines: dict[str, float], out: Path, title: str
) -> Path:
    """Horizontal bars, one per job, labelled by what differs between the jobs; baselines as lines."""
    names = varying_parts(labels)
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.45 * len(names)))
    positions = range(len(names))
    ax.barh(positions, [100 * v for v in values], color="tab:blue", height=0.6)
    for y, v in zip(positions, values):
        ax.text(100 * v + 0.5, y, f"{100 * v:.1f}", va="center", fontsize=8)
    for name, value in baselines.items():
        ax.axvline(
            100 * value,
            color="black",
            linestyle=BASELINE_STYLE.get(name, ":"),
            label=f"{name} {100 * value:.1f}",
        )
    ax.set_yticks(list(positions), names, fontsize=9)
    ax.invert_yaxis()
    ax.set(xlabel="best-of-N accuracy (%)", xlim=(0, 100), title=title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_report(directory: Path, title: str, sections: list[tuple[str, str]], images: list[Path]) -> Path:
    """``report.md``: the given Markdown sections, then every image embedded by relative path."""
    lines = [f"# {title}", ""]
    for heading, body in sections:
        lines += [f"## {heading}", "", body.strip(), ""]
    for image in images:
        lines += [f"![{image.stem}]({image.relative_to(directory)})", ""]
    path = directory / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
