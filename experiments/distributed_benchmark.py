"""Step time of DeepSpeed ZeRO against a plain run, and agreement between world sizes and stages.

    python experiments/distributed_benchmark.py [--steps 40] [--out outputs/distributed_benchmark]

Runs ``reweight=instance_table`` on the tiny backbone and the demo data for ``--steps`` steps as:
``distributed=none`` (1 process, batch 8), ``zero2`` (1 process, batch 8), ``zero2`` and ``zero3``
(2 processes, batch 4 each: the same global batch). Prints the mean wall time per step (from the
runs' metrics.jsonl, first steps excluded as warm-up), the zero2/none step-time ratio at one process,
and the largest difference of the learned instance weights from the plain run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prm.distributed import free_port  # noqa: E402
from prm.tracking import read_metrics  # noqa: E402

WARMUP = 5


def launch(run_dir: Path, processes: int, overrides: list[str], steps: int, threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "disabled"}
    if processes == 1:
        command = [sys.executable, "train.py"]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(processes),
            "--master_port",
            str(free_port()),
            "train.py",
        ]
    args = [
        f"hydra.run.dir={run_dir}",
        "reweight=instance_table",
        f"train.steps={steps}",
        "train.save_every=0",
        "train.validate_every=0",
        "reweight.upper.optimizer.lr=0.1",
        "logger=jsonl",
        *overrides,
    ]
    with (run_dir.parent / f"{run_dir.name}.log").open("w") as log:
        subprocess.run([*command, *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)


def step_seconds(run_dir: Path) -> float:
    rows = read_metrics(run_dir / "metrics.jsonl")
    rates = [row["throughput/chains_per_s"] for row in rows if "throughput/chains_per_s" in row][WARMUP:]
    chains = [row["prm/chains"] for row in rows if "prm/chains" in row][WARMUP:]
    return statistics.fmean(c / r for c, r in zip(chains, rates))


def weights(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "weights.json").read_text())["weights"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "distributed_benchmark")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    plan = {
        "none (1 proc)": (1, 2, ["data.batch_size=8"]),
        "zero2 (1 proc)": (1, 2, ["distributed=zero2", "data.batch_size=8"]),
        "zero2 (2 proc)": (2, 1, ["distributed=zero2", "data.batch_size=4", "reweight.upper.batch_size=4"]),
        "zero3 (2 proc)": (2, 1, ["distributed=zero3", "data.batch_size=4", "reweight.upper.batch_size=4"]),
    }
    plan["none (1 proc)"][2].append("reweight.upper.batch_size=8")
    plan["zero2 (1 proc)"][2].append("reweight.upper.batch_size=8")
    results = {}
    for name, (processes, threads, overrides) in plan.items():
        run_dir = out / f"{name.split()[0]}_{processes}proc"
        print(f"running {name} ...", flush=True)
        launch(run_dir, processes, overrides, args.steps, threads)
        results[name] = (step_seconds(run_dir), weights(run_dir))
    reference_time, reference = results["none (1 proc)"]
    lines = ["| run | s / step | vs none | max weight difference vs none |", "|---|---:|---:|---:|"]
    for name, (seconds, learned) in results.items():
        difference = max(abs(learned[key] - reference[key]) for key in reference)
        lines.append(f"| {name} | {seconds:.3f} | {seconds / reference_time:.2f}x | {difference:.2e} |")
    moved = sum(abs(w - 1.0) > 1e-4 for w in reference.values())
    table = (
        "\n".join(lines) + f"\n\n{args.steps} steps of reweight=instance_table; {moved} of {len(reference)} "
        f"instance weights moved in the plain run.\n"
    )
    (out / "results.md").write_text(table)
    print("\n" + table)


if __name__ == "__main__":
    main()
