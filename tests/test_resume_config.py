"""Resume continues one run: the checkpoint's config.yaml against the new config (prm/training/state.py).

A key that changes results and differs is refused before anything loads (ConfigError, exit status 2
from train.py), naming every such key with its old and new value; result-neutral keys pass;
``resume_allow_changes`` accepts named keys on purpose and records them; sweep jobs resume their own run.
"""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import smoke_config
from omegaconf import OmegaConf
from smoke_runs import weights

from prm.checkpoint import (
    LATEST,
    latest_checkpoint,
    load_training_state,
    write_manifest,
    write_training_state,
)
from prm.config import ConfigError
from prm.training.state import (
    ABSENT,
    FIXED_ON_RESUME,
    RESULT_NEUTRAL_KEYS,
    ConfigChange,
    compare_resume_configs,
    config_differences,
    continue_schedule,
    is_under,
    same_value,
)

ROOT = Path(__file__).resolve().parent.parent


def cosine_lr(base: float, step: int, total: int) -> float:
    """transformers' cosine schedule without warmup (round(0.05 x total) = 0 for total < 10):
    base x 0.5 (1 + cos(pi step / total))."""
    return base * 0.5 * (1.0 + math.cos(math.pi * step / total))


# ------------------------------------------------------------------- the comparison, plain dicts


def test_config_differences_walks_nested_keys_and_reports_added_removed_and_lists():
    old = {
        "seed": 0,
        "train": {"steps": 4, "optimizer": {"lr": 1e-3, "betas": [0.9, 0.999]}},
        "data": {"limit": 48, "name": "demo"},
        "gone": {"a": 1},
    }
    new = {
        "seed": 0,
        "train": {"steps": 8, "optimizer": {"lr": 1e-3, "betas": [0.9, 0.99]}},
        "data": {"limit": {"train": 48}, "name": "demo"},
        "added": [1, 2],
    }
    assert config_differences(old, new) == [
        ConfigChange("added", ABSENT, [1, 2]),
        ConfigChange("data.limit", 48, {"train": 48}),  # a value on one side, a subtree on the other
        ConfigChange("gone", {"a": 1}, ABSENT),
        ConfigChange("train.optimizer.betas", [0.9, 0.999], [0.9, 0.99]),  # a list is one value
        ConfigChange("train.steps", 4, 8),
    ]
    assert config_differences(old, old) == [] and config_differences({}, {}) == []
    assert str(ConfigChange("gone", {"a": 1}, ABSENT)) == 'gone: {"a": 1} -> (absent)'
    assert ConfigChange("added", ABSENT, [1, 2]).as_dict() == {"key": "added", "new": [1, 2]}


def test_same_value_rules(tmp_path, monkeypatch):
    assert not same_value(True, 1) and not same_value(False, 0) and same_value(True, True)
    assert same_value(2, 2.0) and not same_value(2, 2.5) and not same_value(1, "1")
    assert same_value(float("nan"), float("nan")) and not same_value(None, "null")
    assert same_value([{"a": [1, 2]}], [{"a": [1, 2]}]) and not same_value([1, 2], [1, 2, 3])
    # one folder spelled relative and absolute is one value; two folders, or missing paths, are not
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cold").mkdir()
    (tmp_path / "warm").mkdir()
    assert same_value("cold", str(tmp_path / "cold")) and same_value("./cold", "cold")
    assert not same_value("cold", "warm") and not same_value("gone", str(tmp_path / "gone"))
    assert (
        config_differences({"backbone": {"path": "cold"}}, {"backbone": {"path": str(tmp_path / "cold")}})
        == []
    )


def test_is_under_matches_whole_key_segments():
    assert is_under("train.steps", ["train"]) and is_under("train.steps", ["train.steps"])
    assert not is_under("train.stepsize", ["train.steps"]) and not is_under("train", ["train.steps"])
    assert not any(is_under(key, FIXED_ON_RESUME) for key in RESULT_NEUTRAL_KEYS)


