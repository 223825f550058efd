"""Which meta loss points the hypergradient at the bad training data? Measured before any bi-level run.

    python experiments/meta_loss_signal.py <run dir or checkpoint> [--aggregations min mean prod ...]
                                           [--targets + both steps] [--out signal.json]

The DARTS hypergradient of instance i's weight is -lr * g_i . G, where g_i is the gradient of chain i's
training loss and G the gradient of the meta loss, both at the current PRM
(docs/methods.md#bi-level-objective): a chain gains weight when its own gradient points where the
meta loss wants to go. So at a checkpoint one can ask, for every meta loss (aggregation x target),
how well the sign and size of g_i . G tell clean chains from corrupted ones: this script computes G
on the whole meta set for each candidate meta loss, then g_i . G for every training chain in one
pass, and prints per meta loss

- AUROC of g_i . G as a detector of clean chains (1: every clean chain above every corrupted one;
  below 0.5: the meta loss asks for the corruption), overall and per kind of corruption;
- the share of clean chains a step would push up, and of corrupted chains it would push down.

The training chains must say which are corrupted (``meta["corrupted"]``, as the demo benchmark's do).
A step-level meta loss from the meta chains' known first errors is shown as a reference: what a meta
set with step labels would give.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hydra.utils import instantiate  # noqa: E402

from prm.aggregation import PROBABILITY_VALUED, Aggregation  # noqa: E402
from prm.bilevel.meta_loss import TARGETS, meta_losses, step_meta_losses  # noqa: E402
from prm.checkpoint import resolve_checkpoint  # noqa: E402
from prm.data.dataset import ChainDataset, PRMCollator  # noqa: E402
from prm.evaluation.best_of_n import auroc  # noqa: E402
from prm.model.build import load_prm  # noqa: E402

STEP_LEVEL = "step labels (reference)"


def step_level_loss(scores, first_errors: torch.Tensor) -> torch.Tensor:
    """Mean squared error of step probabilities against 1 before a chain's first error and 0 from it on."""
    position = torch.arange(scores.probs.shape[1], device=first_errors.device)[None]
    labels = ((first_errors[:, None] < 0) | (position < first_errors[:, None])).float()
    mask = scores.mask.float()
    return (((scores.probs.float() - labels) ** 2) * mask).sum() / mask.sum()


