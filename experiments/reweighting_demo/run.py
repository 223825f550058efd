"""Does bi-level reweighting find the corrupted data, and does it help best-of-N? The demo study.

    python experiments/reweighting_demo/run.py [--seeds 0 1 2] [--coldstart-steps 3000] [--steps 400]
                                              [--jobs 2] [--out outputs/reweighting_demo]
                                              [--meta-aggregation prod] [--extra <overrides>]

1. one cold start: ``reweight=none`` on the demo benchmark (domains clean / noisy / easy, 40% of the
   noisy domain's chains with corrupted labels);
2. from that checkpoint, for every seed, the same budget of further lower steps with each strategy:
   ``none`` (plain training continued), ``domain_table``, ``instance_table``, ``instance_net``, and
   ``oracle`` (plain training without the corrupted chains: perfect weights);
3. every run evaluated by ``evaluate.py`` on the demo's best-of-N test set.

It prints one table (and writes it to ``<out>/results.md`` and ``results.json``): per strategy the
mean and spread over seeds of the best-of-N accuracy with the ``mean`` aggregation, the learned
noisy/clean domain weight ratio, the corrupted/clean mean instance weight ratio and the AUROC of the
weight as a detector of clean chains; the random, majority-vote and oracle baselines beside them.
Jobs run ``--jobs`` at a time with one thread each. Finished runs are reused when run again.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STRATEGIES = ("none", "domain_table", "instance_table", "instance_net", "oracle")
# "oracle": plain training (reweight=none) on the training set with the corrupted chains removed,
# i.e. perfect weights 0 / 1. What any reweighting could at best win back from the noise.
# Demo-scale learning rates of the upper level (the published meta lrs assume 10^4-10^5 steps). The
# meta loss aggregates with --meta-aggregation (default prod): measured with
# experiments/meta_loss_signal.py at the cold start, the DARTS signal g_i . G tells clean from
# corrupted chains with AUROC 0.84 for prod (0.83 for a meta loss on true step labels), 0.46 for
# min and 0.17 for mean: mean spreads a wrong meta chain's 0 over every step, its correct prefix
# included, which is what the corrupted labels do, so it upweights them.
UPPER = {
    "domain_table": ["reweight.upper.optimizer.lr=0.01"],
    "instance_table": ["reweight.upper.optimizer.lr=0.1"],
    "instance_net": ["reweight.upper.optimizer.lr=1e-3", "activation=softplus"],
}


def run(command: list[str], log: Path, threads: int = 1) -> None:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "WANDB_MODE": "disabled",
    }
    with log.open("w") as handle:
        subprocess.run(
            [sys.executable, *command], cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, check=True
        )


def train_and_evaluate(run_dir: Path, overrides: list[str]) -> dict:
    result_file = run_dir / "study_result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    started = time.perf_counter()
    run(
        ["train.py", f"hydra.run.dir={run_dir}", "train.save_every=0", "logger=none", *overrides],
        run_dir.with_suffix(".train.log"),
    )
    evaluation = run_dir / "eval"
    run(
        ["evaluate.py", f"checkpoint={run_dir}", f"hydra.run.dir={evaluation}"],
        run_dir.with_suffix(".eval.log"),
    )
    best = json.loads((evaluation / "best_of_n.json").read_text())
    result = {
        "best_of_n_mean": best["aggregations"]["mean"]["accuracy"],
        "baselines": {k: v["accuracy"] for k, v in best["baselines"].items()},
        "seconds": time.perf_counter() - started,
    }
    weights = run_dir / "weights.json"
    if weights.exists():
        report = json.loads(weights.read_text())
        report.pop("weights", None)
        result["weights"] = report
    result_file.write_text(json.dumps(result, indent=1))
    return result


def uncorrupted_train_file(out: Path, coldstart: Path) -> Path:
    """The cold start's training file without its corrupted chains (for the oracle runs)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from prm.checkpoint import resolve_checkpoint

    data = instantiate(OmegaConf.load(resolve_checkpoint(coldstart) / "config.yaml").data)
    kept = [
        line
        for line in data.path("train").read_text().splitlines()
        if line.strip() and not json.loads(line).get("meta", {}).get("corrupted")
    ]
    target = out / "train_uncorrupted.jsonl"
    target.write_text("\n".join(kept) + "\n")
    return target


def spread(values: list[float], digits: int = 3) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    return (
        f"{mean:.{digits}f} ± {statistics.pstdev(values):.{digits}f}"
        if len(values) > 1
        else f"{mean:.{digits}f}"
    )


