"""Checkpoints: exact round trip of the training state without pickle, manifests, resume from the newest
checkpoint that verifies, stale temporary folders, pruning, metrics truncation, and (slow) kill -9."""

import json
import logging
import os
import pickle
import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import safetensors.torch
import torch
from conftest import compose_config
from safetensors.torch import save_file

from prm.checkpoint import (
    LATEST,
    VerifiedFolders,
    clean_stale,
    codec,
    decode_state,
    encode_state,
    find_resume_checkpoint,
    latest_checkpoint,
    load_training_state,
    manifest,
    prune,
    resolve_checkpoint,
    save_checkpoint,
    set_rng_state,
    verify_checkpoint,
)
from prm.tracking import Tracker, read_metrics, truncate_metrics

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------ helpers


class FakeBackbone:
    """Stands in for a backbone: save_pretrained writes a config and one weight file."""

    def __init__(self, value: float):
        self.value = value

    def save_pretrained(self, folder):
        folder = Path(folder)
        (folder / "config.json").write_text(json.dumps({"value": self.value}))
        save_file({"w": torch.full((4, 3), self.value)}, folder / "model.safetensors")


def fake_prm(value: float = 1.0):
    return SimpleNamespace(
        backbone=FakeBackbone(value), head_state_dict=lambda: {"value_head.weight": torch.ones(1, 3)}
    )


def save(run, step, keep_last=0, state=None, protected=(), verified=None):
    return save_checkpoint(
        run,
        step,
        fake_prm(step),
        state or {"n": step},
        "a: 1\n",
        keep_last=keep_last,
        protected=protected,
        verified=verified,
    )


def names(run):
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def assert_same(a, b, path="state"):
    """Exact structural equality: same types (tuples stay tuples), equal tensors bit for bit."""
    assert type(a) is type(b), (path, type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for key in a:
            assert_same(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}/{i}")
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), path
    else:
        assert a == b, path


def roundtrip(state):
    """Through the bytes that go to disk: safetensors for the tensors, JSON for the rest."""
    structure, tensors = encode_state(state)
    return decode_state(
        json.loads(json.dumps(structure)), safetensors.torch.load(safetensors.torch.save(tensors))
    )


# ---------------------------------------------------------------- round trip, no pickle


def trained(optimizer_class, scheduler, steps=3, sparse=False, **kwargs):
    torch.manual_seed(0)
    model = torch.nn.Embedding(5, 3, sparse=True) if sparse else torch.nn.Linear(3, 2)
    optimizer = optimizer_class(model.parameters(), **kwargs)
    schedule = scheduler(optimizer)
    for _ in range(steps):
        out = model(torch.tensor([0, 2])) if sparse else model(torch.randn(4, 3))
        out.pow(2).sum().backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    return model, optimizer, schedule


