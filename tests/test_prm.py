"""The PRM: scores equal the two-token renormalised softmax, per-example losses by hand, batch invariance."""

import math

import pytest
import torch
from numerics import assert_close_at_scale

from prm.data.dataset import ChainDataset, PRMCollator
from prm.data.records import StepChain
from prm.model.backbones import build_backbone
from prm.model.prm import ProcessRewardModel

CHAINS = [
    StepChain(id="a", question="What is 2 + 3?", steps=["2 + 3 = 5.", "Final answer: 5"], labels=[1.0, 0.75]),
    StepChain(
        id="b",
        question="What is 4 x 2?",
        steps=["4 x 2 = 9.", "So it is 9.", "Final answer: 9"],
        labels=[0.0, None, 0.0],
    ),
    StepChain(id="c", question="Count the tiles.", steps=["There are 4 tiles."], labels=[None]),
]


@pytest.fixture(scope="module")
def backbone():
    return build_backbone("qwen2")


def batch_of(backbone, chains):
    return PRMCollator(backbone)([ChainDataset(chains)[i] for i in range(len(chains))])


@pytest.mark.numerics
def test_token_scores_are_two_token_softmax_of_full_logits():
    """In float64: the head's projection onto the row difference and the full-vocabulary softmax
    agree to FLOAT64_PATHS of the scores' scale on any CPU (tests/numerics.py)."""
    backbone = build_backbone("qwen2", dtype="float64")
    prm = ProcessRewardModel(backbone, "token").eval()
    batch = batch_of(backbone, CHAINS)
    with torch.no_grad():
        scores = prm(batch)
        full = backbone.model(**batch["inputs"]).logits  # full vocabulary, for reference only
    plus, minus = backbone.label_token_ids
    assert full.dtype == torch.float64
    for row, chain in enumerate(CHAINS):
        n = len(chain.steps)
        logits = full[row, batch["marker_positions"][row, :n]]
        expected = torch.softmax(logits[:, [plus, minus]], -1)[:, 0]
        assert_close_at_scale(scores.probs[row, :n], expected, msg=chain.id)


def test_token_head_never_computes_full_vocabulary_logits(backbone):
    prm = ProcessRewardModel(backbone, "token")
    calls = []
    handle = backbone.model.get_output_embeddings().register_forward_hook(lambda *args: calls.append(1))
    try:
        prm(batch_of(backbone, CHAINS))
    finally:
        handle.remove()
    assert calls == []


def _bce(logit, target):
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


@pytest.mark.numerics
@pytest.mark.parametrize("head", ["token", "value"])
def test_per_example_losses_by_hand(backbone, head):
    prm = ProcessRewardModel(backbone, head).eval()
    batch = batch_of(backbone, CHAINS)
    with torch.no_grad():
        scores = prm(batch)
        losses, has_label = prm.losses(scores, batch["step_labels"])
    # By hand in double precision from the model's own logits; the suite's loss is a few elementwise
    # float32 operations on them (log-sigmoid or sigmoid, product, mean of <= 3 steps): <= 10 roundings
    # of 2^-24 = 6e-8 relative each, no cancellation (losses ~0.1-0.7), so within 6e-7 relative on any
    # CPU; rel=1e-5 leaves 16x, while a wrong label or step moves a loss by over 1e-2.
    z = scores.logits.tolist()
    if head == "token":
        expected_a = (_bce(z[0][0], 1.0) + _bce(z[0][1], 0.75)) / 2
        expected_b = (_bce(z[1][0], 0.0) + _bce(z[1][2], 0.0)) / 2
    else:
        sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
        expected_a = ((sig(z[0][0]) - 1.0) ** 2 + (sig(z[0][1]) - 0.75) ** 2) / 2
        expected_b = ((sig(z[1][0]) - 0.0) ** 2 + (sig(z[1][2]) - 0.0) ** 2) / 2
    assert losses.tolist() == pytest.approx([expected_a, expected_b, 0.0], rel=1e-5)
    assert has_label.tolist() == [True, True, False]


@pytest.mark.numerics
@pytest.mark.parametrize("family", ["qwen2", "qwen2_vl", "internvl", "causal_lm"])
@pytest.mark.parametrize("head", ["token", "value"])
def test_batch_invariance(family, head, tmp_path):
    from prm.data.sources import DataSources
    from prm.data.synthetic import DemoBenchmark

    sources = DataSources(
        generator=DemoBenchmark(tmp_path, train_per_domain=3, meta_size=2, test_problems=1, n_candidates=2)
    )
    chains = sources.load("train")
    backbone = build_backbone(  # float64: batch and alone agree to FLOAT64_PATHS on any CPU
        family, processor_kwargs={"crop_to_patches": False} if family == "internvl" else None, dtype="float64"
    )
    prm = ProcessRewardModel(backbone, head).eval()
    with torch.no_grad():
        together = prm.losses(prm(batch_of(backbone, chains)), batch_of(backbone, chains)["step_labels"])[0]
        alone = torch.cat(
            [
                prm.losses(prm(batch_of(backbone, [c])), batch_of(backbone, [c])["step_labels"])[0]
                for c in chains
            ]
        )
    assert_close_at_scale(together, alone)


def test_gradients_reach_backbone_and_value_head(backbone):
    prm = ProcessRewardModel(backbone, "value")
    batch = batch_of(backbone, CHAINS)
    losses, _ = prm.losses(prm(batch), batch["step_labels"])
    losses.sum().backward()
    assert prm.value_head.weight.grad.abs().sum() > 0
    assert backbone.model.get_input_embeddings().weight.grad.abs().sum() > 0
    prm.zero_grad()


def test_value_head_starts_fresh_from_a_plain_backbone_checkpoint(backbone, tmp_path):
    from prm.checkpoint import load_head

    backbone.save_pretrained(tmp_path)  # a real checkpoint has no head.safetensors
    prm = ProcessRewardModel(backbone, "value")
    before = prm.value_head.weight.clone()
    prm.load_head_state_dict(load_head(tmp_path))
    assert torch.equal(prm.value_head.weight, before)
    saved = {"value_head.weight": torch.ones_like(before), "value_head.bias": torch.zeros(1)}
    prm.load_head_state_dict(saved)
    assert torch.equal(prm.value_head.weight, torch.ones_like(before))
