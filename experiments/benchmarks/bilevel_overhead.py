"""Bi-level step time and peak memory over a plain step, beside the compute limit (used by throughput.py).

A plain step of the PRM is one forward and one backward of a training batch plus the optimiser step.
A bi-level run adds, once per ``unroll`` lower steps, the upper step: one forward and one backward of
a meta batch (the meta gradient v), and DARTS' two forwards of the last training batch at phi +- eps v
(run without an autograd graph: their loss is differentiated only through the weights), plus the
reweighter's own tiny step. So, per lower step:

    limit(unroll) = 1 + (T_meta_fwd_bwd + 2 T_fwd_no_graph) / (unroll * T_plain_step)

The three times are measured here, in one process, on the benchmark's own batches (median of a few
repeats), so the limit is a ratio of like with like; the measured ratio comes from full ``train.py``
runs (the suite's step clock of throughput.py), plain and bi-level, alternating.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from itertools import islice
from pathlib import Path

STRATEGIES = ("instance_table", "domain_table", "instance_net")
UNROLLS = (1, 5)


def two_domain_train_file(data_dir: Path) -> Path:
    """The benchmark's training chains as a native file whose chains alternate between two domains
    (domain_table needs at least two); the chains, steps and labels are unchanged."""
    from prm.data.native import write_native
    from prm.data.readers import read_trl

    out = data_dir / "suite_train_two_domains.jsonl"
    if not out.is_file():
        chains = read_trl(data_dir / "suite_train.json")
        write_native(
            out, [dataclasses.replace(c, domain=("even", "odd")[i % 2]) for i, c in enumerate(chains)]
        )
    return out


def pass_times(model_dir: Path, data_dir: Path, batch: int, steps: int, seed: int, packing: bool) -> dict:
    """Median seconds of: a training step (forward + loss + backward + AdamW), a meta forward + backward
    (meta loss of the mean aggregation), a forward without graph; over the first ``steps`` batches."""
    import torch

    from prm.aggregation import Aggregation
    from prm.bilevel.meta_loss import meta_losses
    from prm.data.dataset import ChainDataset, PRMCollator
    from prm.data.readers import read_processbench, read_trl
    from prm.data.sampling import ResumableSampler
    from prm.model.backbones import build_backbone
    from prm.model.prm import ProcessRewardModel

    torch.manual_seed(seed)
    backbone = build_backbone(family="qwen2", path=str(model_dir))
    prm = ProcessRewardModel(backbone)
    collator = PRMCollator(backbone, None, packing)
    chains = read_trl(data_dir / "suite_train.json")
    meta = read_processbench(data_dir / "meta.json")
    dataset, meta_set = ChainDataset(chains), ChainDataset(meta)
    order = list(islice(iter(ResumableSampler(len(chains), seed=seed)), steps * batch))
    meta_order = list(islice(iter(ResumableSampler(len(meta), seed=seed + 1)), steps * batch))
    optimizer = torch.optim.AdamW(prm.parameters(), lr=1e-5)
    aggregation = Aggregation("mean")
    times: dict[str, list[float]] = {"plain": [], "meta": [], "no_graph": []}
    for k in range(steps):
        train_batch = collator([dataset[i] for i in order[k * batch : (k + 1) * batch]])
        meta_batch = collator([meta_set[i] for i in meta_order[k * batch : (k + 1) * batch]])
        start = time.perf_counter()
        losses, _ = prm.losses(prm(train_batch), train_batch["step_labels"])
        losses.mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        times["plain"].append(time.perf_counter() - start)
        start = time.perf_counter()
        scores = prm(meta_batch)
        loss = meta_losses(scores.probs, scores.mask, meta_batch["chain_label"], aggregation).mean()
        torch.autograd.grad(loss, list(prm.parameters()))
        times["meta"].append(time.perf_counter() - start)
        start = time.perf_counter()
        with torch.no_grad():
            prm(train_batch)
            prm(train_batch)
        times["no_graph"].append((time.perf_counter() - start) / 2)
    return {key: statistics.median(values[1:]) for key, values in times.items()}


def compute_limit(times: dict, unroll: int) -> float:
    """Bi-level over plain step time if only the extra passes cost anything (see the module docstring)."""
    return 1 + (times["meta"] + 2 * times["no_graph"]) / (unroll * times["plain"])


def measure(args, model_dir: Path, data_dir: Path, work: Path, run_suite, speed_overrides: list[str]) -> None:
    """Plain and bi-level ``train.py`` runs (``args.bilevel_steps`` steps each) of every strategy at
    unroll 1 and 5, alternating with plain runs; prints the table."""
    train_file = two_domain_train_file(data_dir)
    steps = args.bilevel_steps
    if steps % 5 or steps < 10:
        raise ValueError(f"--bilevel-steps={steps}: use a multiple of 5, at least 10")
    packing = "data.packing=true" in speed_overrides
    times = pass_times(model_dir, data_dir, args.batch, 6, args.seed, packing)
    print(
        f"\nPass times (median, batch {args.batch}): plain step {times['plain']:.3f} s, meta "
        f"forward+backward {times['meta']:.3f} s, forward without graph {times['no_graph']:.3f} s"
    )
    window = 5  # steps 6..N: whole unroll periods at unroll 1 and 5, warm-up left out
    base = [f"data.train={train_file}", "data.train_format=native", f"train.steps={steps}", *speed_overrides]
    results = []
    for strategy in args.bilevel_strategies.split(","):
        for unroll in [int(u) for u in args.unrolls.split(",")]:
            pair = {}
            for name, extra in (
                ("plain", []),
                (
                    strategy,
                    [
                        f"reweight={strategy}",
                        f"reweight.hypergradient.unroll_steps={unroll}",
                        f"reweight.upper.batch_size={args.batch}",
                    ],
                ),
            ):
                run_dir = work / f"{name}-{strategy}-u{unroll}"
                pair[name] = run_suite(args, model_dir, data_dir, run_dir, extra=base + extra, window=window)
            plain, bilevel = pair["plain"], pair[strategy]
            ratio = (bilevel["seconds"] / (steps - window)) / (plain["seconds"] / (steps - window))
            cpu_ratio = bilevel["cpu_seconds"] / plain["cpu_seconds"]
            limit = compute_limit(times, unroll)
            memory = bilevel["peak_memory_gb"] / plain["peak_memory_gb"]
            results.append((strategy, unroll, ratio, cpu_ratio, limit, memory, plain, bilevel))
            print(
                f"  {strategy} unroll {unroll}: {ratio:.2f}x plain wall, {cpu_ratio:.2f}x CPU time, "
                f"limit {limit:.2f}x, peak memory {memory:.2f}x",
                flush=True,
            )
    print(
        f"\nBi-level step time over plain step time ({steps} steps, steps {window + 1}..{steps}, batch "
        f"{args.batch}, meta batch {args.batch}, darts):"
    )
    print(
        "| strategy | unroll | passes per upper step | wall ratio | CPU-time ratio | compute limit | "
        "CPU ratio / limit | peak memory ratio |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for strategy, unroll, ratio, cpu_ratio, limit, memory, _, _ in results:
        passes = f"{unroll} x (F+B) train + (F+B) meta + 2 F train (no graph)"
        print(
            f"| {strategy} | {unroll} | {passes} | {ratio:.2f} | {cpu_ratio:.2f} | {limit:.2f} | "
            f"{cpu_ratio / limit:.2f} | {memory:.2f} |"
        )
