"""Kill -9 a short training run at random points, resume it until it finishes, compare with an
uninterrupted run.

    python experiments/kill_resume.py [--kills 8] [--steps 12] [--seed 0] [--out outputs/kill_resume]

Runs ``train.py experiment=smoke train.steps=<steps> train.save_every=1`` as subprocesses (each in
its own process group, killed with SIGKILL). Kill points, chosen by ``--seed``, cycle through three
kinds: during start-up (imports, data, model), at a random time inside a random training step, and
while a checkpoint is being written (as soon as its temporary ``.step-*`` folder appears). Every
relaunch uses ``resume=true``. At the end it checks, against a reference run in another folder:

- the final checkpoint's model, head and training-state tensors are exactly equal;
- no temporary ``.step-*`` folder is left and every remaining checkpoint verifies;
- ``metrics.jsonl`` has no repeated step and, apart from timings, the same rows.

Prints a summary, writes ``<out>/summary.json``, exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prm.checkpoint import (  # noqa: E402
    HEAD_FILE,
    STATE_TENSORS,
    latest_checkpoint,
    load_training_state,
    verify_checkpoint,
)
from prm.tracking import read_metrics  # noqa: E402

VOLATILE = ("time", "throughput/", "memory/")
KINDS = ("startup", "step", "write")


def command(run_dir: Path, steps: int, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "train.py"),
        "experiment=smoke",
        f"train.steps={steps}",
        "train.save_every=1",
        "resume=true",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def environment(out: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        WANDB_MODE="disabled",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PRM_CACHE_DIR=str(out / "cache"),
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
    )
    return env


def logged_step(run_dir: Path, since: float = 0.0) -> int:
    """The last step ``metrics.jsonl`` holds, in a row logged after time ``since`` (0 when none)."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return 0
    for line in reversed(lines):
        try:
            row = json.loads(line)
            return int(row.get("step", 0)) if row.get("time", 0.0) >= since else 0
        except (json.JSONDecodeError, TypeError, ValueError, AttributeError):
            continue
    return 0


def temporary(run_dir: Path) -> set[str]:
    try:
        return {n for n in os.listdir(run_dir / "checkpoints") if n.startswith(".step-")}
    except FileNotFoundError:
        return set()


def writing(run_dir: Path, above: int, old: set[str]) -> bool:
    """Whether a new checkpoint temporary folder (not in ``old``) of a step above ``above`` exists."""
    for name in temporary(run_dir) - old:
        if name.startswith(".step-") and not name.endswith(".replaced"):
            try:
                if int(name[6:13]) > above:
                    return True
            except ValueError:
                continue
    return False


