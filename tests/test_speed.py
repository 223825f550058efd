"""Speed features change no chain's result: packed batches score like padded ones on every tiny family,
length-grouped batches hold the same chains per epoch, resumable like the plain sampler.

Packed and padded batches (and chains scored alone or sorted by length) are compared in float64, to
``numerics.FLOAT64_PATHS`` of the scores' scale: the same verdict on any CPU (tests/numerics.py)."""

import logging
from collections import Counter

import pytest
import torch
from conftest import smoke_config
from numerics import assert_close_at_scale
from smoke_runs import PER_BATCH, weights

from prm.data.dataset import ChainDataset, PRMCollator, chain_lengths, pack_rows
from prm.data.records import StepChain
from prm.data.sampling import LengthGroupedSampler, ResumableSampler
from prm.model.backbones import build_backbone
from prm.model.families import family_names, get_family
from prm.model.prm import ProcessRewardModel

TINY_FAMILIES = [name for name in family_names() if get_family(name).has_tiny]
PROCESSOR_KWARGS = {"internvl": {"crop_to_patches": False}}


def chains_with(images):
    return [
        StepChain(
            id="a",
            question="Sum the tiles.",
            steps=["1 + 2 = 3.", "Final answer: 3"],
            labels=[1.0, 0.75],
            images=[images[0]],
        ),
        StepChain(
            id="b",
            question="What is 4 x 2? Look at the picture carefully before you answer it.",
            steps=["4 x 2 = 9.", "So it is 9.", "Then 9 + 1 = 10.", "Final answer: 10"],
            labels=[0.0, None, 0.0, 0.0],
            images=[images[1]],
        ),
        StepChain(id="c", question="Count.", steps=["There are 4 tiles."], labels=[None], images=[images[2]]),
        StepChain(
            id="d",
            question="Two pictures?",
            steps=["Yes.", "Final answer: 2"],
            labels=[1.0, 1.0],
            images=[images[0], images[2]],
        ),
    ]


@pytest.mark.numerics
@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("head", ["token", "value"])
def test_packed_batch_scores_equal_padded_batch(family, head, images):
    torch.manual_seed(0)
    backbone = build_backbone(family, processor_kwargs=PROCESSOR_KWARGS.get(family), dtype="float64")
    prm = ProcessRewardModel(backbone, head).eval()
    chains = chains_with(images)
    items = [ChainDataset(chains)[i] for i in range(len(chains))]
    padded = PRMCollator(backbone)(items)
    packed = PRMCollator(backbone, packing=True)(items)
    lengths = padded["inputs"]["attention_mask"].sum(1)
    assert packed["inputs"]["input_ids"].shape[1] == int(lengths.max())
    assert packed["inputs"]["input_ids"].shape[0] < len(chains)
    assert "attention_mask" not in packed["inputs"]
    assert packed["num_tokens"] == padded["num_tokens"] < padded["inputs"]["input_ids"].numel()
    with torch.no_grad():
        a, b = prm(padded), prm(packed)
        alone = [prm(PRMCollator(backbone, packing=True)([item])) for item in items]
    assert torch.equal(a.mask, b.mask)
    assert_close_at_scale(b.logits[a.mask], a.logits[a.mask])
    for row, single in enumerate(alone):  # isolation: a chain packed with others = the chain alone
        n = len(chains[row].steps)
        assert_close_at_scale(b.logits[row, :n], single.logits[0, :n])
    losses_a, _ = prm.losses(a, padded["step_labels"])
    losses_b, _ = prm.losses(b, packed["step_labels"])
    assert_close_at_scale(losses_b, losses_a)


