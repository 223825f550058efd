"""LoRA adapters (peft) and gradient checkpointing: what trains, a bi-level run, resume, merge."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import smoke_config
from numerics import assert_close_at_scale
from PIL import Image
from safetensors.torch import load_file
from smoke_runs import PER_BATCH

from prm.checkpoint import LATEST, latest_checkpoint, load_training_state
from prm.data.dataset import ChainDataset, PRMCollator
from prm.data.records import StepChain
from prm.distributed import free_port
from prm.evaluation.scoring import score_chains
from prm.model import lora
from prm.model.backbones import build_backbone
from prm.model.build import load_prm
from prm.model.families import family_names
from prm.model.lora import merging
from prm.model.prm import ProcessRewardModel

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = family_names(tiny=True)  # every family with a tiny model, from the registry
ENABLED = {"enabled": True, "r": 4, "alpha": 8}
BILEVEL = [
    "reweight=instance_table",
    *PER_BATCH,
    "backbone.lora.enabled=true",
    "backbone.lora.r=4",
    "train.steps=4",
    "train.save_every=2",
    "train.validate_every=2",
    "train.optimizer.lr=0.05",
    "reweight.hypergradient.unroll_steps=2",
    "reweight.upper.optimizer.lr=0.1",
]


def chains(folder: Path, with_images: bool) -> list[StepChain]:
    images = []
    if with_images:
        for colour in ("red", "blue"):
            Image.new("RGB", (56, 56), colour).save(folder / f"{colour}.png")
            images.append(str(folder / f"{colour}.png"))
    return [
        StepChain(
            id="a",
            question="What is 2 + 3?",
            steps=["2 + 3 = 5.", "Final answer: 5"],
            labels=[1.0, 0.75],
            images=images[:1],
        ),
        StepChain(
            id="b",
            question="What is 4 x 2?",
            steps=["4 x 2 = 9.", "So it is 9.", "Final answer: 9"],
            labels=[0.0, None, 0.0],
            images=images[1:],
        ),
    ]


def batch_of(backbone, items):
    return PRMCollator(backbone)([ChainDataset(items)[i] for i in range(len(items))])


def test_settings_are_validated():
    assert lora.LoraSettings.of(None) == lora.LoraSettings()
    settings = lora.LoraSettings.of({"enabled": True, "r": 2, "target_modules": ["q_proj", "v_proj"]})
    assert settings.target_modules == ("q_proj", "v_proj") and settings.alpha == 16.0
    with pytest.raises(ValueError, match="unknown key.*'rank'"):
        lora.LoraSettings.of({"rank": 4})
    with pytest.raises(ValueError, match="lora.r must be >= 1"):
        lora.LoraSettings.of({"r": 0})
    with pytest.raises(ValueError, match="dropout"):
        lora.LoraSettings.of({"dropout": 1.0})


@pytest.mark.parametrize("head", ["token", "value"])
def test_only_adapters_and_value_head_train(head):
    backbone = build_backbone("qwen2", lora=ENABLED)
    prm = ProcessRewardModel(backbone, head)
    trainable = {name for name, p in prm.named_parameters() if p.requires_grad}
    adapters = {name for name in trainable if ".lora_A." in name or ".lora_B." in name}
    expected_head = {"value_head.weight", "value_head.bias"} if head == "value" else set()
    assert trainable == adapters | expected_head
    # every linear layer of the decoder but the LM head: q, k, v, o, gate, up, down in each of 2 layers
    assert len(adapters) == 2 * 7 * 2
    assert not backbone.model.get_output_embeddings().weight.requires_grad  # the label rows are frozen
    assert lora.trainable_parameters(prm) == [p for _, p in prm.named_parameters() if p.requires_grad]
    # B starts at zero: the adapted model scores exactly like its base at first
    plain = ProcessRewardModel(build_backbone("qwen2"), head)
    if head == "value":
        plain.value_head.load_state_dict(prm.value_head.state_dict())
    batch = batch_of(backbone, chains(Path("."), False))
    with torch.no_grad():
        assert torch.equal(prm.eval()(batch).logits, plain.eval()(batch).logits)


def test_lower_problem_differentiates_trainable_parameters_only():
    from betty.configs import Config

    from prm.bilevel.lower import PRMLower

    prm = ProcessRewardModel(build_backbone("qwen2", lora=ENABLED), "token")
    optimizer = torch.optim.SGD(lora.trainable_parameters(prm), lr=0.1)
    lower = PRMLower(name="prm", config=Config(), module=prm, optimizer=optimizer, train_data_loader=[])
    parameters = lower.trainable_parameters()
    assert parameters and all(p.requires_grad for p in parameters)
    assert len(parameters) == 28 < len(list(prm.parameters()))


@pytest.mark.numerics
def test_added_marker_row_trains_and_reloads_exactly(tmp_path):
    """A checkpoint without the step marker: the new (randomly initialised) row is trained and saved
    with the adapter, so the reloaded adapter gives the same outputs whatever the new draw was. In
    float64, so the merged model (W + BA) equals the adapters (W and BA apart) to FLOAT64_PATHS."""
    base = tmp_path / "base"
    build_backbone("causal_lm").save_pretrained(base)
    torch.manual_seed(1)
    adapted = build_backbone("causal_lm", path=str(base), step_marker="<mark>", lora=ENABLED, dtype="float64")
    assert adapted.new_token_ids == (adapted.step_marker_id,)
    trainable = [name for name, p in adapted.model.named_parameters() if p.requires_grad]
    assert [name for name in trainable if "lora_" not in name] == [
        "model.embed_tokens.token_adapter.trainable_tokens_delta.default"
    ]
    with torch.no_grad():
        for parameter in adapted.model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05)
    saved = tmp_path / "adapter"
    adapted.save_pretrained(saved)
    config = json.loads((saved / lora.ADAPTER_CONFIG).read_text())
    assert config["base_model_name_or_path"] == str(base.resolve())
    assert (saved / "config.json").is_file() and not (saved / "model.safetensors").exists()
    torch.manual_seed(2)  # a different draw for the resized row
    reloaded = build_backbone(
        "causal_lm", path=str(saved), step_marker="<mark>", lora=ENABLED, dtype="float64"
    )
    # lora disabled: merged
    merged = build_backbone("causal_lm", path=str(saved), step_marker="<mark>", dtype="float64")
    assert merged.peft_model is None and all(p.requires_grad for p in merged.model.parameters())
    ids = torch.tensor([[1, 5, 9, adapted.step_marker_id, 7]])
    outputs = []
    for backbone in (adapted, reloaded, merged):
        with torch.no_grad():
            outputs.append(backbone.model.eval().model(input_ids=ids).last_hidden_state)
    assert outputs[0].dtype == torch.float64 and torch.equal(outputs[0], outputs[1])
    assert_close_at_scale(outputs[2], outputs[0])
    # the token head reads the label rows through peft's wrapper of the (tied) LM head
    batch = batch_of(adapted, chains(tmp_path, False))
    with torch.no_grad():
        scores = [ProcessRewardModel(b, "token").eval()(batch).logits for b in (adapted, reloaded, merged)]
    assert torch.equal(scores[0], scores[1])
    assert_close_at_scale(scores[2], scores[0])


def test_a_tiny_base_is_rebuilt_as_it_was_built(tmp_path):
    """An adapter over a tiny random base reloads onto the same base even when the loading run's
    backbone settings (seed, sizes) differ: tiny_base.json records what built it."""
    adapted = build_backbone("qwen2", seed=3, lora=ENABLED)
    with torch.no_grad():
        for parameter in adapted.model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05)
    adapted.save_pretrained(tmp_path)
    assert json.loads((tmp_path / lora.TINY_BASE).read_text())["seed"] == 3
    reloaded = build_backbone("qwen2", path=str(tmp_path), seed=0, tiny={"hidden_size": 32}, lora=ENABLED)
    ids = torch.tensor([[1, 5, 9, adapted.step_marker_id, 7]])
    with torch.no_grad():
        a = adapted.model.eval().model(input_ids=ids).last_hidden_state
        b = reloaded.model.eval().model(input_ids=ids).last_hidden_state
    assert torch.equal(a, b)
    (tmp_path / lora.TINY_BASE).unlink()
    with pytest.raises(FileNotFoundError, match="tiny_base.json is missing"):
        build_backbone("qwen2", path=str(tmp_path), lora=ENABLED)


def test_an_adapter_with_a_missing_base_is_an_error(tmp_path):
    base = tmp_path / "base"
    build_backbone("causal_lm").save_pretrained(base)
    build_backbone("causal_lm", path=str(base), lora=ENABLED).save_pretrained(tmp_path / "adapter")
    shutil.rmtree(base)
    with pytest.raises(FileNotFoundError, match="base_model_name_or_path=.*does not exist"):
        build_backbone("causal_lm", path=str(tmp_path / "adapter"), lora=ENABLED)


@pytest.mark.numerics
@pytest.mark.parametrize("adapters", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tmp_path, family, adapters):
    results = []
    for checkpointing in (False, True):
        backbone = build_backbone(  # float64: the two paths agree to FLOAT64_PATHS on any CPU
            family, lora=ENABLED if adapters else None, gradient_checkpointing=checkpointing, dtype="float64"
        )
        prm = ProcessRewardModel(backbone, "token").train()
        calls = []  # calls of the first decoder (and vision) layer's MLP: a second one is the recomputation
        for suffix in ("layers.0.mlp", "blocks.0.mlp", "encoder.layer.0.mlp"):
            for name, module in backbone.model.named_modules():
                if name.endswith(suffix) and "lora" not in name:
                    module.register_forward_pre_hook(lambda *args, name=name, calls=calls: calls.append(name))
        with torch.no_grad():  # non-zero B, so the adapters' gradients are all non-trivial
            for name, parameter in prm.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
        batch = batch_of(backbone, chains(tmp_path, backbone.is_multimodal))
        losses, has_label = prm.losses(prm(batch), batch["step_labels"])
        loss = (losses * has_label).sum()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in prm.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
        assert len(calls) == (2 if checkpointing else 1) * (2 if backbone.is_multimodal else 1), calls
        assert backbone.model.is_activation_checkpointing == checkpointing
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert_close_at_scale(loss_b, loss_a)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for name in grads_a:
        assert_close_at_scale(grads_b[name], grads_a[name], msg=name)


@pytest.mark.numerics
def test_bilevel_lora_run_trains_resumes_exactly_and_merges(cache):
    """reweight=instance_table on the tiny Qwen2-VL with adapters: the frozen base never moves, the
    adapters and the instance weights do; a run resumed from step 2 ends bit-identical to the
    uninterrupted one; the merged model scores like the adapter model."""
    from prm.training import train

    full = cache / "full"
    train(smoke_config(*BILEVEL), run_dir=full)
    final = latest_checkpoint(full)
    assert final.name == "step-0000004"
    assert (final / lora.ADAPTER_CONFIG).is_file() and not (final / "model.safetensors").exists()
    adapter = load_file(final / lora.ADAPTER_WEIGHTS)
    assert adapter and all("lora_" in key for key in adapter)
    assert all(adapter[key].abs().max() > 0 for key in adapter if "lora_B" in key)  # B left zero: trained
    moved = [
        w for w in json.loads((full / "weights.json").read_text())["weights"].values() if abs(w - 1) > 1e-6
    ]
    assert moved, "no hypergradient reached the instance table through the adapters"

    # the base is the seeded tiny model, untouched: equal to a fresh build, tensor for tensor
    prm = load_prm(final)
    fresh = dict(build_backbone("qwen2_vl", seed=0).model.named_parameters())
    for name, parameter in prm.model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(parameter, fresh[name.replace(".base_layer", "")]), name

    interrupted = cache / "interrupted"
    shutil.copytree(full / "checkpoints" / "step-0000002", interrupted / "checkpoints" / "step-0000002")
    (interrupted / "checkpoints" / LATEST).write_text("step-0000002\n")
    train(smoke_config(*BILEVEL, "resume=true"), run_dir=interrupted)
    resumed = latest_checkpoint(interrupted)
    assert resumed.name == final.name
    for key, value in load_file(resumed / lora.ADAPTER_WEIGHTS).items():
        assert torch.equal(value, adapter[key]), key
    a, b = (load_training_state(c)["upper"]["module"] for c in (final, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    merged_dir = cache / "merged"
    assert merging.main(["merge", str(full), str(merged_dir)]) == 0
    assert (merged_dir / "model.safetensors").is_file() and not (merged_dir / lora.ADAPTER_CONFIG).exists()
    merged = load_prm(merged_dir)
    assert merged.backbone.peft_model is None
    meta = [chain for chain in _meta_chains(cache)]
    # scored in float64: W + BA (merged, stored in float32) against W and BA apart, to FLOAT64_PATHS
    prm, merged = prm.double(), merged.double()
    with_adapter, without = score_chains(prm, meta, batch_size=8), score_chains(merged, meta, batch_size=8)
    assert len(with_adapter) == len(meta) == 16
    assert_close_at_scale(torch.cat(without), torch.cat(with_adapter))
    with pytest.raises(FileExistsError):
        merging.merge_checkpoint(full, merged_dir)
    with pytest.raises(ValueError, match="not a LoRA checkpoint"):
        merging.merge_checkpoint(merged_dir, cache / "again")


def _meta_chains(cache):
    from hydra.utils import instantiate

    return instantiate(smoke_config().data).load("meta")


@pytest.mark.slow
def test_lora_under_zero3_on_two_processes_matches_one_process(cache):
    """ZeRO-3 partitions the frozen base as well; DARTS perturbs the adapters' shards only. The learned
    weights and adapters of 2 processes x batch 2 match 1 process x batch 4."""
    common = [
        "experiment=smoke",
        "reweight=instance_table",
        *PER_BATCH,
        "backbone.lora.enabled=true",
        "train.steps=4",
        "train.save_every=4",
        "train.validate_every=0",
        "reweight.upper.optimizer.lr=0.5",
    ]
    env = {
        **os.environ,
        "PRM_CACHE_DIR": str(cache / "cache"),
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "disabled",
    }
    runs = {
        "one": [sys.executable, "train.py", "data.batch_size=4", "reweight.upper.batch_size=4"],
        "zero3": [
            *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"),
            *("--master_port", str(free_port()), "train.py", "distributed=zero3"),
            *("data.batch_size=2", "reweight.upper.batch_size=2"),
            "distributed.deepspeed.zero_optimization.stage3_param_persistence_threshold=0",
        ],
    }
    for name, command in runs.items():
        result = subprocess.run(
            [*command, f"hydra.run.dir={cache / name}", *common],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    one, zero3 = (json.loads((cache / n / "weights.json").read_text())["weights"] for n in runs)
    assert one.keys() == zero3.keys() and sum(abs(w - 1) > 1e-6 for w in one.values()) > 0
    # Measured (ATen AVX2 and default kernels, MKL AUTO and COMPATIBLE, every process at 1 thread):
    # weights 5.0e-5 apart on both kernel paths alike (they move by up to 0.34), adapters 1.2e-6 to
    # 1.5e-6 (scale 0.18). Without LoRA the same runs agree to 1.2e-7 (tests/test_distributed.py).
    assert max(abs(one[k] - zero3[k]) for k in one) < 1e-4
    a, b = (load_file(latest_checkpoint(cache / n) / lora.ADAPTER_WEIGHTS) for n in runs)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=0, msg=key)