OLD = {
    "seed": 0,
    "resume": False,
    "resume_allow_changes": [],
    "logger": {"jsonl": True},
    "train": {"steps": 4, "save_every": 2, "validate_every": 2, "optimizer": {"lr": 0.001}},
}


def changed(**edits):
    """OLD with dotted keys replaced (``train__steps=8``)."""
    new = json.loads(json.dumps(OLD))
    for dotted, value in edits.items():
        *parents, leaf = dotted.split("__")
        node = new
        for part in parents:
            node = node[part]
        node[leaf] = value
    return new


def test_refusal_names_every_result_key_with_old_and_new_values():
    new = changed(
        seed=1, train__steps=8, train__validate_every=1, train__save_every=1, logger={"jsonl": False}
    )
    new["train"]["optimizer"]["lr"] = 0.05
    new["prompt"] = {"name": "marker"}
    with pytest.raises(ConfigError) as caught:
        compare_resume_configs(OLD, new, checkpoint="run/checkpoints/step-0000004")
    message = str(caught.value)
    assert message.startswith("resume: run/checkpoints/step-0000004 was written under another config")
    assert (
        'Keys that change results (checkpoint -> now): prompt: (absent) -> {"name": "marker"}; seed: 0 -> 1; '
        "train.optimizer.lr: 0.001 -> 0.05; train.steps: 4 -> 8; train.validate_every: 2 -> 1. "
    ) in message
    assert "resume_allow_changes=[prompt,seed,train.steps,train.validate_every]." in message
    assert "train.optimizer.lr cannot change on resume" in message
    assert "save_every" not in message and "jsonl" not in message  # result-neutral: not listed


def test_neutral_keys_pass_and_allowed_keys_are_accepted():
    new = changed(resume=True, train__save_every=1, logger={"jsonl": False})
    result = compare_resume_configs(OLD, new)
    assert result.accepted == []
    assert result.neutral == [
        ConfigChange("logger.jsonl", True, False),
        ConfigChange("resume", False, True),
        ConfigChange("train.save_every", 2, 1),
    ]
    extended = changed(train__steps=8, resume_allow_changes=["train"])
    result = compare_resume_configs(OLD, extended, allow=["train"])  # a parent key allows its keys
    assert result.accepted == [ConfigChange("train.steps", 4, 8)]
    assert result.neutral == [ConfigChange("resume_allow_changes", [], ["train"])]


def test_allow_list_refuses_misspelt_keys_and_keys_the_checkpoint_restores():
    with pytest.raises(ConfigError, match=r"resume_allow_changes=\['train.step'\]: train.step is not a key"):
        compare_resume_configs(OLD, changed(train__steps=8), allow=["train.step"])
    new = changed(train__steps=8)
    new["train"]["optimizer"]["lr"] = 0.05
    with pytest.raises(ConfigError) as caught:
        compare_resume_configs(OLD, new, allow=["train"])
    message = str(caught.value)
    assert "change results (checkpoint -> now): train.optimizer.lr: 0.001 -> 0.05. " in message
    assert "train.optimizer.lr cannot change on resume" in message and "resume_allow_changes=[" not in message


