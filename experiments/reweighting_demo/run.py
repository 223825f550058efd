"""Does bi-level reweighting find the bad training data, and does the PRM it trains pick better answers?

    python experiments/reweighting_demo/run.py [--data demo_shift_hard] [--seeds 0 1 2]
                                              [--coldstart-steps N] [--steps N] [--jobs 2]
                                              [--out outputs/reweighting_demo]
                                              [--meta-aggregation prod] [--upper-lr S=LR ...]
                                              [--strategies ...] [--extra <overrides>]

1. the shared cold start of each seed: by default (``--data demo_shift_hard``, a large domain whose
   labeller accepts arithmetic slips, a frequent kind of error in the test set) the seed's random
   initialisation, i.e. every run trains from scratch for 1500 steps and the weights act from the
   first step on (``--coldstart-steps 0``); with ``--coldstart-steps N`` (the default for
   ``demo_shift`` and for ``demo``, the earlier regime of noise without a direction) one
   ``reweight=none`` run of N steps that every run continues from;
2. from that checkpoint (or from scratch), for every seed, the same budget of lower steps with each strategy:
   ``none`` (plain training continued), ``small_loss`` (``reweight=small_loss``: small-loss filtering,
   a baseline without a meta set), ``domain_table``, ``instance_table``, ``instance_net``,
   ``domain_instance`` (domain weight x instance weight), and
   ``oracle`` (plain training without the corrupted chains: perfect weights);
3. every run evaluated by ``evaluate.py`` on the data's best-of-N test set.

It prints one table (and writes it to ``<out>/results.md`` and ``results.json``): per strategy the
mean and spread over seeds of the best-of-N accuracy with the ``mean`` aggregation, the share of the
none-to-oracle gap it wins back, the mean weight each training domain ends with, the corrupted/clean
mean instance weight ratio and the AUROC of the weight as a detector of clean chains; the random,
majority-vote and pass@N baselines beside them. Jobs run ``--jobs`` at a time with one thread each.
Finished runs are reused when run again (delete ``<out>`` to start over). ``--tag`` names ablation
runs (``<strategy><tag>_seed<N>``) so they sit beside the main runs in one ``--out``.

Regimes (``--data``): ``demo_shift_hard`` (bad labels in one domain), ``demo_scatter`` (false
positives scattered over every domain: only per-chain weights can help), ``demo_scatter_mixed``
(flipped or shifted labels scattered), ``demo_clean`` (no bad label: the no-regret check).

When a strategy wins nothing back, ``python experiments/meta_loss_signal.py <out>/coldstart`` says
whether the meta loss points at the bad chains at all (the command is printed with the table).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # this checkout's prm, not another installed copy
STRATEGIES = (
    "none",
    "small_loss",
    "domain_table",
    "instance_table",
    "instance_net",
    "domain_instance",
    "oracle",
)
# Baselines that learn nothing (reweight=<name>, no meta loss, no upper level): small-loss filtering.
BASELINES = ("small_loss",)
# "oracle_domain" (on request, --strategies): plain training without every domain that holds a
# corrupted chain, i.e. the best one weight per domain could do by removing the harmful domain.
ORACLES = {"oracle": "chains", "oracle_domain": "domains"}
# "oracle": plain training (reweight=none) on the training set with the corrupted chains removed,
# i.e. perfect weights 0 / 1. What any reweighting could at best win back from the bad data.


def override_names() -> dict[str, str]:
    """The train.py keys this study sets, in one place."""

    return {
        "upper_lr": "reweight.upper.optimizer.lr",
        "instance_lr": "reweight.upper.optimizers.instance.lr",  # domain_instance's instance table
        "upper_batch": "reweight.upper.batch_size",
        "steps": "train.steps",
        "save_every": "train.save_every",
        "validate_every": "train.validate_every",
        "train_file": "data.train",
        "cold_start": "backbone.path",
    }


KEYS = override_names()
# Demo-scale learning rates of the upper level (the published meta lrs assume 10^4-10^5 steps).
# The meta loss's aggregation decides which steps of a wrong meta chain take the blame, and so the
# direction of the hypergradient (measured with experiments/meta_loss_signal.py at each cold start):
# on demo (noise without a direction) prod 0.84, min 0.46, mean 0.17 AUROC of g_i . G for clean vs
# corrupted chains (mean blames every step, the correct prefix included, which is what that noise
# does); on demo_shift (arithmetic slips labelled as right) min 0.79, last 0.77, mean 0.69, prod 0.34
# (prod points at the wrong chains); on demo_shift_hard min 0.80, prod 0.38.
META_AGGREGATION = {"demo": "prod", "demo_shift": "min", "demo_shift_hard": "min", "demo_scatter": "min"}
# The meta loss's target (reweight.upper.loss_target), by data: on demo_scatter_mixed (flipped or
# shifted labels over every domain) the step-level meta loss carries the signal (g_i . G AUROC at
# plain training's end: steps 0.82, prod + 0.80, min + 0.45, mean + 0.18); on demo_scatter (false
# positives) "+" with min (min + 0.71, last + 0.71, steps 0.67, prod + 0.37).
META_TARGET = {"demo_scatter_mixed": "steps"}
# Cold-start lengths the measured tables used (demo's earlier study: 3000; demo_shift: 1500;
# demo_shift_hard: none, every run from scratch: a cold start on the full mixture has already taken
# the harm the weights are meant to avoid, and the gap to the oracle closes to 1 point).
SCATTERED = ("demo_scatter", "demo_scatter_mixed", "demo_clean")
COLDSTART_STEPS = {"demo": 3000, "demo_shift": 1500, "demo_shift_hard": 0, **dict.fromkeys(SCATTERED, 0)}
# Lower steps of each run (after the cold start, or from scratch).
STEPS = {"demo": 400, "demo_shift": 400, "demo_shift_hard": 1500, **dict.fromkeys(SCATTERED, 1500)}
# domain_instance: the lr of its domain group (reweight.upper.optimizer); its instance group's lr
# follows instance_table's by data (UPPER_EXTRA_BY_DATA). Not measured yet: the two tables' settings.
UPPER_LR = {"domain_table": 0.01, "instance_table": 0.1, "instance_net": 1e-3, "domain_instance": 0.01}
# From scratch the weights must move within the first few hundred steps, before the bad data's harm
# is done: domain table 0.05 (at 0.01 the noisy domain's weight fell too late: 60.25% best-of-N
# against 67.25% at 0.05, seed 0), instance table 0.5.
UPPER_LR_BY_DATA = {
    "demo_shift_hard": {
        "domain_table": 0.05,
        "instance_table": 0.5,
        "instance_net": 1e-3,
        "domain_instance": 0.05,
    },
    # scattered regimes: the instance strategies' own defaults (conf/reweight/*.yaml, measured here)
    **dict.fromkeys(
        SCATTERED,
        {"domain_table": 0.05, "instance_table": None, "instance_net": None, "domain_instance": 0.05},
    ),
}
UPPER_EXTRA = {"instance_net": ["activation=softplus"]}
# From scratch the DARTS signal fades as the PRM's own (cosine) learning rate goes to 0, and Adam's
# normalised steps then turn noise into moves: under a constant upper lr the noisy domain's weight
# climbed from ~0.05 back to ~1 in the last 200 steps. A cosine upper schedule keeps it down
# (0.03-0.07 at the end) at about the same accuracy (measured for the domain table).
UPPER_EXTRA_BY_DATA = {
    name: {
        "domain_table": ["reweight.upper.schedule.name=cosine"],
        "domain_instance": [
            "reweight.upper.schedule.name=cosine",
            *([f"{KEYS['instance_lr']}=0.5"] if name == "demo_shift_hard" else []),
        ],
    }
    for name in ("demo_shift_hard", *SCATTERED)
}


def run(command: list[str], log: Path, threads: int = 1) -> None:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "WANDB_MODE": "disabled",
    }
    with log.open("w") as handle:
        done = subprocess.run(
            [sys.executable, *command], cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT
        )
    if done.returncode:
        raise SystemExit(f"{' '.join(command[:1])} failed (exit {done.returncode}); its log: {log}")


def train_and_evaluate(run_dir: Path, overrides: list[str], eval_overrides: list[str]) -> dict:
    """Train one run (``train.py`` with ``overrides``) and evaluate it on the test set of its data
    (``evaluate.py`` with ``eval_overrides``). A run trained or evaluated before with the same settings
    is reused; one with other settings is done again."""
    with run_lock(run_dir):
        return _train_and_evaluate(run_dir, overrides, eval_overrides)


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold ``<run_dir>.lock`` (the holder's pid) while a run is trained or evaluated, so two study
    processes sharing ``--out`` (e.g. one per strategy) wait for each other instead of clashing."""
    lock = run_dir.with_name(run_dir.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                os.kill(int(lock.read_text() or 0), 0)
            except (ProcessLookupError, ValueError, FileNotFoundError):
                lock.unlink(missing_ok=True)  # its holder is gone
                continue
            time.sleep(10)
    os.write(handle, str(os.getpid()).encode())
    os.close(handle)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _train_and_evaluate(run_dir: Path, overrides: list[str], eval_overrides: list[str]) -> dict:
    result_file = run_dir / "study_result.json"
    settings = {"train": overrides, "evaluate": eval_overrides}
    if result_file.exists():
        result = json.loads(result_file.read_text())
        if result.get("settings") == settings:
            return result
    started = time.perf_counter()
    trained = run_dir / "study_trained.json"
    done = trained.exists() and (run_dir / "checkpoints" / "latest").exists()
    if not (done and json.loads(trained.read_text()) == overrides):
        if run_dir.exists():
            print(f"  {run_dir.name}: settings changed since its last run; training it again", flush=True)
            shutil.rmtree(run_dir)
        run(
            ["train.py", f"hydra.run.dir={run_dir}", f"{KEYS['save_every']}=0", "logger=jsonl", *overrides],
            run_dir.with_suffix(".train.log"),
        )
        trained.write_text(json.dumps(overrides))
    evaluation = run_dir / "eval"
    shutil.rmtree(evaluation, ignore_errors=True)
    run(
        ["evaluate.py", f"checkpoint={run_dir}", f"hydra.run.dir={evaluation}", *eval_overrides],
        run_dir.with_suffix(".eval.log"),
    )
    best = json.loads((evaluation / "best_of_n.json").read_text())
    result = {
        "best_of_n_mean": best["aggregations"]["mean"]["accuracy"],
        "baselines": {k: v["accuracy"] for k, v in best["baselines"].items()},
        "seconds": time.perf_counter() - started,
        "settings": settings,
    }
    weights = run_dir / "weights.json"
    if weights.exists():
        report = json.loads(weights.read_text())
        report.pop("weights", None)
        result["weights"] = report
    path = domain_weight_path(run_dir / "metrics.jsonl")
    if path:
        result["domain_weight_run_mean"] = {d: statistics.fmean(values) for d, values in path.items()}
    result_file.write_text(json.dumps(result, indent=1))
    return result


def data_config(args, coldstart: Path | None):
    """The data config of the study's runs: the cold start's (its config.yaml), or, without a cold
    start, ``data=<args.data>`` with the ``data.`` overrides of ``--extra`` composed from conf/."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from prm.checkpoint import resolve_checkpoint

    if coldstart is not None:
        return OmegaConf.load(resolve_checkpoint(coldstart) / "config.yaml").data
    overrides = [f"data={args.data}", *(item for item in args.extra if item.startswith("data."))]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides).data


def cold_start(args, coldstart: Path, common: list[str], evaluate_data: list[str]) -> float:
    """Train (once) and evaluate the cold start; returns its best-of-N accuracy (mean aggregation)."""
    print(f"cold start: {args.coldstart_steps} steps of reweight=none on data={args.data} -> {coldstart}")
    out = coldstart.parent
    if not (coldstart / "checkpoints" / "latest").exists():
        run(
            [
                "train.py",
                f"hydra.run.dir={coldstart}",
                f"{KEYS['steps']}={args.coldstart_steps}",
                f"{KEYS['save_every']}=0",
                "logger=none",
                *common,
            ],
            out / "coldstart.train.log",
            threads=args.coldstart_threads or args.jobs,
        )
    cold_eval = coldstart / "eval"
    cold_settings = cold_eval / "study_settings.json"
    if not (cold_settings.exists() and json.loads(cold_settings.read_text()) == evaluate_data):
        shutil.rmtree(cold_eval, ignore_errors=True)
        run(
            ["evaluate.py", f"checkpoint={coldstart}", f"hydra.run.dir={cold_eval}", *evaluate_data],
            out / "coldstart.eval.log",
            threads=args.coldstart_threads or args.jobs,
        )
        cold_settings.write_text(json.dumps(evaluate_data))
    return json.loads((cold_eval / "best_of_n.json").read_text())["aggregations"]["mean"]["accuracy"]


def oracle_train_file(out: Path, data_cfg, drop: str = "chains") -> Path:
    """The study's training file without its corrupted chains (``drop="chains"``: the oracle runs) or
    without every domain that holds one (``drop="domains"``: the oracle_domain runs)."""
    from hydra.utils import instantiate

    data = instantiate(data_cfg)
    records = [json.loads(line) for line in data.path("train").read_text().splitlines() if line.strip()]
    corrupted = [bool(record.get("meta", {}).get("corrupted")) for record in records]
    bad_domains = {record.get("domain") for record, bad in zip(records, corrupted) if bad}
    keep = [
        not bad if drop == "chains" else record.get("domain") not in bad_domains
        for record, bad in zip(records, corrupted)
    ]
    target = out / ("train_uncorrupted.jsonl" if drop == "chains" else "train_without_bad_domains.jsonl")
    target.write_text("".join(json.dumps(r) + "\n" for r, k in zip(records, keep) if k))
    return target


def domain_weight_path(metrics: Path) -> dict[str, list[float]]:
    """Each domain's weight after every logged step (``reweight/weight/<domain>`` in a run's
    metrics.jsonl, logged by domain tables); {} when the run logged none."""
    if not metrics.is_file():
        return {}
    prefix = "reweight/weight/"
    path: dict[str, list[float]] = {}
    for line in metrics.read_text().splitlines():
        row = json.loads(line)
        for key, value in row.items():
            if key.startswith(prefix):
                path.setdefault(key[len(prefix) :], []).append(value)
    return path


def spread(values: list[float], digits: int = 3) -> str:
    """``mean ± population std`` of ``values`` ("-" for none)."""
    if not values:
        return "-"
    mean = statistics.fmean(values)
    return (
        f"{mean:.{digits}f} ± {statistics.pstdev(values):.{digits}f}"
        if len(values) > 1
        else f"{mean:.{digits}f}"
    )


def domain_weight(result: dict, domain: str) -> float | None:
    """The weight a domain ends with: the domain table's own weight, else its chains' mean weight."""
    report = result.get("weights")
    if not report:
        return None
    if report.get("domain_weights") and domain in report["domain_weights"]:
        return report["domain_weights"][domain]
    summary = report.get("per_domain", {}).get(domain)
    return summary["mean"] if summary else None


def gap_share(accuracy: float, none: float, oracle: float) -> float | None:
    """(accuracy - none) / (oracle - none): 1 = the whole none-to-oracle gap won back, 0 = nothing;
    None when the oracle is not above plain training (no gap to win back)."""
    return (accuracy - none) / (oracle - none) if oracle > none else None


def summarise(results: dict[str, list[dict]], domains: list[str]) -> dict[str, dict]:
    """Per strategy: accuracies (%), gap share, per-domain weights, corruption ratio and AUROC."""
    mean_of = {
        strategy: statistics.fmean(100 * r["best_of_n_mean"] for r in runs)
        for strategy, runs in results.items()
        if runs
    }
    summary = {}
    for strategy, runs in results.items():
        row = {"accuracy": [100 * r["best_of_n_mean"] for r in runs], "seeds": len(runs)}
        row["seconds"] = [r["seconds"] for r in runs if "seconds" in r]
        if "none" in mean_of and strategy in mean_of:
            row["vs_none"] = mean_of[strategy] - mean_of["none"]
        if "none" in mean_of and "oracle" in mean_of and strategy in mean_of:
            row["gap_share"] = gap_share(mean_of[strategy], mean_of["none"], mean_of["oracle"])
        row["domains"] = {
            domain: [w for r in runs if (w := domain_weight(r, domain)) is not None] for domain in domains
        }
        row["domains_run_mean"] = {
            domain: [r["domain_weight_run_mean"][domain] for r in runs if "domain_weight_run_mean" in r]
            for domain in domains
        }
        corruption = [r["weights"]["corruption"] for r in runs if "corruption" in r.get("weights", {})]
        row["ratio"] = [c["ratio"] for c in corruption]
        row["auroc"] = [c["auroc_clean_vs_corrupted"] for c in corruption]
        summary[strategy] = row
    return summary


def domain_cell(row: dict, domain: str) -> str:
    """A domain's weight at the end of the runs, and (where logged) its mean over the runs' steps."""
    end = spread(row["domains"][domain], 2)
    during = row.get("domains_run_mean", {}).get(domain)
    return f"{end} (run mean {spread(during, 2)})" if during else end


def table(summary: dict[str, dict], domains: list[str], baselines: dict[str, float]) -> str:
    """The study's Markdown table (see the module docstring)."""
    lines = [
        "| strategy | best-of-N (%) | vs none (points) | gap won back | "
        + " | ".join(f"weight {d} at the end" for d in domains)
        + " | corrupted/clean weight | AUROC weight vs clean | run time (s) | seeds |",
        "|---|---:|---:|---:|" + "---:|" * len(domains) + "---:|---:|---:|---:|",
    ]
    for strategy, row in summary.items():
        share, versus = row.get("gap_share"), row.get("vs_none")
        lines.append(
            f"| {strategy} | {spread(row['accuracy'], 2)} | "
            + ("-" if versus is None else f"{versus:+.2f}")
            + " | "
            + ("-" if share is None else f"{100 * share:.0f}%")
            + " | "
            + " | ".join(domain_cell(row, d) for d in domains)
            + f" | {spread(row['ratio'])} | {spread(row['auroc'])} | "
            + f"{spread(row.get('seconds', []), 0)} | {row['seeds']} |"
        )
    lines.append("")
    lines.append(
        "Baselines on the same test set: "
        + ", ".join(f"{name} {100 * value:.2f}%" for name, value in baselines.items())
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="demo_shift_hard", help="the data option (conf/data/<name>.yaml)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--coldstart-steps",
        type=int,
        default=None,
        help=f"steps of the cold start (default: by data, {COLDSTART_STEPS}, else 1500); 0: no cold "
        "start, every run from scratch",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"lower steps of every run after the cold start (default: by data, {STEPS}, else 400)",
    )
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--coldstart-threads",
        type=int,
        default=None,
        help="threads of the cold start and its evaluation (default: --jobs; 1 on a busy machine)",
    )
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=[*STRATEGIES, *ORACLES])
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "reweighting_demo")
    parser.add_argument(
        "--meta-aggregation",
        default=None,
        help=f"aggregation of the meta loss (default: by data, {META_AGGREGATION}, else min)",
    )
    parser.add_argument(
        "--meta-target",
        default=None,
        choices=["+", "both", "steps"],
        help=f"target of the meta loss, reweight.upper.loss_target (default: by data, {META_TARGET}, else +)",
    )
    parser.add_argument("--upper-batch", type=int, default=None, help="meta chains per upper step")
    parser.add_argument(
        "--upper-lr",
        nargs="*",
        default=[],
        metavar="STRATEGY=LR",
        help=f"upper-level learning rates other than {UPPER_LR} (by data: {UPPER_LR_BY_DATA})",
    )
    parser.add_argument("--extra", nargs="*", default=[], help="overrides added to every run")
    parser.add_argument(
        "--tag",
        default="",
        help="suffix of the run folders (<strategy><tag>_seed<N>): ablations beside the main runs",
    )
    args = parser.parse_args()
    upper_lr = {**UPPER_LR, **UPPER_LR_BY_DATA.get(args.data, {})}
    for item in args.upper_lr:
        strategy, _, value = item.partition("=")
        if strategy not in UPPER_LR or not value:
            parser.error(f"--upper-lr {item!r}: expected STRATEGY=LR with STRATEGY in {sorted(UPPER_LR)}")
        upper_lr[strategy] = float(value)
    if args.coldstart_steps is None:
        args.coldstart_steps = COLDSTART_STEPS.get(args.data, 1500)
    if args.steps is None:
        args.steps = STEPS.get(args.data, 400)
    if args.meta_aggregation is None:
        args.meta_aggregation = META_AGGREGATION.get(args.data, "min")
    if args.meta_target is None:
        args.meta_target = META_TARGET.get(args.data, "+")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(ROOT)  # the demo data's cache folder (data.generator.root) is relative, as in train.py runs
    started = time.perf_counter()
    common = [f"data={args.data}", *args.extra]
    # evaluate.py composes its own config: the same data (and data overrides) give the same test set
    evaluate_data = [f"data={args.data}", *(item for item in args.extra if item.startswith("data."))]

    coldstart = out / "coldstart" if args.coldstart_steps > 0 else None
    cold = None
    if coldstart is None:
        print(f"no cold start: every run trains from scratch for {args.steps} steps on data={args.data}")
    else:
        cold = cold_start(args, coldstart, common, evaluate_data)
        print(f"cold start: best-of-N (mean) {100 * cold:.2f}%", flush=True)

    jobs = []
    oracle_data = {
        strategy: [f"{KEYS['train_file']}={oracle_train_file(out, data_config(args, coldstart), drop)}"]
        for strategy, drop in ORACLES.items()
        if strategy in args.strategies
    }
    # per seed, the reference runs first: the gap they span is known before the bi-level runs end
    order = sorted(args.strategies, key=lambda strategy: strategy not in ("none", *ORACLES))
    for seed in args.seeds:
        for strategy in order:
            reweight = "none" if strategy in ORACLES else strategy
            overrides = [
                f"reweight={reweight}",
                f"seed={seed}",
                f"{KEYS['steps']}={args.steps}",
                f"{KEYS['validate_every']}=0",
                *common,
            ]
            if coldstart is not None:
                overrides.append(f"{KEYS['cold_start']}={coldstart}")
            if strategy in ORACLES:
                overrides += oracle_data[strategy]
            elif strategy not in ("none", *BASELINES):
                overrides += [
                    f"aggregation={args.meta_aggregation}",
                    *([f"reweight.upper.loss_target={args.meta_target}"] if args.meta_target != "+" else []),
                    *([f"{KEYS['upper_lr']}={upper_lr[strategy]}"] if upper_lr[strategy] is not None else []),
                    *UPPER_EXTRA.get(strategy, []),
                    *UPPER_EXTRA_BY_DATA.get(args.data, {}).get(strategy, []),
                ]
                if args.upper_batch:
                    overrides.append(f"{KEYS['upper_batch']}={args.upper_batch}")
            jobs.append((strategy, seed, out / f"{strategy}{args.tag}_seed{seed}", overrides))

    def work(job):
        strategy, seed, run_dir, overrides = job
        result = train_and_evaluate(run_dir, overrides, evaluate_data)
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

    domains = training_domains(data_config(args, coldstart))
    summary = summarise(results, domains)
    baselines = next(iter(results.values()))[0]["baselines"]
    wall = time.perf_counter() - started
    start = (
        f"Cold start {args.coldstart_steps} steps (itself {100 * cold:.2f}% best-of-N, mean), then "
        f"{args.steps} steps per run"
        if coldstart is not None
        else f"Every run from scratch, {args.steps} steps"
    )
    markdown = (
        f"# Reweighting on data={args.data}\n\n{start}, seeds {args.seeds}; mean ± population std "
        f"over seeds; meta loss aggregation {args.meta_aggregation}, target {args.meta_target}, "
        f"upper lrs {upper_lr}.\n\n"
        + table(summary, domains, baselines)
        + f"\nWall time: {wall / 60:.1f} min with {args.jobs} jobs.\n"
        + "\nWhy a strategy does (not) win the gap back: does the meta loss point at the bad chains?\n"
        + f"    python experiments/meta_loss_signal.py {coldstart or out / f'none_seed{args.seeds[0]}'}\n"
    )
    (out / "results.md").write_text(markdown)
    (out / "results.json").write_text(json.dumps({"runs": results, "summary": summary}, indent=1))
    print("\n" + markdown)


def training_domains(data) -> list[str]:
    """The training domains of the study's data config, in the generator's order."""
    from hydra.utils import instantiate

    generator = data.get("generator")
    if generator is not None and generator.get("domains"):
        return [str(d) for d in generator.domains]
    return sorted({chain.domain for chain in instantiate(data).load("train")})


if __name__ == "__main__":
    main()
