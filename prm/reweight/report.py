"""What a reweighting run learned, as tables a person can read: weights per domain and per instance.

``weight_report`` returns a JSON-ready dict: the domain weights (domain table), or for instance-level
modules the distribution of instance weights per domain, the lowest and highest weighted instances
with their ids, and, where the chains say which were corrupted (the demo benchmark), the mean weight
of corrupted and clean chains, their ratio and the AUROC of weight as a detector of clean chains.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader

from prm.data.dataset import ChainDataset
from prm.device import to_device
from prm.evaluation.best_of_n import auroc
from prm.evaluation.scoring import eval_mode


@torch.no_grad()
def instance_weights(
    reweighter, prm=None, chains=None, collator=None, batch_size: int = 16, device="cpu"
) -> torch.Tensor:
    """Weight of every training instance (before per-batch normalisation), in dataset order.

    Tables answer directly; a net is run over the training chains with the PRM's current scores.
    """
    if not reweighter.needs_data_pass:
        return reweighter.instance_weights().detach().float().cpu()
    if prm is None or chains is None or collator is None:
        raise ValueError("an instance net needs the PRM, the chains and a collator to weigh instances")
    dataset = ChainDataset(chains, reweighter.training_set.domains)
    weights = []
    with eval_mode(prm):
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collator):
            batch = to_device(batch, device)
            scores = prm(batch)
            losses, _ = prm.losses(scores, batch["step_labels"])
            weights.append(reweighter.raw_weights(batch, scores, losses).float().cpu())
    return torch.cat(weights)


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    quantile = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {
        "count": len(values),
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
        "min": ordered[0],
        "p10": quantile(0.1),
        "median": quantile(0.5),
        "p90": quantile(0.9),
        "max": ordered[-1],
    }


def weight_report(reweighter, weights: torch.Tensor, chains: Sequence, extremes: int = 10) -> dict:
    """JSON-ready summary of the learned weights (see the module docstring)."""
    training_set = reweighter.training_set
    values = weights.tolist()
    report: dict = {"module": type(reweighter).__name__, "instances": len(values)}
    domains = reweighter.domain_weights()
    if domains is not None:
        report["domain_weights"] = domains
    per_domain: dict[str, list[float]] = {name: [] for name in training_set.domains}
    for value, domain in zip(values, training_set.instance_domain):
        per_domain[training_set.domains[domain]].append(value)
    report["per_domain"] = {name: _summary(v) for name, v in per_domain.items() if v}
    order = sorted(range(len(values)), key=lambda i: values[i])

    def describe(i: int) -> dict:
        return {
            "id": training_set.ids[i],
            "domain": chains[i].domain,
            "weight": values[i],
            **({"corrupted": chains[i].meta["corrupted"]} if "corrupted" in chains[i].meta else {}),
        }

    report["lowest"] = [describe(i) for i in order[:extremes]]
    report["highest"] = [describe(i) for i in reversed(order[-extremes:])]
    flags = [chain.meta.get("corrupted") for chain in chains]
    if all(isinstance(flag, bool) for flag in flags) and any(flags) and not all(flags):
        corrupted = [v for v, flag in zip(values, flags) if flag]
        clean = [v for v, flag in zip(values, flags) if not flag]
        report["corruption"] = {
            "corrupted_mean": statistics.fmean(corrupted),
            "clean_mean": statistics.fmean(clean),
            "ratio": statistics.fmean(corrupted) / statistics.fmean(clean)
            if statistics.fmean(clean)
            else float("nan"),
            "auroc_clean_vs_corrupted": auroc(values, [0 if flag else 1 for flag in flags]),
            "corrupted": len(corrupted),
            "clean": len(clean),
        }
    return report


def weights_json(reweighter, weights: torch.Tensor, chains: Sequence, report: dict | None = None) -> str:
    """Report (computed here unless given) plus every instance's weight by id."""
    report = dict(report) if report is not None else weight_report(reweighter, weights, chains)
    report["weights"] = dict(zip(reweighter.training_set.ids, weights.tolist()))
    return json.dumps(report, indent=1) + "\n"


def weights_markdown(report: dict) -> str:
    lines = [f"# Learned weights ({report['module']}, {report['instances']} training chains)", ""]
    if "domain_weights" in report:
        lines += ["| domain | weight |", "|---|---:|"]
        lines += [f"| {name} | {weight:.4f} |" for name, weight in report["domain_weights"].items()]
        lines.append("")
    lines += [
        "Instance weights per domain:",
        "",
        "| domain | chains | mean | std | min | p10 | median | p90 | max |",
        "|---|---:|" + "---:|" * 7,
    ]
    for name, s in report["per_domain"].items():
        lines.append(
            f"| {name} | {s['count']} | {s['mean']:.4f} | {s['std']:.4f} | {s['min']:.4f} | {s['p10']:.4f} "
            f"| {s['median']:.4f} | {s['p90']:.4f} | {s['max']:.4f} |"
        )
    if "corruption" in report:
        c = report["corruption"]
        lines += [
            "",
            f"Corrupted chains (known in the demo): mean weight {c['corrupted_mean']:.4f} "
            f"over {c['corrupted']}, "
            f"clean {c['clean_mean']:.4f} over {c['clean']}; ratio {c['ratio']:.3f}; "
            f"AUROC of weight for clean vs corrupted {c['auroc_clean_vs_corrupted']:.3f}.",
        ]
    for title, key in (("Lowest weighted", "lowest"), ("Highest weighted", "highest")):
        lines += ["", f"{title}:", "", "| id | domain | weight | corrupted |", "|---|---|---:|---|"]
        lines += [
            f"| {r['id']} | {r['domain']} | {r['weight']:.4f} | {r.get('corrupted', '')} |"
            for r in report[key]
        ]
    return "\n".join(lines) + "\n"