@pytest.mark.numerics
@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("with_images", ["none", "mixed"])
def test_packed_chains_stay_isolated_without_images(family, with_images, images):
    """Text-only chains (a whole batch, or beside image chains) packed in one row attend only to
    themselves, M-RoPE families included. The weights are redrawn larger than the tiny default, so
    that attending to a neighbour would move the scores far beyond the tolerance."""
    torch.manual_seed(0)
    backbone = build_backbone(family, processor_kwargs=PROCESSOR_KWARGS.get(family), dtype="float64")
    with torch.no_grad():
        for name, parameter in backbone.model.named_parameters():
            if "norm" not in name:
                parameter.normal_(0, 0.1)
    prm = ProcessRewardModel(backbone, "token").eval()
    chains = [
        StepChain(id="long", question="How many squares? " * 12, steps=["One.", "So 6."], labels=[1.0, 0.0]),
        StepChain(id="a", question="What is 2 + 3?", steps=["2 + 3 = 5.", "Final: 5"], labels=[1.0, 0.0]),
        StepChain(id="b", question="What is 4 x 2?", steps=["4 x 2 = 9.", "So 9."], labels=[0.0, 1.0]),
    ]
    if with_images == "mixed" and backbone.is_multimodal:
        chains[0] = StepChain(**{**vars(chains[0]), "images": images[:2]})
    items = [ChainDataset(chains)[i] for i in range(len(chains))]
    padded = PRMCollator(backbone)(items)
    packed = PRMCollator(backbone, packing=True)(items)
    assert packed["inputs"]["input_ids"].shape[0] < len(chains)  # at least two chains share a row
    with torch.no_grad():
        a, b = prm(padded), prm(packed)
        alone = [prm(PRMCollator(backbone)([item])) for item in items]
    assert a.logits[a.mask].abs().max() > 0.1  # scores far from the tiny model's constant
    assert_close_at_scale(b.logits[a.mask], a.logits[a.mask])
    for row, single in enumerate(alone):
        assert_close_at_scale(b.logits[row, :2], single.logits[0, :2])


@pytest.mark.numerics
def test_packed_gradients_equal_padded_gradients(images):
    torch.manual_seed(0)
    backbone = build_backbone("qwen2_vl", dtype="float64")
    prm = ProcessRewardModel(backbone, "token")
    items = [ChainDataset(chains_with(images))[i] for i in range(4)]
    grads = []
    for packing in (False, True):
        prm.zero_grad()
        batch = PRMCollator(backbone, packing=packing)(items)
        losses, _ = prm.losses(prm(batch), batch["step_labels"])
        losses.sum().backward()
        grads.append({name: p.grad.clone() for name, p in prm.named_parameters() if p.grad is not None})
    assert grads[1].keys() == grads[0].keys() and len(grads[0]) > 10
    for name, grad in grads[0].items():  # each parameter at its own scale
        assert_close_at_scale(grads[1][name], grad, msg=name)


def test_packed_positions_restart_per_chain(images):
    backbone = build_backbone("qwen2")
    items = [ChainDataset(chains_with(images))[i] for i in range(4)]
    padded = PRMCollator(backbone)(items)
    packed = PRMCollator(backbone, packing=True)(items)
    lengths = padded["inputs"]["attention_mask"].sum(1).tolist()
    longest = max(lengths)
    rows = pack_rows(lengths, longest)
    assert [c for row in rows for c in row] == [0, 1, 2, 3]  # order kept
    assert packed["inputs"]["input_ids"].shape == (len(rows), longest)
    flat_ids = packed["inputs"]["input_ids"].flatten()
    flat_positions = packed["inputs"]["position_ids"].flatten()
    for row in range(4):
        n, start = len(items[row]["chain"].steps), int(packed["marker_positions"][row, 0])
        real = padded["inputs"]["input_ids"][row, : lengths[row]]
        first = start - int(padded["marker_positions"][row, 0])  # the chain's first token
        assert torch.equal(flat_ids[first : first + lengths[row]], real)
        assert torch.equal(flat_positions[first : first + lengths[row]], torch.arange(lengths[row]))
        assert (flat_ids[packed["marker_positions"][row, :n]] == backbone.step_marker_id).all()


def test_pack_rows_next_fit_in_order():
    assert pack_rows([5, 3, 2, 4, 1], 5) == [[0], [1, 2], [3, 4]]
    assert pack_rows([2, 2, 2], 6) == [[0, 1, 2]]
    with pytest.raises(ValueError, match="over the row capacity"):
        pack_rows([7], 6)


def test_chain_lengths_are_the_collated_token_counts(images):
    backbone = build_backbone("qwen2")
    chains = chains_with(images)
    batch = PRMCollator(backbone)([ChainDataset(chains)[i] for i in range(len(chains))])
    assert chain_lengths(chains, backbone) == batch["inputs"]["attention_mask"].sum(1).tolist()


def _take(sampler, n):
    iterator = iter(sampler)
    return [next(iterator) for _ in range(n)]


