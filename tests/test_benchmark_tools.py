"""Small tools of the benchmarks: experiments/benchmarks/random_weights.py (a real architecture with
random weights, for speed figures where the weights cannot travel) and the scoring's eval-mode guard
(prm.evaluation.scoring.eval_mode)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from prm.evaluation.scoring import eval_mode
from prm.model.backbones import build_backbone

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks" / "random_weights.py"
spec = importlib.util.spec_from_file_location("random_weights", SCRIPT)
random_weights = importlib.util.module_from_spec(spec)
spec.loader.exec_module(random_weights)


def test_random_copy_has_the_architecture_and_tokenizer_but_not_the_weights(tmp_path):
    source = tmp_path / "source"
    backbone = build_backbone("qwen2")
    backbone.model.save_pretrained(source)
    backbone.tokenizer.save_pretrained(source)
    count = random_weights.write_random_copy(source, tmp_path / "random", dtype="float32", seed=3)

    original = AutoModelForCausalLM.from_pretrained(source)
    copy = AutoModelForCausalLM.from_pretrained(tmp_path / "random")
    written = AutoConfig.from_pretrained(tmp_path / "random").to_dict()
    keys = ["model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads"]
    keys += ["intermediate_size", "vocab_size", "tie_word_embeddings", "rope_parameters"]
    assert {key: written[key] for key in keys} == {key: original.config.to_dict()[key] for key in keys}
    assert count == sum(p.numel() for p in original.parameters())
    named = dict(original.named_parameters())
    for name, weight in copy.named_parameters():
        assert weight.shape == named[name].shape
    # the random weights are not the source's (a layer-norm weight starts at 1 in both: skip them)
    projections = [name for name, _ in copy.named_parameters() if name.endswith("q_proj.weight")]
    assert projections and all(
        not torch.equal(dict(copy.named_parameters())[name], named[name]) for name in projections
    )
    text = "Step 1: 3 + 4 = 7.\n\nStep 2: so the answer is 7."
    assert (
        AutoTokenizer.from_pretrained(tmp_path / "random")(text).input_ids
        == backbone.tokenizer(text).input_ids
    )
    # seeded: a second copy is the same model
    random_weights.write_random_copy(source, tmp_path / "again", dtype="float32", seed=3)
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "again")
    assert all(torch.equal(a, b) for a, b in zip(copy.parameters(), again.parameters(), strict=True))


def test_random_copy_needs_a_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        random_weights.write_random_copy(tmp_path, tmp_path / "out")


def test_eval_mode_restores_each_module_and_leaves_an_eval_model_alone():
    model = torch.nn.Sequential(
        torch.nn.Linear(2, 2), torch.nn.Dropout(0.5), torch.nn.Sequential(torch.nn.Dropout())
    )
    model.train()
    model[2].eval()  # a mixed state: the top and two children training, the inner block not
    before = [m.training for m in model.modules()]
    assert before == [True, True, True, False, False]
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
        x = torch.ones(4, 2)
        assert torch.equal(model(x), model(x))  # no dropout
    assert [m.training for m in model.modules()] == before
    with pytest.raises(RuntimeError), eval_mode(model):  # restored on an error too
        raise RuntimeError("scoring failed")
    assert [m.training for m in model.modules()] == before
    model.eval()
    with eval_mode(model):
        pass
    assert not any(m.training for m in model.modules())