def table(results: dict[str, list[dict]]) -> str:
    lines = [
        "| strategy | best-of-N mean agg. (%) | noisy/clean domain weight | corrupted/clean weight | "
        "AUROC weight vs clean | runs |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for strategy, runs in results.items():
        accuracy = [100 * r["best_of_n_mean"] for r in runs]
        domain = [
            r["weights"]["per_domain"]["noisy"]["mean"] / r["weights"]["per_domain"]["clean"]["mean"]
            for r in runs
            if "weights" in r
        ]
        ratio = [
            r["weights"]["corruption"]["ratio"]
            for r in runs
            if "weights" in r and "corruption" in r["weights"]
        ]
        detect = [
            r["weights"]["corruption"]["auroc_clean_vs_corrupted"]
            for r in runs
            if "weights" in r and "corruption" in r["weights"]
        ]
        lines.append(
            f"| {strategy} | {spread(accuracy, 2)} | {spread(domain)} | {spread(ratio)} | "
            f"{spread(detect)} | {len(runs)} |"
        )
    base = next(iter(results.values()))[0]["baselines"]
    lines.append("")
    lines.append(
        "Baselines on the same test set: "
        + ", ".join(f"{name} {100 * value:.2f}%" for name, value in base.items())
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--coldstart-steps", type=int, default=3000)
    parser.add_argument(
        "--steps", type=int, default=400, help="lower steps of every run after the cold start"
    )
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "reweighting_demo")
    parser.add_argument("--meta-aggregation", default="prod", help="aggregation of the meta loss")
    parser.add_argument("--upper-batch", type=int, default=None, help="meta chains per upper step")
    parser.add_argument("--extra", nargs="*", default=[], help="overrides added to every run")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    coldstart = out / "coldstart"
    print(f"cold start: {args.coldstart_steps} steps of reweight=none -> {coldstart}", flush=True)
    if not (coldstart / "checkpoints" / "latest").exists():
        run(
            [
                "train.py",
                f"hydra.run.dir={coldstart}",
                f"train.steps={args.coldstart_steps}",
                "train.save_every=0",
                "logger=none",
                *args.extra,
            ],
            out / "coldstart.train.log",
            threads=args.jobs,
        )

    cold_eval = coldstart / "eval"
    if not (cold_eval / "best_of_n.json").exists():
        run(
            ["evaluate.py", f"checkpoint={coldstart}", f"hydra.run.dir={cold_eval}"],
            out / "coldstart.eval.log",
            threads=args.jobs,
        )
    cold = json.loads((cold_eval / "best_of_n.json").read_text())["aggregations"]["mean"]["accuracy"]
    print(f"cold start: best-of-N (mean) {100 * cold:.2f}%", flush=True)

    jobs = []
    oracle_data = (
        [f"data.train={uncorrupted_train_file(out, coldstart)}"] if "oracle" in args.strategies else []
    )
    for seed in args.seeds:
        for strategy in args.strategies:
            reweight = "none" if strategy == "oracle" else strategy
            overrides = [
                f"reweight={reweight}",
                f"seed={seed}",
                f"train.steps={args.steps}",
                f"backbone.path={coldstart}",
                "train.validate_every=0",
                *UPPER.get(strategy, []),
                *args.extra,
            ]
            if strategy == "oracle":
                overrides += oracle_data
            elif strategy != "none":
                overrides.append(f"aggregation={args.meta_aggregation}")
                if args.upper_batch:
                    overrides.append(f"reweight.upper.batch_size={args.upper_batch}")
            jobs.append((strategy, seed, out / f"{strategy}_seed{seed}", overrides))

    def work(job):
        strategy, seed, run_dir, overrides = job
        result = train_and_evaluate(run_dir, overrides)
        print(
            f"  {strategy:<15} seed {seed}: best-of-N (mean) {100 * result['best_of_n_mean']:.2f}% "
            f"in {result['seconds']:.0f} s",
            flush=True,
        )
        return strategy, result

    results: dict[str, list[dict]] = {strategy: [] for strategy in args.strategies}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for strategy, result in pool.map(work, jobs):
            results[strategy].append(result)

    wall = time.perf_counter() - started
    markdown = (
        f"# Reweighting on the demo benchmark\n\nCold start {args.coldstart_steps} steps, then "
        f"{args.steps} steps per run, seeds {args.seeds}; mean ± population std over seeds. "
        f"The cold start itself: {100 * cold:.2f}% best-of-N (mean).\n\n"
        + table(results)
        + f"\nWall time: {wall / 60:.1f} min with {args.jobs} jobs.\n"
    )
    (out / "results.md").write_text(markdown)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print("\n" + markdown)


if __name__ == "__main__":
    main()