LENGTHS = [5, 40, 12, 33, 7, 21, 50, 3, 18, 27, 9, 44, 15, 36, 2, 30, 25, 11, 48, 6, 39, 14, 8]


def test_length_grouped_batches_cover_each_epoch_once_and_group_lengths():
    n, batch = len(LENGTHS), 4
    sampler = LengthGroupedSampler(LENGTHS, batch_size=batch, window=3, seed=7)
    stream = _take(sampler, 3 * n)
    for epoch in range(3):
        assert Counter(stream[epoch * n : (epoch + 1) * n]) == Counter(range(n))
    # every full batch of a window spans a narrower length range than the plain sampler's batches
    grouped = _take(LengthGroupedSampler(LENGTHS, batch_size=batch, window=100, seed=7), 20)
    plain = _take(ResumableSampler(n, seed=7), 20)

    def spread(order):
        return sum(
            max(LENGTHS[i] for i in order[k : k + batch]) - min(LENGTHS[i] for i in order[k : k + batch])
            for k in range(0, 20, batch)
        )

    assert spread(grouped) < spread(plain) / 2
    # a window is one sorted run cut into batches: each batch is a contiguous slice of the sorted window
    epoch0 = _take(LengthGroupedSampler(LENGTHS, batch_size=batch, window=100, seed=7), n)
    ordered = sorted(epoch0, key=lambda i: -LENGTHS[i])
    batches = [epoch0[k : k + batch] for k in range(0, n, batch)]
    assert sorted(LENGTHS[i] for b in batches for i in b) == sorted(LENGTHS)
    assert {tuple(b) for b in batches[:-1]} <= {tuple(ordered[k : k + batch]) for k in range(0, n, batch)}
    assert batches[-1] == ordered[-(n % batch) :]  # the partial batch stays last


def test_length_grouped_sampler_is_deterministic_and_resumable():
    full = _take(LengthGroupedSampler(LENGTHS, batch_size=4, window=2, seed=3), 70)
    assert full == _take(LengthGroupedSampler(LENGTHS, batch_size=4, window=2, seed=3), 70)
    assert full != _take(LengthGroupedSampler(LENGTHS, batch_size=4, window=2, seed=4), 70)
    for start in (0, 4, 23, 44, 52):
        resumed = _take(
            LengthGroupedSampler(LENGTHS, batch_size=4, window=2, seed=3, start=start), 70 - start
        )
        assert resumed == full[start:]


def test_length_grouped_ranks_split_the_global_batch():
    single = _take(LengthGroupedSampler(LENGTHS, batch_size=4, window=2, seed=1), 40)
    ranks = [
        _take(LengthGroupedSampler(LENGTHS, batch_size=2, window=2, seed=1, rank=r, world_size=2), 20)
        for r in range(2)
    ]
    assert ranks[0] == single[0::2] and ranks[1] == single[1::2]


def test_length_grouped_sampler_refuses_bad_arguments():
    with pytest.raises(ValueError, match="empty"):
        LengthGroupedSampler([], batch_size=2)
    with pytest.raises(ValueError, match="window=0"):
        LengthGroupedSampler(LENGTHS, batch_size=2, window=0)


@pytest.mark.numerics
def test_scoring_sorts_by_length_and_restores_input_order(images):
    from prm.evaluation.scoring import length_order, score_chains

    assert length_order([3, 9, 1, 9, 5]) == [1, 3, 4, 0, 2]
    torch.manual_seed(0)
    backbone = build_backbone("qwen2_vl", dtype="float64")
    prm = ProcessRewardModel(backbone, "token")
    chains = chains_with(images) * 2
    alone = [score_chains(prm, [chain])[0] for chain in chains]
    for packing in (False, True):
        together = score_chains(prm, chains, batch_size=3, packing=packing)
        assert [len(s) for s in together] == [len(c.steps) for c in chains]
        for a, b in zip(together, alone):
            assert_close_at_scale(a, b)
    assert prm.training  # restored