def test_continue_schedule_moves_the_lr_to_the_new_schedule():
    """A cosine schedule over 2 steps ends at lr 0; loaded into the schedule of a 4-step run it keeps
    the optimiser's saved lr 0 until continue_schedule sets base x lambda_4(2) = 0.5 base."""
    from prm.schedules import step_schedule, warmup_schedule

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.001)
    short = warmup_schedule(optimizer, total_steps=2, name="cosine", warmup_ratio=0.05)
    for _ in range(2):
        optimizer.step()
        short.step()
    assert optimizer.param_groups[0]["lr"] == 0.0  # cos(pi) = -1 exactly
    state = short.state_dict()
    resumed = torch.optim.SGD([param], lr=0.001)  # as restore() does: build, then load both states
    longer = warmup_schedule(resumed, total_steps=4, name="cosine", warmup_ratio=0.05)
    resumed.load_state_dict(optimizer.state_dict())
    longer.load_state_dict(state)
    assert resumed.param_groups[0]["lr"] == 0.0 and longer.last_epoch == 2
    continue_schedule(longer)
    # float64: cos(pi/2) = 6.1e-17 vanishes in 1 + 6.1e-17 (half an ulp of 1 is 1.1e-16), so 0.5 exactly
    assert resumed.param_groups[0]["lr"] == 0.001 * 0.5 == longer.get_last_lr()[0]
    stepped = step_schedule(resumed, total_steps=4, step_size=1, gamma=0.5)
    before = resumed.param_groups[0]["lr"]
    continue_schedule(stepped)  # StepLR does not depend on the run's length: unchanged
    assert resumed.param_groups[0]["lr"] == before


# --------------------------------------------------------------------------- through training


def fake_checkpoint(run: Path, cfg, step: int = 1) -> Path:
    """A checkpoint folder that verifies and holds only config.yaml and a training state: no model, so
    a run that loaded anything from it would fail otherwise than with the config check."""
    folder = run / "checkpoints" / f"step-{step:07d}"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")
    write_training_state(folder, {"step": step})
    write_manifest(folder, step)
    (run / "checkpoints" / LATEST).write_text(folder.name + "\n")
    (run / "metrics.jsonl").write_text('{"step": 1, "prm/loss": 0.5}\n')
    return folder


def test_train_refuses_another_config_before_anything_loads(cache):
    from prm.training import train

    run = cache / "run"
    fake_checkpoint(run, smoke_config("train.steps=1"))
    before = sorted(p.relative_to(run).as_posix() for p in run.rglob("*"))
    with pytest.raises(ConfigError, match=r"seed: 0 -> 1; train\.optimizer\.lr: 0\.001 -> 0\.05\."):
        train(smoke_config("train.steps=1", "resume=true", "seed=1", "train.optimizer.lr=0.05"), run_dir=run)
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*")) == before  # nothing written
    assert (run / "metrics.jsonl").read_text() == '{"step": 1, "prm/loss": 0.5}\n'  # not truncated


@pytest.mark.slow
def test_train_py_refusal_names_every_key_and_exits_2(cache):
    run = cache / "run"
    fake_checkpoint(run, smoke_config("train.steps=1"))
    env = {"PRM_CACHE_DIR": str(cache / "cache"), "WANDB_MODE": "disabled", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            "experiment=smoke",
            "train.steps=1",
            "resume=true",
            "seed=1",
            "train.optimizer.lr=0.05",
            "schedule=linear",
            "train.save_every=1",  # result-neutral: not listed
            f"hydra.run.dir={run}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: resume: ") and "Traceback" not in result.stderr
    assert (
        "Keys that change results (checkpoint -> now): backbone.seed: 0 -> 1; schedule.name: "
        '"cosine" -> "linear"; seed: 0 -> 1; train.optimizer.lr: 0.001 -> 0.05. '
    ) in lines[0]
    assert "resume_allow_changes=[backbone.seed,seed]." in lines[0]
    assert "schedule.name, train.optimizer.lr cannot change on resume" in lines[0]
    assert not (run / "preflight.json").exists()  # the data was never read


