"""Training through Betty: checkpoints, resume equals an uninterrupted run, CLI train-then-evaluate."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import smoke_config
from safetensors.torch import load_file
from smoke_runs import weights

from prm.checkpoint import LATEST, latest_checkpoint, load_training_state

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("head", ["token", "value"])
def test_resume_matches_uninterrupted_run(cache, head):
    from prm.training import train

    overrides = [
        "train.steps=6",
        "train.save_every=3",
        "train.validate_every=3",
        f"prm.head={head}",
        "train.gradient_accumulation=2",
    ]
    full = cache / "full"
    train(smoke_config(*overrides), run_dir=full)
    assert latest_checkpoint(full).name == "step-0000006"  # optimiser steps (12 micro-batches)

    # An interrupted copy: only the checkpoint at step 3 survived.
    interrupted = cache / "interrupted"
    shutil.copytree(full / "checkpoints" / "step-0000003", interrupted / "checkpoints" / "step-0000003")
    (interrupted / "checkpoints" / LATEST).write_text("step-0000003\n")
    train(smoke_config(*overrides, "resume=true"), run_dir=interrupted)

    final_full, final_resumed = latest_checkpoint(full), latest_checkpoint(interrupted)
    assert final_resumed.name == final_full.name
    a, b = weights(final_full), weights(final_resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    if head == "value":
        assert torch.equal(
            load_file(final_full / "head.safetensors")["value_head.weight"],
            load_file(final_resumed / "head.safetensors")["value_head.weight"],
        )


def test_checkpoint_is_a_loadable_backbone_path(cache, monkeypatch):
    """A run started with backbone.path=<checkpoint> begins from that checkpoint's weights: its PRM's
    parameters right after setup_model equal, bit for bit, the first run's parameters at its end (what
    the checkpoint holds), and differ from a fresh initialisation (the first run's start)."""
    from prm.training import recipe, train

    snapshots = {"start": [], "end": []}

    def parameters(run):
        return {name: p.detach().clone() for name, p in run.prm.named_parameters()}

    def setup_model(run):
        original_setup_model(run)
        snapshots["start"].append(parameters(run))

    def finish(run):
        snapshots["end"].append(parameters(run))
        return original_finish(run)

    original_setup_model, original_finish = recipe.setup_model, recipe.finish
    monkeypatch.setattr(recipe, "setup_model", setup_model)
    monkeypatch.setattr(recipe, "finish", finish)

    first = cache / "first"
    train(smoke_config("train.steps=2"), run_dir=first)
    checkpoint = latest_checkpoint(first)
    assert checkpoint.name == "step-0000002"  # the last step: the first run's end
    assert (checkpoint / "config.yaml").is_file() and (checkpoint / "training_state.json").is_file()
    second = cache / "second"
    metrics = train(smoke_config("train.steps=1", f"backbone.path={checkpoint}"), run_dir=second)
    assert "auroc" in metrics
    lines = (second / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 1

    fresh, trained, loaded = snapshots["start"][0], snapshots["end"][0], snapshots["start"][1]
    assert loaded.keys() == trained.keys() == fresh.keys()
    for name in trained:
        assert torch.equal(loaded[name], trained[name]), name
    assert not all(torch.equal(fresh[name], loaded[name]) for name in fresh)  # not a fresh init


def test_failed_save_leaves_previous_checkpoint_intact(cache, monkeypatch):
    from prm.checkpoint import store as ckpt
    from prm.training import train

    run = cache / "run"
    train(smoke_config("train.steps=2", "train.save_every=1"), run_dir=run)
    before = latest_checkpoint(run)
    snapshot = weights(before)

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ckpt, "write_training_state", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        ckpt.save_checkpoint(run, 99, _prm_from(before), {}, "")
    assert latest_checkpoint(run) == before
    assert not (run / "checkpoints" / "step-0000099").exists()
    assert all(torch.equal(snapshot[k], v) for k, v in weights(before).items())
    # Saving the same step again: a failure keeps the old folder, a success replaces it whole.
    with pytest.raises(RuntimeError, match="disk full"):
        ckpt.save_checkpoint(run, 2, _prm_from(before), {}, "")
    assert latest_checkpoint(run) == before and (before / "training_state.json").is_file()
    monkeypatch.undo()
    ckpt.save_checkpoint(run, 2, _prm_from(before), {"marker": 1}, "again")
    assert (before / "config.yaml").read_text() == "again"
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")) == []


def _prm_from(checkpoint):
    from prm.model.build import load_prm

    return load_prm(checkpoint)


@pytest.mark.slow
def test_cli_train_then_evaluate(cache):
    env = {"PRM_CACHE_DIR": str(cache / "cache"), "WANDB_MODE": "disabled", "PATH": "/usr/bin:/bin"}
    run = cache / "cli"
    subprocess.run(
        [sys.executable, "train.py", "experiment=smoke", f"hydra.run.dir={run}"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    assert latest_checkpoint(run) is not None
    result = subprocess.run(
        [
            sys.executable,
            "evaluate.py",
            "data=demo",
            f"checkpoint={run}",
            "data.generator.train_per_domain=16",
            "data.generator.meta_size=16",
            "data.generator.test_problems=4",
            "data.generator.n_candidates=4",
            f"hydra.run.dir={run}/eval",
        ],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    rows = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert any("mean" in row and "aggregation" in row for row in rows)
    assert any("random" in row and "baseline" in row for row in rows)
    report = json.loads((run / "eval" / "best_of_n.json").read_text())
    assert set(report["aggregations"]) >= {"mean", "min", "max", "log_mean"}
    assert 0.0 <= report["aggregations"]["mean"]["accuracy"] <= report["baselines"]["pass_at_n"]["accuracy"]


@pytest.mark.slow
def test_evaluate_reads_published_test_formats(cache):
    """A text-only PRM evaluated on the DreamPRM-1.5 best-of-N sample and a ProcessBench sample."""
    env = {"PRM_CACHE_DIR": str(cache / "cache"), "WANDB_MODE": "disabled", "PATH": "/usr/bin:/bin"}
    run = cache / "text"
    subprocess.run(
        [sys.executable, "train.py", "experiment=smoke", "backbone=tiny_qwen2", f"hydra.run.dir={run}"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    fixtures = ROOT / "tests" / "fixtures"
    bestofn = subprocess.run(
        [
            sys.executable,
            "evaluate.py",
            f"checkpoint={run}",
            "data=dreamprm15",
            "data.missing_image=blank",
            f"data.test={fixtures / 'formats' / 'bestofn_test.json'}",
            f"hydra.run.dir={run}/eval_bon",
        ],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    assert "pass_at_n" in bestofn.stdout
    report = json.loads((run / "eval_bon" / "best_of_n.json").read_text())
    assert report["problems"] > 0
    bench = subprocess.run(
        [
            sys.executable,
            "evaluate.py",
            f"checkpoint={run}",
            "data=processbench",
            f"data.test={fixtures / 'published' / 'processbench_gsm8k_sample.json'}",
            f"hydra.run.dir={run}/eval_pb",
        ],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads((run / "eval_pb" / "processbench.json").read_text())["processbench"]
    assert (result["erroneous"], result["correct"]) == (10, 10)
    assert 0.0 <= result["f1"] <= 1.0
    assert "F1" in bench.stdout or "f1" in bench.stdout

    # Over-long chains (real ProcessBench math records): the default policy truncates or skips them,
    # counted in preflight.json; too_long=error names every one and scores nothing (exit status 2).
    long_sample = fixtures / "published" / "processbench_math_long_sample.json"
    common = [
        sys.executable,
        "evaluate.py",
        f"checkpoint={run}",
        "data=processbench",
        f"data.test={long_sample}",
    ]
    common += ["data.max_length=2048", "processbench.threshold=0.5"]
    subprocess.run(
        [*common, f"hydra.run.dir={run}/eval_long"], cwd=ROOT, env=env, check=True, capture_output=True
    )
    preflight = json.loads((run / "eval_long" / "preflight.json").read_text())
    assert preflight["test"] == {
        "read": 6,
        "kept": 5,
        "truncated": 2,
        "steps_dropped": 14,
        "skipped_first_error_cut": 1,
    }
    scored = json.loads((run / "eval_long" / "processbench.json").read_text())["processbench"]
    assert scored["erroneous"] + scored["correct"] == 5
    # The threshold split goes through the same checks: a threshold file holding the long chains
    # (and the gsm8k sample's correct ones) at max_length=2048 is truncated and counted, not
    # refused by the collator.
    gsm8k_sample = fixtures / "published" / "processbench_gsm8k_sample.json"
    threshold_file = run / "threshold.json"
    threshold_file.write_text(
        json.dumps(json.loads(long_sample.read_text()) + json.loads(gsm8k_sample.read_text()))
    )
    tuned = [c for c in common if c not in ("processbench.threshold=0.5", f"data.test={long_sample}")]
    subprocess.run(
        [
            *tuned,
            f"data.test={gsm8k_sample}",
            f"processbench.threshold_split={threshold_file}",
            f"hydra.run.dir={run}/eval_tuned",
        ],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    preflight = json.loads((run / "eval_tuned" / "preflight.json").read_text())
    assert preflight["test"] == {"read": 20, "kept": 20}
    assert preflight["threshold_split"] == {
        "read": 26,
        "kept": 25,
        "truncated": 2,
        "steps_dropped": 14,
        "skipped_first_error_cut": 1,
    }
    refused = subprocess.run(
        [*common, "data.too_long=error", f"hydra.run.dir={run}/eval_refused"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "3 chain(s) over data.max_length=2048" in refused.stderr
    assert all(f"'math-{n}'" in refused.stderr for n in (44, 76, 1))
    assert not (run / "eval_refused" / "processbench.json").exists()


@pytest.mark.parametrize("strategy", ["domain_table", "instance_table", "instance_net", "domain_instance"])
def test_reweighting_run_writes_weights_and_resumes_exactly(cache, strategy):
    from prm.training import train

    overrides = [
        f"reweight={strategy}",
        "train.steps=4",
        "train.save_every=2",
        "train.validate_every=2",
        "reweight.hypergradient.unroll_steps=2",
        "reweight.hypergradient.probe_chains=0",  # the lower batch (probe chains: their own test)
        "reweight.upper.batch_size=4",
        "reweight.upper.optimizer.lr=0.1",
    ]
    full = cache / "full"
    metrics = train(smoke_config(*overrides), run_dir=full)
    assert "auroc" in metrics
    report = json.loads((full / "weights.json").read_text())
    assert len(report["weights"]) == 48 and set(report["per_domain"]) == {"clean", "noisy", "easy"}
    assert "corruption" in report and (full / "weights.md").read_text().startswith("# Learned weights")
    moved = [w for w in report["weights"].values() if abs(w - 1.0) > 1e-6]
    assert moved, "the upper level never changed a weight"
    if strategy == "instance_table":  # two upper steps of 4 chains each: only sampled rows moved
        assert len(moved) <= 8
    if strategy == "domain_table":
        assert sum(report["domain_weights"].values()) / 3 == pytest.approx(1.0)
        # the weights' path: every upper step logs each domain's weight; the last equals the report
        rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
        path = [row for row in rows if "reweight/weight/noisy" in row]
        assert [row["step"] for row in path] == [2, 3, 4]  # upper steps at 2 and 4 (unroll 2)
        assert path[1]["reweight/weight/noisy"] == path[0]["reweight/weight/noisy"]
        assert path[2]["reweight/weight/noisy"] != path[1]["reweight/weight/noisy"]
        for domain, value in report["domain_weights"].items():
            assert path[-1][f"reweight/weight/{domain}"] == pytest.approx(value, abs=1e-6)
    state = load_training_state(latest_checkpoint(full))
    assert state["upper"]["steps"] == 2
    if strategy == "domain_instance":  # one optimiser and schedule per group: AdamW domain, SparseAdam rows
        assert set(state["upper"]["optimizer"]) == {"domain", "instance"} == set(state["upper"]["scheduler"])
        assert sum(report["domain_weights"].values()) / 3 == pytest.approx(1.0)
        assert state["upper"]["module"]["domain.theta"].abs().min() > 0  # every domain entry moved
        rows = state["upper"]["module"]["instance.theta"]
        start = rows.unique(return_counts=True)
        moved_rows = int((rows != start[0][start[1].argmax()]).sum())
        assert 0 < moved_rows <= 8  # two upper steps of 4 chains each: only sampled rows moved
    if strategy != "instance_net":
        assert (latest_checkpoint(full) / "weights.json").exists()

    interrupted = cache / "interrupted"
    shutil.copytree(full / "checkpoints" / "step-0000002", interrupted / "checkpoints" / "step-0000002")
    (interrupted / "checkpoints" / LATEST).write_text("step-0000002\n")
    train(smoke_config(*overrides, "resume=true"), run_dir=interrupted)
    a = load_training_state(latest_checkpoint(full))["upper"]["module"]
    b = load_training_state(latest_checkpoint(interrupted))["upper"]["module"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for key, value in weights(latest_checkpoint(full)).items():
        assert torch.equal(value, weights(latest_checkpoint(interrupted))[key]), key
    if strategy == "domain_instance":  # each group's optimiser state resumed exactly too
        a = load_training_state(latest_checkpoint(full))["upper"]["optimizer"]
        b = load_training_state(latest_checkpoint(interrupted))["upper"]["optimizer"]
        for group in ("domain", "instance"):
            for index, moments in a[group]["state"].items():
                for name, value in moments.items():
                    resumed = b[group]["state"][index][name]
                    assert torch.equal(torch.as_tensor(value), torch.as_tensor(resumed)), (group, name)


@pytest.mark.parametrize("strategy", ["small_loss", "oracle"])
def test_baseline_reweighting_runs_without_an_upper_level_and_resumes_exactly(cache, strategy):
    """reweight=small_loss / oracle: the lower problem calls the module itself (no meta set, no upper
    problem); the weight report says how well it found the corrupted chains; a resume continues it."""
    from prm.training import train

    overrides = [f"reweight={strategy}", "train.steps=4", "train.save_every=2", "train.validate_every=2"]
    if strategy == "small_loss":
        overrides += ["reweight.module.warmup_steps=2", "reweight.module.drop_rate=0.5"]
    full = cache / "full"
    train(smoke_config(*overrides), run_dir=full)
    report = json.loads((full / "weights.json").read_text())
    assert report["module"] == {"small_loss": "SmallLoss", "oracle": "Oracle"}[strategy]
    state = load_training_state(latest_checkpoint(full))
    assert "upper" not in state
    if strategy == "oracle":
        assert report["corruption"]["auroc_clean_vs_corrupted"] == 1.0
        assert report["corruption"]["corrupted_mean"] == 0.0
    else:  # 4 batches of 4 chains: rates 0, 0.25, 0.5, 0.5 -> 0 + 1 + 2 + 2 chains dropped
        assert int(state["reweighter"]["batches"]) == 4
        assert int(state["reweighter"]["dropped"].sum()) == 5
        assert int(state["reweighter"]["seen"].sum()) == 16

    interrupted = cache / "interrupted"
    shutil.copytree(full / "checkpoints" / "step-0000002", interrupted / "checkpoints" / "step-0000002")
    (interrupted / "checkpoints" / LATEST).write_text("step-0000002\n")
    train(smoke_config(*overrides, "resume=true"), run_dir=interrupted)
    for key, value in weights(latest_checkpoint(full)).items():
        assert torch.equal(value, weights(latest_checkpoint(interrupted))[key]), key
    if strategy == "small_loss":
        resumed = load_training_state(latest_checkpoint(interrupted))["reweighter"]
        for key, value in state["reweighter"].items():
            assert torch.equal(value, resumed[key]), key


def test_probe_chains_and_upper_warmup_train_and_resume_exactly(cache):
    """DARTS over 16 probe chains per upper step, the first upper step after 1 lower step: more rows
    move than the lower batches hold, and a resumed run draws the same probes and steps alike."""
    from prm.training import train

    overrides = [
        "reweight=instance_table",
        "train.steps=4",
        "train.save_every=2",
        "train.validate_every=2",
        "reweight.hypergradient.probe_chains=16",
        "reweight.hypergradient.warmup_steps=1",
        "reweight.hypergradient.unroll_steps=1",
        "reweight.upper.batch_size=4",
        "reweight.upper.optimizer.lr=0.1",
    ]
    full = cache / "full"
    train(smoke_config(*overrides), run_dir=full)
    state = load_training_state(latest_checkpoint(full))
    assert state["upper"]["steps"] == 3  # after lower steps 2, 3 and 4
    report = json.loads((full / "weights.json").read_text())
    moved = [w for w in report["weights"].values() if abs(w - 1.0) > 1e-6]
    assert len(moved) > 12  # 3 upper steps x 16 probes (the 3 lower batches hold 12 chains)

    interrupted = cache / "interrupted"
    shutil.copytree(full / "checkpoints" / "step-0000002", interrupted / "checkpoints" / "step-0000002")
    (interrupted / "checkpoints" / LATEST).write_text("step-0000002\n")
    train(smoke_config(*overrides, "resume=true"), run_dir=interrupted)
    a = load_training_state(latest_checkpoint(full))["upper"]["module"]
    b = load_training_state(latest_checkpoint(interrupted))["upper"]["module"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_meta_loss_refuses_a_non_probability_aggregation(cache):
    from prm.training import train

    with pytest.raises(ValueError, match="not a probability"):
        train(smoke_config("reweight=domain_table", "aggregation=sum_logit"), run_dir=cache / "run")


def _nan_loss_at(micro_batches):
    """A PRMLower.training_step that returns NaN on the given micro-batches (Betty's 1-based count)."""
    from prm.bilevel.lower import PRMLower

    original = PRMLower.training_step

    def training_step(self, batch):
        loss = original(self, batch)
        if self._count in micro_batches:
            loss = loss * float("nan")
            self._pending_metrics["loss"] = float("nan")
        return loss

    return training_step


def test_nonfinite_step_is_skipped_and_counted(cache, monkeypatch):
    from prm.bilevel.lower import PRMLower
    from prm.training import train

    monkeypatch.setattr(PRMLower, "training_step", _nan_loss_at({3}))  # optimiser step 2 of 2 micro-batches
    run = cache / "run"
    overrides = ["train.steps=4", "train.save_every=1", "train.keep_last_n_checkpoints=4"]
    train(smoke_config(*overrides, "train.gradient_accumulation=2"), run_dir=run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [row for row in rows if "prm/loss" in row]
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    assert [row["prm/nonfinite_steps"] for row in rows] == [0, 1, 1, 1]
    assert [row["prm/lr"] for row in rows] == sorted((row["prm/lr"] for row in rows), reverse=True)
    step1, step2, step3 = (weights(run / "checkpoints" / f"step-000000{i}") for i in (1, 2, 3))
    assert all(torch.equal(step1[k], step2[k]) for k in step1)  # the skipped step changed nothing
    assert not all(torch.equal(step2[k], step3[k]) for k in step2)  # and training went on
    assert all(torch.isfinite(v).all() for v in step3.values())


def test_nonfinite_steps_in_a_row_stop_the_run(cache, monkeypatch):
    from prm.bilevel.lower import PRMLower
    from prm.bilevel.nonfinite import NonFiniteError
    from prm.training import train

    monkeypatch.setattr(PRMLower, "training_step", _nan_loss_at({2, 3, 4}))
    with pytest.raises(NonFiniteError, match="3 optimiser steps in a row .the last: step 4."):
        train(smoke_config("train.steps=6", "train.max_nonfinite_steps=3"), run_dir=cache / "run")
    # Two in a row, then a finite step: the streak starts again.
    monkeypatch.undo()
    monkeypatch.setenv("PRM_CACHE_DIR", str(cache / "cache"))
    monkeypatch.setattr(PRMLower, "training_step", _nan_loss_at({2, 3, 5, 6}))
    train(smoke_config("train.steps=6", "train.max_nonfinite_steps=3"), run_dir=cache / "ok")


def test_a_nonfinite_model_is_never_saved(cache, monkeypatch):
    from prm.bilevel.lower import PRMLower
    from prm.bilevel.nonfinite import NonFiniteError
    from prm.training import train

    def poison(self):
        if self._count == 2:
            next(self.module.parameters()).data.fill_(float("nan"))

    monkeypatch.setattr(PRMLower, "param_callback", poison)
    run = cache / "run"
    with pytest.raises(NonFiniteError, match="step 2: the model holds non-finite parameters"):
        train(smoke_config("train.steps=4", "train.save_every=1", "train.validate_every=0"), run_dir=run)
    assert latest_checkpoint(run).name == "step-0000001"


def test_optimisers_and_schedules_come_from_config(cache):
    from prm.training import train

    run = cache / "run"
    overrides = ["train.steps=4", "schedule=step", "schedule.step_size=2", "schedule.gamma=0.1"]
    overrides += [
        "train.optimizer._target_=torch.optim.SGD",
        "~train.optimizer.betas",
        "train.optimizer.lr=0.5",
    ]
    overrides += [
        "reweight=instance_table",
        "reweight.upper.optimizer.lr=0.25",
        "reweight.upper.sampler_seed=7",
    ]
    train(smoke_config(*overrides), run_dir=run)
    state = load_training_state(latest_checkpoint(run))
    assert "momentum" in state["optimizer"]["param_groups"][0]  # SGD
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.5 * 0.1**2)  # StepLR(2, 0.1) x 4
    upper = state["upper"]["optimizer"]["param_groups"][0]
    assert upper["lr"] == 0.25 and "weight_decay" not in upper  # SparseAdam from instance_table.yaml
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["prm/lr"] for row in rows if "prm/lr" in row] == pytest.approx([0.5, 0.05, 0.05, 0.005])


def test_an_existing_run_is_neither_overwritten_nor_destroyed(cache):
    """resume=false into a folder with checkpoints is refused; resume=true where no checkpoint verifies
    is refused too, and nothing in the folder changes."""
    from prm.checkpoint import CheckpointError
    from prm.training import train

    run = cache / "run"
    train(smoke_config("train.steps=1", "train.save_every=1", "train.validate_every=0"), run_dir=run)
    with pytest.raises(CheckpointError, match="already holds checkpoints.*resume=true"):
        train(smoke_config("train.steps=1"), run_dir=run)
    (run / "checkpoints" / "step-0000001" / "training_state.json").unlink()
    before = sorted(p.name for p in (run / "checkpoints" / "step-0000001").iterdir())
    rows = (run / "metrics.jsonl").read_text()
    with pytest.raises(CheckpointError, match="none of the 1 checkpoint"):
        train(smoke_config("train.steps=2", "resume=true"), run_dir=run)
    assert sorted(p.name for p in (run / "checkpoints" / "step-0000001").iterdir()) == before
    assert (run / "metrics.jsonl").read_text() == rows
