"""The last decoder layer at the score positions only: same hidden states and gradients as the full layer.

Both paths run in float64 and agree to ``numerics.FLOAT64_PATHS`` (1e-5) of each tensor's scale on any
CPU (the bound is derived in tests/numerics.py); a wrong position or mask moves them by 1e-1 to 1e0 of
it (``test_a_wrong_position_or_mask_is_far_outside_the_tolerance``).
"""

import pytest
import torch
from numerics import FLOAT64_PATHS, assert_close_at_scale
from transformers import (
    LlamaConfig,
    LlamaModel,
    MistralConfig,
    MistralModel,
    Qwen2Config,
    Qwen2Model,
    Qwen3Config,
    Qwen3Model,
)

from prm.data.dataset import ChainDataset, PRMCollator
from prm.data.records import StepChain
from prm.model import last_layer
from prm.model.backbones import build_backbone
from prm.model.families import family_names
from prm.model.prm import ProcessRewardModel

SIZES = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)
MODELS = {
    "llama": lambda attn: LlamaModel(LlamaConfig(**SIZES, attn_implementation=attn)),
    "qwen2": lambda attn: Qwen2Model(Qwen2Config(**SIZES, attn_implementation=attn)),
    "qwen3": lambda attn: Qwen3Model(Qwen3Config(**SIZES, head_dim=8, attn_implementation=attn)),
    # a window shorter than the rows: the window's limit must reach the score positions' keys too
    "mistral": lambda attn: MistralModel(MistralConfig(**SIZES, sliding_window=5, attn_implementation=attn)),
}


def _inputs(kind: str):
    """Rows of 12 tokens: right-padded with a mask, packed with position resets, or plain (no mask).

    Padded rows end in at most 4 pads, fewer than mistral's window of 5: a pad query whose window
    holds only pads gets NaN under eager attention in float64 (transformers' float64 mask minimum
    turns -inf in its float32 softmax), and 0 x NaN then reaches every later position."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 97, (3, 12), generator=generator)
    if kind == "padded":
        mask = torch.ones(3, 12, dtype=torch.long)
        mask[1, 9:] = 0
        mask[2, 8:] = 0
        return {"input_ids": ids, "attention_mask": mask}, torch.tensor([[2, 7, 11], [0, 4, 8], [1, 3, 4]])
    if kind == "packed":  # row 0: chains of 7 and 5 tokens; rows 1, 2: one chain and a padded tail
        positions = torch.tensor(
            [list(range(7)) + list(range(5)), list(range(12)), list(range(9)) + [0, 1, 2]]
        )
        return {"input_ids": ids, "position_ids": positions}, torch.tensor(
            [[3, 6, 8, 11], [0, 5, 9, 9], [2, 7, 8, 8]]
        )
    return {"input_ids": ids}, torch.tensor([[0, 11], [5, 6], [10, 11]])


def _flat(positions: torch.Tensor) -> torch.Tensor:
    return torch.arange(positions.shape[0]).unsqueeze(1) * 12 + positions


@pytest.mark.numerics
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("kind", ["padded", "packed", "plain"])
@pytest.mark.parametrize("model_type", sorted(MODELS))
def test_hidden_states_and_gradients_equal_the_full_layer(model_type, kind, attn):
    torch.manual_seed(0)
    base = MODELS[model_type](attn).train().double()
    assert last_layer.supports(base)
    inputs, positions = _inputs(kind)
    flat = _flat(positions)

    full = base(**inputs, use_cache=False).last_hidden_state.reshape(-1, 32)[flat]
    full_grads = torch.autograd.grad(full.pow(2).sum(), list(base.parameters()), allow_unused=True)
    sparse = last_layer.hidden_at_positions(base, inputs, flat)
    sparse_grads = torch.autograd.grad(sparse.pow(2).sum(), list(base.parameters()), allow_unused=True)

    assert sparse.shape == full.shape == (*positions.shape, 32)
    assert_close_at_scale(sparse, full, msg="hidden states")
    for (name, _), a, b in zip(base.named_parameters(), sparse_grads, full_grads, strict=True):
        if b is None:
            assert a is None or a.abs().max() == 0, name
        else:
            assert_close_at_scale(a, b, msg=name)


@pytest.mark.numerics
def test_eager_attention_keeps_second_derivatives():
    """Hessian-vector products (Neumann / CG hypergradients) through the sparse layer equal the full
    path's under eager attention."""
    torch.manual_seed(0)
    base = MODELS["qwen2"]("eager").double()
    inputs, positions = _inputs("padded")
    flat = _flat(positions)
    params = list(base.parameters())
    vector = [torch.randn_like(p) for p in params]
    hvps = []
    for sparse in (True, False):
        out = (
            last_layer.hidden_at_positions(base, inputs, flat)
            if sparse
            else base(**inputs, use_cache=False).last_hidden_state.reshape(-1, 32)[flat]
        )
        grads = torch.autograd.grad(out.pow(2).sum(), params, create_graph=True)
        dot = sum((g * v).sum() for g, v in zip(grads, vector, strict=True))
        hvps.append(torch.autograd.grad(dot, params, allow_unused=True))
    for (name, _), a, b in zip(base.named_parameters(), *hvps, strict=True):
        if b is not None:
            assert_close_at_scale(a, b, msg=name)