def test_result_neutral_changes_resume_to_the_uninterrupted_result(cache):
    from prm.training import train

    overrides = ["train.steps=2", "train.save_every=1", "train.validate_every=1"]
    full = cache / "full"
    train(smoke_config(*overrides), run_dir=full)
    interrupted = cache / "interrupted"
    first = interrupted / "checkpoints" / "step-0000001"
    shutil.copytree(full / "checkpoints" / "step-0000001", first)
    neutral = ["train.save_every=2", "train.keep_last_n_checkpoints=5", "train.max_nonfinite_steps=3"]
    neutral += ["optimized_metric=loss", "logger=none"]
    metrics = train(smoke_config(*overrides, *neutral, "resume=true"), run_dir=interrupted)
    assert set(metrics) >= {"auroc", "loss"}
    a, b = weights(latest_checkpoint(full)), weights(latest_checkpoint(interrupted))
    assert latest_checkpoint(interrupted).name == "step-0000002" and a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key  # the neutral keys changed nothing
    history = load_training_state(latest_checkpoint(interrupted))["resume_history"]
    assert history == [
        {
            "step": 1,
            "checkpoint": str(first),
            "changes": [],
            "neutral": [
                {"key": "logger.jsonl", "old": True, "new": False},
                {"key": "optimized_metric", "old": "auroc", "new": "loss"},
                {"key": "resume", "old": False, "new": True},
                {"key": "train.keep_last_n_checkpoints", "old": 2, "new": 5},
                {"key": "train.max_nonfinite_steps", "old": 10, "new": 3},
                {"key": "train.save_every", "old": 1, "new": 2},
            ],
        }
    ]
    text = (latest_checkpoint(interrupted) / "config.yaml").read_text()
    assert (
        f"# - at step 1 from {first}\n" in text and "#   result-neutral: logger.jsonl: true -> false;" in text
    )


def test_allowed_train_steps_extends_the_run_and_is_recorded(cache):
    from prm.training import train

    run = cache / "run"
    train(smoke_config("train.steps=2"), run_dir=run)  # smoke: validates and saves at step 2
    rows = (run / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match=r"train\.steps: 2 -> 4\. .*resume_allow_changes=\[train\.steps\]"):
        train(smoke_config("train.steps=4", "resume=true"), run_dir=run)
    assert (run / "metrics.jsonl").read_text() == rows
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step-")] == ["step-0000002"]

    shorten = ["train.steps=1", "resume=true", "resume_allow_changes=[train.steps]"]
    with pytest.raises(ConfigError, match=r"is at step 2, past train\.steps=1: a run cannot be shortened"):
        train(smoke_config(*shorten), run_dir=run)
    assert (run / "metrics.jsonl").read_text() == rows

    extend = ["train.steps=4", "train.save_every=1", "resume=true", "resume_allow_changes=[train.steps]"]
    train(smoke_config(*extend), run_dir=run)
    final = latest_checkpoint(run)
    assert final.name == "step-0000004"
    entry = {
        "step": 2,
        "checkpoint": str(run / "checkpoints" / "step-0000002"),
        "changes": [{"key": "train.steps", "old": 2, "new": 4}],
        "neutral": [
            {"key": "resume", "old": False, "new": True},
            {"key": "resume_allow_changes", "old": [], "new": ["train.steps"]},
            {"key": "train.save_every", "old": 2, "new": 1},
        ],
    }
    assert load_training_state(final)["resume_history"] == [entry]
    saved = (final / "config.yaml").read_text()
    assert OmegaConf.create(saved).train.steps == 4  # the values of the run from the resume on
    assert "#   changed on purpose (resume_allow_changes): train.steps: 2 -> 4\n" in saved

    # The schedule: steps 1-2 ran on the 2-step cosine (ending at lr 0), steps 3-4 on the 4-step one.
    # The logged lr is the one set after each step: base x lambda(step). Float64 of the same formula;
    # transformers multiplies pi, 0.5, 2 and the progress in another order: a few ulps (rel 1e-12).
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    lrs = [row["prm/lr"] for row in logged if "prm/lr" in row]
    expected = [cosine_lr(1e-3, 1, 2), 0.0, cosine_lr(1e-3, 3, 4), 0.0]
    assert lrs == pytest.approx(expected, rel=1e-12, abs=1e-18)
    # Step 3 already ran on the new schedule (lr 0.5e-3, not the saved 0): the weights moved.
    step2, step3 = (
        weights(run / "checkpoints" / "step-0000002"),
        weights(run / "checkpoints" / "step-0000003"),
    )
    assert not all(torch.equal(step2[key], step3[key]) for key in step2)