def kill_group(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def attempt(cmd, env, log, trigger, timeout: float) -> tuple[str, float]:
    """Run ``cmd`` until ``trigger(elapsed)`` says kill (-> "killed") or it exits ("exit <rc>")."""
    start = time.perf_counter()
    with open(log, "a", encoding="utf-8") as out:
        proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            while proc.poll() is None:
                elapsed = time.perf_counter() - start
                if trigger is not None and trigger(elapsed):
                    kill_group(proc)
                    return "killed", elapsed
                if elapsed > timeout:
                    kill_group(proc)
                    return "timeout", elapsed
                time.sleep(0.002)
        except BaseException:
            if proc.poll() is None:
                kill_group(proc)
            raise
    return f"exit {proc.returncode}", time.perf_counter() - start


def make_trigger(kind: str, rng: random.Random, run_dir: Path, steps: int, timing: dict):
    """A kill condition of ``kind`` at a random point of the remaining run; also its description."""
    newest = latest_checkpoint(run_dir)  # the relaunch redoes the steps after it
    done = int(newest.name.split("-")[1]) if newest is not None else 0
    if done >= steps:  # nothing left to interrupt but the start-up
        kind = "startup"
    if kind == "startup":
        at = rng.uniform(0.0, timing["startup"])
        return (lambda elapsed: elapsed >= at), f"start-up, {at:.2f}s after launch"
    if kind == "step":
        target = rng.randint(done + 1, max(done + 1, steps - 1))
        delay = rng.uniform(0.0, timing["step"])
        state = {"seen": None, "launched": time.time()}

        def trigger(elapsed):  # rows of the killed launch before it count only after truncation
            if state["seen"] is None and logged_step(run_dir, state["launched"]) >= target:
                state["seen"] = elapsed
            return state["seen"] is not None and elapsed - state["seen"] >= delay

        return trigger, f"{delay:.3f}s after step {target} was logged"
    target, old = rng.randint(done, steps - 1), temporary(run_dir)  # old: left by a killed launch
    return (lambda elapsed: writing(run_dir, target, old)), f"while writing a checkpoint past step {target}"


def tensors_of(checkpoint: Path) -> dict:
    from safetensors.torch import load_file

    found = {}
    for name in ("model.safetensors", HEAD_FILE, STATE_TENSORS):
        if (checkpoint / name).is_file():
            found.update({f"{name}:{k}": v for k, v in load_file(checkpoint / name).items()})
    return found


def stable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith(VOLATILE)} for row in rows]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "kill_resume")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one launch may take")
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides for both runs")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env, rng = environment(out), random.Random(args.seed)
    reference, killed = out / "reference", out / "killed"
    for folder in (reference, killed):
        if folder.exists():
            raise SystemExit(f"{folder} exists: choose an empty --out")

    print(f"reference run: {args.steps} steps, uninterrupted", flush=True)
    launched = time.time()
    result, seconds = attempt(
        command(reference, args.steps, args.overrides), env, out / "reference.log", None, args.timeout
    )
    if result != "exit 0":
        raise SystemExit(f"the reference run failed ({result}); see {out / 'reference.log'}")
    rows = read_metrics(reference / "metrics.jsonl")
    times = [r["time"] for r in rows if "step" in r]
    per_step = (times[-1] - times[0]) / max(1, len(times) - 1)
    timing = {"startup": max(0.5, times[0] - launched - per_step), "step": per_step}
    print(f"  {seconds:.1f}s: start-up ~{timing['startup']:.1f}s, {per_step:.2f}s per step", flush=True)

    events, kills = [], 0
    while kills < args.kills:
        kind = KINDS[kills % len(KINDS)]
        trigger, where = make_trigger(kind, rng, killed, args.steps, timing)
        before = logged_step(killed)
        result, seconds = attempt(
            command(killed, args.steps, args.overrides), env, out / "killed.log", trigger, args.timeout
        )
        kills += result == "killed"
        events.append(
            {
                "kind": kind,
                "where": where,
                "result": result,
                "seconds": round(seconds, 2),
                "logged_before": before,
                "logged_after": logged_step(killed),
            }
        )
        print(
            f"  launch {len(events)}: {kind:7s} {where}: {result} after {seconds:.1f}s, "
            f"logged steps {before} -> {events[-1]['logged_after']}",
            flush=True,
        )
        if result != "killed":
            break  # finished (or failed) before the kill point
    for _ in range(3):  # resume until it finishes
        if events and events[-1]["result"] == "exit 0":
            break
        result, seconds = attempt(
            command(killed, args.steps, args.overrides), env, out / "killed.log", None, args.timeout
        )
        events.append({"kind": "final", "where": "-", "result": result, "seconds": round(seconds, 2)})
        print(f"  final resume: {result} after {seconds:.1f}s", flush=True)

    finished = events[-1]["result"] == "exit 0"
    a, b = latest_checkpoint(reference), latest_checkpoint(killed)
    equal = bool(finished and b is not None and a.name == b.name)
    if equal:
        ta, tb = tensors_of(a), tensors_of(b)
        equal = ta.keys() == tb.keys() and all(ta[k].equal(tb[k]) for k in ta)
        equal = equal and load_training_state(a)["step"] == load_training_state(b)["step"]
    stale = sorted(p.name for p in (killed / "checkpoints").glob(".step-*"))
    damaged = {p.name: r for p in (killed / "checkpoints").glob("step-*") if (r := verify_checkpoint(p))}
    steps_logged = Counter(r["step"] for r in read_metrics(killed / "metrics.jsonl") if "step" in r)
    repeated = sum(n - 1 for n in steps_logged.values())
    metrics_equal = stable(read_metrics(killed / "metrics.jsonl")) == stable(rows)
    summary = {
        "kills": kills,
        "launches": len(events),
        "finished": finished,
        "final_checkpoint": b.name if b else None,
        "equal_weights": equal,
        "stale_folders": stale,
        "damaged_checkpoints": damaged,
        "repeated_rows": repeated,
        "metrics_equal": metrics_equal,
        "events": events,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    ok = finished and equal and not stale and not damaged and repeated == 0 and metrics_equal
    print(
        f"{kills} kills over {len(events)} launches; final {summary['final_checkpoint']}: "
        f"weights {'EQUAL' if equal else 'DIFFER'} to the uninterrupted run; stale folders {len(stale)}; "
        f"damaged checkpoints {len(damaged)}; repeated metric rows {repeated}; "
        f"metrics {'equal' if metrics_equal else 'DIFFER'} -> {'OK' if ok else 'FAILED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
