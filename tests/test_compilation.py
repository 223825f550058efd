"""train.compile: the repeated blocks are compiled one by one; scores and gradients are unchanged (in
float64, to ``numerics.FLOAT64_PATHS`` of their scale on any CPU: tests/numerics.py)."""

import pytest
import torch
from numerics import assert_close_at_scale

from prm.data.dataset import ChainDataset, PRMCollator
from prm.data.records import StepChain
from prm.model import last_layer
from prm.model.backbones import build_backbone
from prm.model.compilation import compile_blocks, repeated_blocks
from prm.model.prm import ProcessRewardModel

CHAINS = [
    StepChain(id="a", question="What is 2 + 3?", steps=["2 + 3 = 5.", "Final answer: 5"], labels=[1.0, 0.0]),
    StepChain(id="b", question="What is 4 x 2?", steps=["4 x 2 = 9.", "So 9."], labels=[0.0, 1.0]),
]


def _scores_and_grads(prm, batch):
    scores = prm(batch)
    loss = prm.losses(scores, batch["step_labels"])[0].sum()
    params = [p for p in prm.parameters() if p.requires_grad]
    return scores.logits.detach(), torch.autograd.grad(loss, params)


def test_repeated_blocks_finds_the_decoder_and_vision_stacks():
    text = build_backbone("causal_lm").model
    assert repeated_blocks(text) == list(text.model.layers)
    for family in ("qwen2_vl", "internvl"):
        model = build_backbone(family).model
        blocks = repeated_blocks(model)
        names = {type(block).__name__ for block in blocks}
        assert len(names) == 2, (family, names)  # vision blocks and decoder layers
        assert all(block in blocks for block in model.model.language_model.layers)


@pytest.mark.numerics
@pytest.mark.parametrize("mode", ["scores", "full"])
def test_compiled_blocks_keep_scores_gradients_and_the_last_layer_path(mode):
    backbone = build_backbone("causal_lm", dtype="float64")
    backbone.model.train()
    base = backbone.model.model
    prm = ProcessRewardModel(backbone, "token", last_layer=mode)
    batch = PRMCollator(backbone)([ChainDataset(CHAINS)[i] for i in range(len(CHAINS))])
    expected = _scores_and_grads(prm, batch)

    count = compile_blocks(prm, backend="eager")  # dynamo tracing without inductor's C++ build
    layers = list(base.layers)
    compiled = [layer._compiled_call_impl is not None for layer in layers]
    if mode == "scores":  # the last layer stays eager, so the score-positions path still applies
        assert compiled == [True] * (len(layers) - 1) + [False]
        assert last_layer.supports(base)
    else:
        assert compiled == [True] * len(layers)
    assert count == sum(compiled)
    torch._dynamo.reset()
    counts = torch._dynamo.utils.counters
    counts.clear()
    got = _scores_and_grads(prm, batch)
    assert counts["stats"]["calls_captured"] > 0  # the compiled layers ran through dynamo
    assert_close_at_scale(got[0], expected[0], msg="scores")
    for a, b in zip(got[1], expected[1], strict=True):
        assert_close_at_scale(a, b)


def test_a_compiled_last_layer_takes_the_full_path():
    backbone = build_backbone("causal_lm")
    base = backbone.model.model
    base.layers[-1].compile(backend="eager")
    assert not last_layer.supports(base)


def test_compiling_checkpointed_layers_warns(caplog):
    backbone = build_backbone("causal_lm", gradient_checkpointing=True)
    prm = ProcessRewardModel(backbone, "token")
    compile_blocks(prm, backend="eager")
    assert "dynamo does not trace the checkpointed layers" in caplog.text
    caplog.clear()
    compile_blocks(ProcessRewardModel(build_backbone("causal_lm"), "token"), backend="eager")
    assert "checkpointed" not in caplog.text