def flat_gradient(parameters: list[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat(
        [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel()) for p in parameters]
    )


def meta_gradients(prm, meta_chains, collator, losses: dict, batch_size: int) -> dict[str, torch.Tensor]:
    """The gradient of every candidate meta loss (a mean over the whole meta set) at the PRM's parameters."""
    parameters = [p for p in prm.parameters() if p.requires_grad]
    dataset = ChainDataset(meta_chains)
    gradients = {}
    for name, loss_of in losses.items():
        prm.zero_grad()
        for start in range(0, len(meta_chains), batch_size):
            indices = range(start, min(len(meta_chains), start + batch_size))
            batch = collator([dataset[i] for i in indices])
            first_errors = torch.tensor(
                [
                    meta_chains[i].first_error if meta_chains[i].first_error is not None else -1
                    for i in indices
                ]
            )
            (loss_of(prm(batch), batch, first_errors) * len(indices) / len(meta_chains)).backward()
        gradients[name] = flat_gradient(parameters)
    return gradients


def alignments(prm, train_chains, collator, gradients: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """g_i . G for every training chain and every meta gradient G, one backward per chain."""
    parameters = [p for p in prm.parameters() if p.requires_grad]
    domains = sorted({chain.domain for chain in train_chains})
    dataset = ChainDataset(train_chains, domains)
    stacked = torch.stack(list(gradients.values()), dim=1)
    rows = []
    for index in range(len(train_chains)):
        prm.zero_grad()
        batch = collator([dataset[index]])
        losses, _ = prm.losses(prm(batch), batch["step_labels"])
        losses.sum().backward()
        rows.append(flat_gradient(parameters) @ stacked)
        if (index + 1) % 200 == 0:
            print(f"  {index + 1}/{len(train_chains)} training chains", flush=True)
    table = torch.stack(rows)
    return {name: table[:, column].tolist() for column, name in enumerate(gradients)}


def summarise(values: list[float], chains) -> dict[str, float]:
    clean = [0 if chain.meta.get("corrupted") else 1 for chain in chains]
    result = {
        "auroc": auroc(values, clean),
        "clean_pushed_up": sum(v > 0 for v, c in zip(values, clean) if c) / max(1, sum(clean)),
        "corrupted_pushed_down": (
            sum(v < 0 for v, c in zip(values, clean) if not c) / max(1, len(clean) - sum(clean))
        ),
    }
    for kind in sorted({chain.meta.get("corruption") for chain in chains} - {None}):
        keep = [i for i, chain in enumerate(chains) if chain.meta.get("corruption") in (None, kind)]
        result[f"auroc_{kind}"] = auroc([values[i] for i in keep], [clean[i] for i in keep])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", help="a run directory (its latest checkpoint) or a checkpoint folder")
    parser.add_argument(
        "--aggregations",
        nargs="+",
        default=["min", "mean", "log_mean", "last", "prod"],
        choices=sorted(PROBABILITY_VALUED),
    )
    parser.add_argument("--targets", nargs="+", default=["+", "steps"], choices=TARGETS)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None, help="also write the table as JSON here")
    args = parser.parse_args()

    verified: dict = {}  # one hash of the checkpoint, shared by resolve and load
    checkpoint = resolve_checkpoint(args.checkpoint, verified)
    saved = OmegaConf.load(checkpoint / "config.yaml")
    data = instantiate(saved.data)
    train_chains, meta_chains = data.load("train"), data.load("meta")
    if not any(chain.meta.get("corrupted") for chain in train_chains):
        raise SystemExit(f"{checkpoint}: no training chain has meta['corrupted'] set; nothing to detect")
    prm = load_prm(checkpoint, verified=verified)
    prm.eval()  # no dropout: g_i and G at the same, fixed function
    collator = PRMCollator(prm.backbone, data.max_length)

    losses = {}
    if (
        "steps" in args.targets
    ):  # reweight.upper.loss_target=steps: the PRM's step loss up to the known first error
        losses["steps (reweight.upper.loss_target=steps)"] = lambda scores, batch, _: step_meta_losses(
            prm, scores, batch
        ).mean()
    for name in args.aggregations:
        aggregation = Aggregation(name)
        for target in (t for t in args.targets if t != "steps"):
            losses[f"{name} {target}"] = (
                lambda a, t: lambda scores, batch, _: meta_losses(
                    scores.probs.float(), scores.mask, batch["chain_label"], a, t
                ).mean()
            )(aggregation, target)
    if all(chain.first_error is not None for chain in meta_chains):
        losses[STEP_LEVEL] = lambda scores, batch, first_errors: step_level_loss(scores, first_errors)

    print(
        f"{checkpoint}: {len(train_chains)} training chains "
        f"({sum(bool(c.meta.get('corrupted')) for c in train_chains)} corrupted), "
        f"{len(meta_chains)} meta chains"
    )
    gradients = meta_gradients(prm, meta_chains, collator, losses, args.batch_size)
    results = {
        name: summarise(values, train_chains)
        for name, values in alignments(prm, train_chains, collator, gradients).items()
    }

    kinds = sorted({key for result in results.values() for key in result if key.startswith("auroc_")})
    header = [
        "meta loss",
        "AUROC clean vs corrupted",
        *[k.replace("auroc_", "AUROC ") for k in kinds],
        "clean pushed up",
        "corrupted pushed down",
    ]
    print("\n| " + " | ".join(header) + " |\n|---|" + "---:|" * (len(header) - 1))
    for name, result in results.items():
        cells = [
            result["auroc"],
            *[result[k] for k in kinds],
            result["clean_pushed_up"],
            result["corrupted_pushed_down"],
        ]
        print(f"| {name} | " + " | ".join(f"{value:.3f}" for value in cells) + " |")
    if args.out is not None:
        args.out.write_text(json.dumps({"checkpoint": str(checkpoint), "results": results}, indent=1))


if __name__ == "__main__":
    main()