@pytest.mark.numerics
def test_a_wrong_position_or_mask_is_far_outside_the_tolerance():
    """Negative controls for FLOAT64_PATHS: a score read one position early, or packed chains that
    see each other (no position resets), move the hidden states by 1e-1 to 1e0 of their scale (1.4
    and 0.43 measured), over 1e3 times the tolerance the comparisons above allow."""
    torch.manual_seed(0)
    base = MODELS["qwen2"]("eager").double()
    inputs, positions = _inputs("packed")
    flat = _flat(positions)
    with torch.no_grad():
        sparse = last_layer.hidden_at_positions(base, inputs, flat)
        full = base(**inputs, use_cache=False).last_hidden_state.reshape(-1, 32)
        no_resets = base(input_ids=inputs["input_ids"], use_cache=False).last_hidden_state.reshape(-1, 32)
    scale = full[flat].abs().max()
    assert_close_at_scale(sparse, full[flat])
    for wrong in (full[(flat - 1).clamp(min=0)], no_resets[flat]):
        assert (wrong - sparse).abs().max() > 1e3 * FLOAT64_PATHS * scale


def test_bad_positions_are_refused():
    base = MODELS["llama"]("sdpa")
    inputs, _ = _inputs("plain")
    for bad in (torch.zeros(0, dtype=torch.long), torch.tensor([[-1, 3]])):
        with pytest.raises(ValueError, match="non-empty and non-negative"):
            last_layer.hidden_at_positions(base, inputs, bad)


def test_unsupported_models_keep_the_full_layer():
    bidirectional = LlamaModel(LlamaConfig(**SIZES, is_causal=False))
    assert not last_layer.supports(bidirectional)
    compiled = MODELS["llama"]("sdpa")
    compiled.compile(dynamic=True)
    assert not last_layer.supports(compiled)
    assert not last_layer.supports(MODELS["llama"]("flex_attention"))
    eager_vision = build_backbone("qwen2_vl").model.model
    eager_vision.language_model.config._attn_implementation = "flex_attention"
    assert not last_layer.supports(eager_vision)


CHAINS = [
    StepChain(id="a", question="What is 2 + 3?", steps=["2 + 3 = 5.", "Final answer: 5"], labels=[1.0, 0.0]),
    StepChain(
        id="b", question="What is 4 x 2?", steps=["4 x 2 = 9.", "So 9.", "Final: 9"], labels=[0.0, 1.0, 0.0]
    ),
    StepChain(id="c", question="Count the tiles.", steps=["There are 4 tiles."], labels=[1.0]),
]


# every family with a tiny model (from the registry), padded and packed; then the other paths once
FAMILY_CASES = [(family, packing, {}) for family in family_names(tiny=True) for packing in (False, True)] + [
    ("causal_lm", False, {"gradient_checkpointing": True}),
    ("causal_lm", True, {"lora": {"enabled": True, "r": 4}}),
    ("causal_lm", False, {"prompt": "conversation"}),
    ("qwen2_vl", False, {"prompt": "conversation"}),
]