CASES = {
    "adamw_lambda": lambda: trained(
        torch.optim.AdamW,
        lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1 / (s + 1)),
        lr=0.1,
        betas=(0.9, 0.99),
    ),
    "sgd_step": lambda: trained(
        torch.optim.SGD, lambda o: torch.optim.lr_scheduler.StepLR(o, 2, 0.5), lr=0.1, momentum=0.9
    ),
    "sparse_adam": lambda: trained(
        torch.optim.SparseAdam, lambda o: torch.optim.lr_scheduler.StepLR(o, 1, 0.9), sparse=True, lr=0.1
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_optimizer_and_scheduler_state_round_trip_exactly_and_continue_identically(case):
    model, optimizer, schedule = CASES[case]()
    state = {"optimizer": optimizer.state_dict(), "scheduler": schedule.state_dict()}
    back = roundtrip(state)
    assert_same(state, back)
    assert isinstance(back["optimizer"]["param_groups"][0]["params"], list)
    assert set(back["optimizer"]["state"]) == set(state["optimizer"]["state"])  # integer keys stay ints

    # A copy of the model restored from the round trip takes exactly the same next steps.
    _, twin_opt, twin_sched = CASES[case]()
    twin_model = twin_opt.param_groups[0]["params"][0]
    twin_opt.load_state_dict(back["optimizer"])
    twin_sched.load_state_dict(back["scheduler"])
    for opt, sched in ((optimizer, schedule), (twin_opt, twin_sched)):
        params = opt.param_groups[0]["params"]
        out = params[0][torch.tensor([1, 2])] if case == "sparse_adam" else params[0] @ torch.ones(3)
        loss = out.pow(2).sum()
        loss.backward()
        if case == "sparse_adam":  # SparseAdam wants a sparse gradient
            params[0].grad = params[0].grad.to_sparse()
        opt.step()
        sched.step()
    assert torch.equal(optimizer.param_groups[0]["params"][0], twin_model)
    assert optimizer.param_groups[0]["lr"] == twin_opt.param_groups[0]["lr"]


def test_rng_states_and_odd_values_round_trip():
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    random.gauss(0, 1), np.random.standard_normal()  # cached gaussians are part of the state
    state = {
        "rng": codec.rng_state(),
        1: {(2, "a"): [1.5, float("inf"), float("nan"), None, True, "x"]},
        "empty": torch.zeros(0, 2),
        "shared": [torch.arange(3)] * 2,
        "bf16": torch.ones(2, dtype=torch.bfloat16),
        "np": (np.int64(7), np.float32(0.5), np.arange(6, dtype=np.uint8).reshape(2, 3)),
        "__tensor__": "a key that looks like a marker",
    }
    back = roundtrip(state)
    assert_same(state, back)
    expected = (random.random(), float(np.random.random()), torch.rand(2))
    set_rng_state(back["rng"])
    assert (random.random(), float(np.random.random())) == expected[:2]
    assert torch.equal(torch.rand(2), expected[2])


def test_values_that_need_pickle_are_refused_with_their_path():
    with pytest.raises(TypeError, match="'upper/module/f'.*function"):
        encode_state({"upper": {"module": {"f": len}}})
    with pytest.raises(TypeError, match="sparse"):
        encode_state({"t": torch.eye(2).to_sparse()})


class Planted:
    """Unpickling this creates a marker folder: proof that a pickle was loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_planted_pickle_is_never_unpickled(tmp_path, monkeypatch, caplog):
    marker = tmp_path / "pwned"
    legacy = tmp_path / "old" / "checkpoints" / "step-0000005"
    legacy.mkdir(parents=True)
    FakeBackbone(1.0).save_pretrained(legacy)
    (legacy / "training_state.pt").write_bytes(pickle.dumps(Planted(marker)))
    (legacy.parent / LATEST).write_text("step-0000005\n")

    def no_pickle(*args, **kwargs):
        raise AssertionError("pickle/torch.load called")

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    with pytest.raises(FileNotFoundError, match="training_state.pt, a pickle"):
        load_training_state(legacy)
    with caplog.at_level(logging.WARNING):
        assert find_resume_checkpoint(legacy.parent.parent) is None
    assert "older version" in caplog.text
    # A new checkpoint with the same planted file beside it: the file is ignored.
    run = tmp_path / "new"
    folder = save(run, 1)
    (folder / "training_state.pt").write_bytes(pickle.dumps(Planted(marker)))
    assert verify_checkpoint(folder) is None and load_training_state(folder)["n"] == 1
    assert not marker.exists()


# ------------------------------------------------------------------ manifest and resume


def test_a_saved_checkpoint_verifies_and_loads_back(tmp_path):
    folder = save(tmp_path, 7, state={"optimizer": {"state": {0: {"step": torch.tensor(7.0)}}}})
    assert folder.name == "step-0000007" and verify_checkpoint(folder) is None
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["step"] == 7
    assert set(manifest["files"]) == {
        "config.json",
        "model.safetensors",
        "head.safetensors",
        "training_state.safetensors",
        "training_state.json",
        "config.yaml",
    }
    state = load_training_state(folder)
    assert state["step"] == 7 and torch.equal(state["optimizer"]["state"][0]["step"], torch.tensor(7.0))
    assert set(state["rng"]) >= {"torch", "python", "numpy"}
    assert not list(folder.glob("*.pt"))


def test_resume_picks_the_newest_checkpoint_that_verifies_whatever_latest_says(tmp_path, caplog):
    for step in (1, 2, 3):
        save(tmp_path, step)
    root = tmp_path / "checkpoints"
    model = root / "step-0000003" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:-10])  # truncated by a crash
    with caplog.at_level(logging.WARNING):
        assert find_resume_checkpoint(tmp_path) == root / "step-0000002"
    assert "step-0000003: model.safetensors has" in caplog.text and "truncated" in caplog.text

    # Same size, one byte flipped: the hash catches it.
    data = bytearray((root / "step-0000002" / "training_state.json").read_bytes())
    data[-2] ^= 1
    (root / "step-0000002" / "training_state.json").write_bytes(bytes(data))
    assert "sha256" in verify_checkpoint(root / "step-0000002")
    assert find_resume_checkpoint(tmp_path) == root / "step-0000001"

    (root / LATEST).write_text("step-0000009\n")  # dangling
    assert find_resume_checkpoint(tmp_path) == root / "step-0000001"
    (root / LATEST).unlink()  # missing
    assert latest_checkpoint(tmp_path) == root / "step-0000001"
    (root / "step-0000001" / "manifest.json").unlink()
    assert find_resume_checkpoint(tmp_path) is None


def test_verification_hashes_again_only_after_a_file_changed(tmp_path, monkeypatch):
    folder = save(tmp_path, 1)
    calls = []
    real = manifest._sha256
    monkeypatch.setattr(manifest, "_sha256", lambda path: calls.append(path.name) or real(path))
    verified: VerifiedFolders = {}
    assert verify_checkpoint(folder, verified) is None and len(calls) == 6
    assert verify_checkpoint(folder, verified) is None and len(calls) == 6  # nothing changed: not read again
    assert list(verified) == [folder.resolve()]
    assert verify_checkpoint(folder) is None and len(calls) == 12  # no record given: nothing remembered
    assert verify_checkpoint(folder) is None and len(calls) == 18
    data = bytearray((folder / "config.yaml").read_bytes())
    data[0] ^= 1
    (folder / "config.yaml").write_bytes(bytes(data))
    assert "config.yaml: sha256 differs" in verify_checkpoint(folder, verified)


def test_resolve_checkpoint_verifies(tmp_path):
    for step in (1, 2):
        save(tmp_path, step)
    root = tmp_path / "checkpoints"
    assert resolve_checkpoint(tmp_path) == resolve_checkpoint(root) == root / "step-0000002"
    (root / "step-0000002" / "config.yaml").write_text("changed")
    with pytest.raises(FileNotFoundError, match="damaged checkpoint: config.yaml"):
        resolve_checkpoint(root / "step-0000002")
    assert resolve_checkpoint(tmp_path) == root / "step-0000001"
    plain = tmp_path / "downloaded"  # a save_pretrained folder of a backbone: no manifest, accepted
    plain.mkdir()
    FakeBackbone(0.0).save_pretrained(plain)
    assert resolve_checkpoint(plain) == plain
    shutil.rmtree(root / "step-0000001")
    with pytest.raises(FileNotFoundError, match="no checkpoint verifies"):
        resolve_checkpoint(tmp_path)


def test_stale_temporary_folders_are_removed_by_save_and_resume(tmp_path):
    save(tmp_path, 1)
    root = tmp_path / "checkpoints"
    (root / ".step-0000002.k3j1").mkdir()  # a write killed half way
    (root / ".step-0000002.k3j1" / "model.safetensors").write_bytes(b"half")
    save(tmp_path, 3)
    assert names(tmp_path) == [LATEST, "step-0000001", "step-0000003"]
    (root / ".step-0000004.x").mkdir()
    assert find_resume_checkpoint(tmp_path) == root / "step-0000003"
    assert names(tmp_path) == [LATEST, "step-0000001", "step-0000003"]
    # Killed between moving a same-step checkpoint aside and renaming its successor in: restored.
    os.replace(root / "step-0000003", root / ".step-0000003.replaced")
    (root / ".step-0000003.abcd").mkdir()
    assert clean_stale(tmp_path) == [root / ".step-0000003.abcd"]
    assert names(tmp_path) == [LATEST, "step-0000001", "step-0000003"]


def test_pruning_counts_only_valid_checkpoints_and_keeps_the_resumed_one(tmp_path):
    for step in (1, 2, 3, 4):
        save(tmp_path, step, keep_last=2)
    assert names(tmp_path) == [LATEST, "step-0000003", "step-0000004"]
    root = tmp_path / "checkpoints"
    (root / "step-0000004" / "model.safetensors").write_bytes(b"")  # damaged
    save(tmp_path, 5, keep_last=2)  # keeps 5 and 3 (valid); the damaged 4 does not count and goes
    assert names(tmp_path) == [LATEST, "step-0000003", "step-0000005"]

    # A damaged checkpoint newer than the one written stays (the run will overwrite it) but does not count.
    (root / "step-0000005" / "model.safetensors").write_bytes(b"")
    assert find_resume_checkpoint(tmp_path) == root / "step-0000003"
    resumed = [root / "step-0000003"]  # the run resumes from step 3: it protects that checkpoint
    save(tmp_path, 4, keep_last=1, protected=resumed)
    assert names(tmp_path) == [LATEST, "step-0000003", "step-0000004", "step-0000005"]
    save(tmp_path, 5, keep_last=1, protected=resumed)
    assert names(tmp_path) == [LATEST, "step-0000003", "step-0000005"]  # 3: resumed from, kept


def test_pruning_does_not_depend_on_a_training_state_read_before(tmp_path):
    # Reading a checkpoint's training state (once a module-level record that pruning consulted) leaves
    # pruning unchanged: only what the caller passes as ``protected`` is kept beyond keep_last.
    for step in (1, 2, 3):
        save(tmp_path, step, keep_last=0)
    root = tmp_path / "checkpoints"
    assert load_training_state(root / "step-0000001")["n"] == 1
    assert load_training_state(root / "step-0000002")["n"] == 2
    assert prune(root, 1, root / "step-0000003") == [root / "step-0000002", root / "step-0000001"]
    assert names(tmp_path) == [LATEST, "step-0000003"]
    # The same folders with the first one protected, given as an unresolved path: it stays.
    for step in (1, 2):
        save(tmp_path, step, keep_last=0)
    save(tmp_path, 4, keep_last=0)
    protected = [tmp_path / "checkpoints" / ".." / "checkpoints" / "step-0000001"]
    assert prune(root, 1, root / "step-0000004", protected) == [
        root / "step-0000003",
        root / "step-0000002",
    ]
    assert names(tmp_path) == [LATEST, "step-0000001", "step-0000004"]


def test_pruning_hashes_a_kept_checkpoint_once_with_the_callers_record(tmp_path, monkeypatch):
    calls = []
    real = manifest._sha256
    monkeypatch.setattr(manifest, "_sha256", lambda path: calls.append(path.parent.name) or real(path))
    verified: VerifiedFolders = {}
    save(tmp_path, 1, keep_last=5, verified=verified)
    save(tmp_path, 2, keep_last=5, verified=verified)  # prune reads step 1: its 6 files
    assert (calls.count("step-0000001"), calls.count("step-0000002")) == (6, 0)
    save(tmp_path, 3, keep_last=5, verified=verified)  # step 2 read; step 1 recorded, not read again
    assert (calls.count("step-0000001"), calls.count("step-0000002")) == (6, 6)
    save(tmp_path, 4, keep_last=5)  # no record: every kept checkpoint is read again
    assert [calls.count(f"step-000000{n}") for n in (1, 2, 3)] == [12, 12, 6]


# -------------------------------------------------------------------------------- metrics


def test_metrics_rows_past_the_resumed_step_are_dropped(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": s / 10} for s in (1, 2, 3, 4, 5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 6, "lo')  # cut by a kill
    with caplog.at_level(logging.INFO):
        assert truncate_metrics(path, 5) == 1
    assert "line 6: not a JSON row" in caplog.text and "(1 unparsable)" in caplog.text
    assert read_metrics(path) == rows
    assert truncate_metrics(path, 3) == 2
    assert read_metrics(path) == rows[:3]
    assert truncate_metrics(path, 3) == 0 and truncate_metrics(tmp_path / "none.jsonl", 1) == 0

    tracker = Tracker()
    tracker.start(tmp_path, {}, resume_step=2)
    tracker.log({"loss": 0.3}, 3)
    tracker.finish()
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]


# ------------------------------------------------------------------- training end to end


def test_resume_after_a_truncated_newest_checkpoint_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from train import train

    monkeypatch.setenv("PRM_CACHE_DIR", str(tmp_path / "cache"))
    overrides = ["experiment=smoke", "train.steps=4", "train.save_every=1", "train.validate_every=2"]
    cfg = compose_config(*overrides)
    resumed_cfg = compose_config(*overrides, "resume=true")
    full = tmp_path / "full"
    train(cfg, run_dir=full)
    final = latest_checkpoint(full)
    assert final.name == "step-0000004"
    expected = {k: v.clone() for k, v in load_file(final / "model.safetensors").items()}

    # A copy whose newest checkpoint was cut short; `latest` still names it; a stale temp folder.
    interrupted = tmp_path / "interrupted"
    shutil.copytree(full, interrupted)
    broken = interrupted / "checkpoints" / "step-0000004" / "model.safetensors"
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    (interrupted / "checkpoints" / ".step-0000004.tmp1").mkdir()
    train(resumed_cfg, run_dir=interrupted)

    resumed = latest_checkpoint(interrupted)
    assert resumed.name == "step-0000004" and verify_checkpoint(resumed) is None
    got = load_file(resumed / "model.safetensors")
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert names(interrupted) == [LATEST, "step-0000003", "step-0000004"]
    steps = [r["step"] for r in read_metrics(interrupted / "metrics.jsonl") if "step" in r]
    assert steps == [r["step"] for r in read_metrics(full / "metrics.jsonl") if "step" in r] == [1, 2, 3, 4]
    a, b = read_metrics(full / "metrics.jsonl"), read_metrics(interrupted / "metrics.jsonl")
    assert [r.get("prm/loss") for r in a] == [r.get("prm/loss") for r in b]

    # Killed while writing its first checkpoint: resume=true starts over, without the old rows.
    first = tmp_path / "first"
    (first / "checkpoints" / ".step-0000001.x").mkdir(parents=True)
    shutil.copy(full / "metrics.jsonl", first / "metrics.jsonl")
    train(compose_config(*overrides[:1], "train.steps=1", "resume=true"), run_dir=first)
    assert [r["step"] for r in read_metrics(first / "metrics.jsonl")] == [1]
    assert names(first) == [LATEST, "step-0000001"]


@pytest.mark.slow
def test_kill_9_loop_ends_equal_to_an_uninterrupted_run(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "experiments" / "kill_resume.py"),
            "--kills",
            "3",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["kills"] == 3 and summary["equal_weights"] and summary["repeated_rows"] == 0
    assert summary["stale_folders"] == [] and summary["metrics_equal"]


def test_a_training_run_protects_the_checkpoint_it_resumed_from_and_keeps_its_hash_record(
    tmp_path, monkeypatch
):
    from prm.training import state as training

    for step in (1, 2, 3):
        save(tmp_path, step)
    root = tmp_path / "checkpoints"
    verified: VerifiedFolders = {}
    resumed = training.resume_checkpoint(SimpleNamespace(resume=True), tmp_path, verified)
    assert resumed == root / "step-0000003" and list(verified) == [resumed.resolve()]
    monkeypatch.setattr(training, "training_state", lambda run: {"n": 4})
    run = SimpleNamespace(
        prm=fake_prm(4),
        reweighter=None,
        run_dir=tmp_path,
        config_yaml="a: 1\n",
        resume_history=[],
        cfg=SimpleNamespace(train=SimpleNamespace(keep_last_n_checkpoints=1)),
        world=SimpleNamespace(is_main=True),
        lower=None,
        checkpoint=resumed,
        verified=verified,
    )
    run.prm.parameters = lambda: iter(())
    for step in (4, 5):
        training.save(run, step)
    assert names(tmp_path) == [LATEST, "step-0000003", "step-0000005"]  # 3: resumed from, kept
    assert set(verified) == {root.resolve() / f"step-000000{n}" for n in (1, 2, 3, 4)}
    run.checkpoint = None  # a fresh run protects nothing
    training.save(run, 6)
    assert names(tmp_path) == [LATEST, "step-0000006"]