@pytest.mark.slow
def test_a_reordered_sweep_resumes_each_job_from_its_own_folder(cache):
    """A seed sweep interrupted after step 1, re-run with the seeds in the other order: each job resumes
    its own folder (named by its overrides) and ends equal to its uninterrupted run; a seed-1 run
    pointed at seed 0's folder is refused by the config check."""
    from prm.training import train

    sweep = cache / "sweep"
    env = {"PRM_CACHE_DIR": str(cache / "cache"), "WANDB_MODE": "disabled", "PATH": "/usr/bin:/bin"}
    common = ["experiment=smoke", "train.steps=2", "train.save_every=1", "train.validate_every=0"]

    def sweep_run(seeds, *extra):
        command = [
            sys.executable,
            "train.py",
            "-m",
            *common,
            f"seed={seeds}",
            *extra,
            f"hydra.sweep.dir={sweep}",
        ]
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]

    sweep_run("0,1")
    jobs = {
        seed: sweep / f"experiment=smoke,seed={seed},train.save_every=1,train.steps=2,train.validate_every=0"
        for seed in (0, 1)
    }
    expected = {}
    for seed, job in jobs.items():
        expected[seed] = weights(job / "checkpoints" / "step-0000002")
        shutil.rmtree(job / "checkpoints" / "step-0000002")  # interrupted after step 1
        (job / "checkpoints" / LATEST).unlink()
    assert not all(torch.equal(expected[0][k], expected[1][k]) for k in expected[0])  # seeds differ

    sweep_run("1,0", "resume=true")
    for seed, job in jobs.items():
        final = latest_checkpoint(job)
        assert final.name == "step-0000002" and OmegaConf.load(final / "config.yaml").seed == seed
        history = load_training_state(final)["resume_history"]
        assert [(h["step"], h["checkpoint"], h["changes"]) for h in history] == [
            (1, str(job / "checkpoints" / "step-0000001"), [])
        ]
        got = weights(final)
        assert all(torch.equal(expected[seed][k], got[k]) for k in expected[seed]), seed

    # The folder layout aside, the config check refuses one seed's checkpoint for another seed's run.
    overrides = [o for o in common if o != "experiment=smoke"]
    with pytest.raises(ConfigError, match=r"backbone\.seed: 0 -> 1; seed: 0 -> 1\."):
        train(smoke_config(*overrides, "seed=1", "resume=true"), run_dir=jobs[0])


def test_a_checkpoint_written_before_a_rename_reads_in_todays_keys():
    from prm.training.state import upgrade_saved_config

    old = {"prm": {"head": "token", "loss_target": "both"}, "reweight": {"upper": {"lr": 1}}}
    new, notes = upgrade_saved_config(old)
    assert new == {
        "prm": {"head": "token", "loss_target": None},
        "reweight": {"upper": {"lr": 1, "loss_target": "both", "optimizers": None, "grad_scale": "none"}},
    }
    assert old["prm"]["loss_target"] == "both"  # the input is not changed
    assert notes[0] == "prm.loss_target=both read as reweight.upper.loss_target=both (renamed)"
    # plain training: no upper node, the old key's value has nowhere to go and nothing is added there
    plain, notes = upgrade_saved_config({"prm": {"loss_target": "+"}, "reweight": {"upper": None}})
    assert plain == {"prm": {"loss_target": None}, "reweight": {"upper": None}}
    assert "dropped" in notes[0]
    # today's configs pass through unchanged
    today = {
        "prm": {"loss_target": None},
        "reweight": {"upper": {"loss_target": "+", "optimizers": None, "grad_scale": "rms"}},
    }
    assert upgrade_saved_config(today) == (today, [])