@pytest.mark.parametrize("family, packing, options", FAMILY_CASES)
@pytest.mark.numerics
def test_prm_scores_and_gradients_do_not_depend_on_the_last_layer_mode(family, packing, options, images):
    backbone = build_backbone(family, dtype="float64", **options)
    backbone.model.train()
    base = backbone.model.model
    assert last_layer.supports(base)
    chains = CHAINS
    if backbone.is_multimodal:  # M-RoPE positions (Qwen2-VL / Qwen2.5-VL), image tokens in the rows
        chains = [
            StepChain(id=c.id, question=c.question, steps=c.steps, labels=c.labels, images=[path])
            for c, path in zip(CHAINS, images, strict=True)
        ]
    batch = PRMCollator(backbone, packing=packing)([ChainDataset(chains)[i] for i in range(len(chains))])
    results, mlp_tokens = {}, []
    handle = last_layer.last(base).mlp.register_forward_hook(
        lambda m, args, out: mlp_tokens.append(args[0].shape[:-1])
    )
    for mode in ("scores", "full"):
        prm = ProcessRewardModel(backbone, "token", last_layer=mode)
        scores = prm(batch)
        loss = prm.losses(scores, batch["step_labels"])[0].sum()
        params = [p for p in prm.parameters() if p.requires_grad]
        results[mode] = scores.logits, torch.autograd.grad(loss, params, allow_unused=True)
    handle.remove()
    # the last MLP ran at the score positions only (rows x most steps in a row), then at every token
    rows, length = batch["inputs"]["input_ids"].shape
    assert mlp_tokens[1] == (rows, length)
    assert mlp_tokens[0][0] == rows and mlp_tokens[0][1] < length
    assert_close_at_scale(results["scores"][0], results["full"][0], msg="scores")
    for a, b in zip(results["scores"][1], results["full"][1], strict=True):
        if a is not None or b is not None:
            assert_close_at_scale(a, b)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="prm.last_layer"):
        ProcessRewardModel(build_backbone("qwen2"), last_layer="half")


@pytest.mark.numerics
@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("model_type", sorted(MODELS))
def test_continuation_over_a_cached_prefix_equals_the_full_layer(model_type, attn, masked):
    """Queries of new tokens attend to a cached prefix's keys and values (best-of-N prefix sharing),
    padded on the left of the prefix; mistral's window (5) is shorter than prefix + continuation."""
    from transformers import DynamicCache

    torch.manual_seed(0)
    base = MODELS[model_type](attn).eval().double()
    prefix = torch.randint(3, 97, (2, 6))
    prefix_mask = torch.ones(2, 6, dtype=torch.long)
    if masked:
        prefix_mask[1, :2] = 0  # row 1: a shorter prefix, left-padded
    positions = (prefix_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        cache = base(input_ids=prefix, attention_mask=prefix_mask, position_ids=positions, use_cache=True)
        cache = cache.past_key_values
    # Float64 eager attention gives a left pad's query, which sees only pads, NaN (transformers'
    # float64 mask minimum turns -inf in its float32 softmax), so the next layer caches NaN keys and
    # values at the pads. Every later query masks the pads: zero them, or 0 x NaN would spread.
    pads = (prefix_mask == 0)[:, None, :, None]
    layers = []
    for layer in cache.layers:  # mistral's sliding-window layers keep only the last positions
        at_pads = pads[:, :, -layer.keys.shape[-2] :]
        keys, values = layer.keys.masked_fill(at_pads, 0), layer.values.masked_fill(at_pads, 0)
        assert torch.isfinite(keys).all() and torch.isfinite(values).all()  # NaN at pads only
        layers.append((keys, values))

    def inputs():
        given = dict(
            input_ids=torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]]),
            position_ids=positions[:, -1:] + 1 + torch.arange(4),
            past_key_values=DynamicCache(ddp_cache_data=[(k.clone(), v.clone()) for k, v in layers]),
            use_cache=True,
        )
        if masked:  # else no mask at all: the causal rows are built over prefix + continuation
            given["attention_mask"] = torch.cat([prefix_mask, torch.ones(2, 4, dtype=torch.long)], 1)
        return given

    positions_flat = torch.tensor([[1, 3], [4 + 0, 4 + 2]])
    with torch.no_grad():
        full = base(**inputs()).last_hidden_state.reshape(-1, SIZES["hidden_size"])[positions_flat]
        sparse = last_layer.hidden_at_positions(base, inputs(), positions_flat)
    assert_close_at_scale(sparse, full)


@pytest.mark.numerics
@pytest.mark.parametrize("model_type", sorted(MODELS))
def test_prefix_cache_equals_the_models_cache(model_type):
    torch.manual_seed(0)
    base = MODELS[model_type]("sdpa").eval().double()
    ids = torch.randint(3, 97, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :3] = 0
    inputs = dict(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
    with torch.no_grad():
        expected = base(**inputs, use_cache=True).past_key_values
        got = last_layer.prefix_cache(base, inputs)
    assert len(got.layers) == len(expected.layers)
    for a, b in zip(got.layers, expected.layers, strict=True):
        assert_close_at_scale(a.keys, b.keys, msg="keys")
        assert_close_at_scale(a.values, b.values, msg="values")