def test_grouped_packed_fused_reweighting_run_resumes_exactly(tmp_path, monkeypatch):
    import shutil

    from prm.checkpoint import LATEST, latest_checkpoint
    from prm.training import train

    monkeypatch.setenv("PRM_CACHE_DIR", str(tmp_path / "cache"))
    overrides = [
        "reweight=instance_table",
        *PER_BATCH,
        "train.steps=4",
        "train.save_every=2",
        "train.validate_every=2",
        "data.group_by_length=true",
        "data.length_window=2",
        "data.packing=true",
        "+train.optimizer.fused=true",
    ]
    full = tmp_path / "full"
    metrics = train(smoke_config(*overrides), run_dir=full)
    assert 0.0 <= metrics["auroc"] <= 1.0
    interrupted = tmp_path / "interrupted"
    shutil.copytree(full / "checkpoints" / "step-0000002", interrupted / "checkpoints" / "step-0000002")
    (interrupted / "checkpoints" / LATEST).write_text("step-0000002\n")
    train(smoke_config(*overrides, "resume=true"), run_dir=interrupted)
    a, b = weights(latest_checkpoint(full)), weights(latest_checkpoint(interrupted))
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_compiled_backbone_trains_and_saves_plain_parameter_names(tmp_path, monkeypatch, caplog):
    """train.compile compiles the backbone's layers in place (the eager backend here: inductor's C++
    build takes minutes on 2 cores); checkpoints keep plain parameter names."""
    from prm.checkpoint import latest_checkpoint
    from prm.training import train

    compiled = []
    original = torch.nn.Module.compile

    def compile_eagerly(self, *args, **kwargs):
        compiled.append((type(self).__name__, kwargs))
        return original(self, *args, **{**kwargs, "backend": "eager"})

    monkeypatch.setattr(torch.nn.Module, "compile", compile_eagerly)
    monkeypatch.setenv("PRM_CACHE_DIR", str(tmp_path / "cache"))
    caplog.set_level(logging.INFO)
    train(
        smoke_config("train.compile=true", "train.steps=2", "backbone=tiny_qwen2"), run_dir=tmp_path / "run"
    )
    # one decoder layer after another, the last one left eager (it runs at the score positions only)
    assert compiled and compiled == [("Qwen2DecoderLayer", {"dynamic": True})] * len(compiled)
    stays_eager = "(the last decoder layer stays eager"
    assert f"torch.compile: {len(compiled)} repeated blocks {stays_eager}" in caplog.text
    names = weights(latest_checkpoint(tmp_path / "run")).keys()
    assert names and not any("_orig_mod" in name for name in names)


@pytest.mark.numerics
@pytest.mark.parametrize("kind", ["instance_table", "domain_table", "instance_net"])
def test_darts_perturbed_passes_build_no_prm_graph_and_keep_the_exact_hypergradient(kind, monkeypatch):
    """With the suite's hypergradients registered, DARTS' two perturbed forwards of the lower batch run
    without autograd through the PRM, and the upper gradient still equals the exact mixed derivative."""
    from betty import hypergradient as betty_hypergradient
    from test_hypergradient import ToyPRM, analytic_hypergradient, build, capture_grad, toy_batches
    from test_hypergradient import run as run_engine

    from prm.bilevel import hypergradient
    from prm.reweight import DomainTable, InstanceNet, InstanceTable

    monkeypatch.setattr(betty_hypergradient, "jvp_fn_mapping", dict(betty_hypergradient.jvp_fn_mapping))
    hypergradient.register()
    grad_enabled = []
    original = ToyPRM.forward
    monkeypatch.setattr(
        ToyPRM, "forward", lambda self, b: grad_enabled.append(torch.is_grad_enabled()) or original(self, b)
    )
    training_set, lower_batch, meta_batch = toy_batches()
    reweighter = {
        "instance_table": lambda: InstanceTable(training_set, torch.nn.Softplus(), initialization=1.0),
        "domain_table": lambda: DomainTable(training_set),
        "instance_net": lambda: InstanceNet(training_set, torch.nn.Softplus(), hidden_size=4, layers=2),
    }[kind]().double()
    prm, lower, upper = build(reweighter, [lower_batch], [meta_batch], alpha=1e-6)
    seen = capture_grad(upper)
    run_engine(lower, upper, steps=1)
    # lower step (graph), meta forward (graph: the meta gradient), DARTS +eps and -eps (no graph)
    assert grad_enabled == [True, True, False, False]
    assert lower.is_graph_free is False  # reset after the hypergradient
    expected = analytic_hypergradient(prm, reweighter, lower_batch, meta_batch)
    for got, want in zip(seen[0], expected):
        assert want.abs().max() > 1e-6
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-9)
