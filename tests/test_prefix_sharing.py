"""Best-of-N prefix sharing: the same step scores as scoring every candidate whole, on every family.

The tiny random backbones score every step near 0.5, so their weights are redrawn larger (std 0.1):
scores then spread over [0, 1]. Both paths run in float64 and must agree to ``numerics.FLOAT64_PATHS``
(1e-5) of the scores' scale on any CPU (derived in tests/numerics.py); a wrong position or a wrong
cached prefix moves them by more than 1e-2 (the negative controls below), a thousand times more.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from numerics import assert_close_at_scale, sharpened_prm
from omegaconf import OmegaConf
from PIL import Image

import prm.evaluation.scoring as scoring
from prm.data.dataset import flatten_candidates
from prm.data.records import BestOfNProblem, Candidate, LabelledChain
from prm.evaluation.scoring import SharingReport, score_chains, score_chains_shared
from prm.model import prefix_cache
from prm.model.families import family_names

ROOT = Path(__file__).resolve().parents[1]
TINY_FAMILIES = family_names(tiny=True)  # every family with a tiny model, from the registry


@pytest.fixture(scope="module")
def chains(tmp_path_factory):
    """3 problems x 4 candidates of 0 to 4 steps (one problem with two images), plus one lone chain."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for index, (height, width) in enumerate([(80, 100), (112, 56), (60, 60)]):
        path = folder / f"image{index}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    problems = []
    for p, images in enumerate([[paths[0]], [paths[1]], [paths[0], paths[2]]]):
        candidates = [
            Candidate(
                steps=[
                    f"Row {s} of candidate {c} has {s + c} tiles{'!' * (c * p)}."
                    for s in range(c % 4 + p % 2)
                ],
                final_answer=str(c),
                correct=c % 2 == 0,
            )
            for c in range(4)
        ]
        problems.append(
            BestOfNProblem(
                id=f"p{p}", question=f"Problem {p}: how many tiles?", candidates=candidates, images=images
            )
        )
    lone = LabelledChain(
        id="lone", question="A question of its own.", steps=["One.", "Two."], label=1, images=[paths[1]]
    )
    return [*flatten_candidates(problems), lone]


def max_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert [len(x) for x in a] == [len(y) for y in b]
    return max(float((x - y).abs().max()) for x, y in zip(a, b) if len(x))


def assert_same_scores(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    """Per-chain step scores of two float64 paths (returned rounded to float32, which moves them by at
    most one float32 unit, 6e-8): same lengths, equal to FLOAT64_PATHS of their scale."""
    assert [len(x) for x in actual] == [len(y) for y in expected]
    assert_close_at_scale(torch.cat(actual), torch.cat(expected), msg="step scores")


@pytest.mark.numerics
@pytest.mark.parametrize("head", ["token", "value"])
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_shared_scores_equal_unshared(chains, family, head):
    prm = sharpened_prm(family, head)
    unshared = score_chains(prm, chains, batch_size=5)
    report = SharingReport()
    # batch 3: continuation batches mix problems of different prefix lengths and split problems
    shared = score_chains_shared(prm, chains, batch_size=3, report=report)
    assert_same_scores(shared, unshared)
    assert float(torch.cat(unshared).std()) > 0.05  # the scores really vary, so equality is informative
    assert [len(s) for s in shared] == [len(c.steps) for c in chains]
    assert (report.shared_chains, report.shared_problems, report.unshared_chains) == (12, 3, 1)
    assert report.fallback_reasons == {"no other chain with the same prefix": 1}


@pytest.mark.numerics
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_cached_continuations_run_the_last_layer_at_the_markers_only(chains, family):
    """The prefix pass computes only the last layer's keys and values, the continuation pass the last
    layer at the step markers only (over the cached prefix), with the scores of the full last layer."""
    from prm.model import last_layer

    prm = sharpened_prm(family, "token")
    base = prm.model.model
    assert last_layer.supports(base)
    mlp_rows = []
    handle = last_layer.last(base).mlp.register_forward_hook(lambda m, a, o: mlp_rows.append(a[0].shape))
    scores = score_chains_shared(prm, chains, batch_size=3)
    handle.remove()
    prm.last_layer = "full"
    full = score_chains_shared(prm, chains, batch_size=3)
    assert_same_scores(scores, full)
    assert float(torch.cat(full).std()) > 0.05
    # prefix passes compute only the last layer's keys and values (no MLP); every continuation pass
    # runs its MLP at the markers only
    continuation = mlp_rows
    assert continuation and all(shape[1] <= 4 for shape in continuation)
    scored = sum(1 for chain in chains[:12] if chain.steps)  # the shared chains with a step to score
    # one row each, at most 4 markers wide; plus the lone chain, scored whole (also at its markers)
    assert sum(shape[0] for shape in continuation) == scored + 1


@pytest.mark.parametrize("family", family_names(tiny=True, rope="mrope"))
def test_mrope_positions_matter(chains, family, monkeypatch):
    """Negative control: continuing at position P (ignoring the image's rope delta) changes scores."""
    prm = sharpened_prm(family, "token")
    unshared = score_chains(prm, chains, batch_size=5)
    encode = prefix_cache.encode_prefixes

    def plain_positions(*args, **kwargs):
        prefixes = encode(*args, **kwargs)
        for prefix in prefixes:
            assert prefix.start < prefix.length  # image tokens advance M-RoPE positions by less
            prefix.start = prefix.length
        return prefixes

    monkeypatch.setattr(scoring, "encode_prefixes", plain_positions)
    assert max_difference(unshared, score_chains_shared(prm, chains, batch_size=3)) > 1e-2


def test_cached_prefix_matters(chains, monkeypatch):
    """Negative control: every problem continuing from the first problem's prefix changes scores."""
    prm = sharpened_prm("internvl", "token")
    unshared = score_chains(prm, chains, batch_size=5)
    encode, first = prefix_cache.encode_prefixes, []

    def same_prefix(*args, **kwargs):
        prefixes = encode(*args, **kwargs)
        if not first:
            first.append(prefixes[0])
        return [first[0]] * len(prefixes)

    monkeypatch.setattr(scoring, "encode_prefixes", same_prefix)
    assert max_difference(unshared, score_chains_shared(prm, chains, batch_size=3)) > 1e-2


def test_images_encoded_once_per_problem(chains):
    prm = sharpened_prm("qwen2_vl", "token")
    images = []  # one grid row per image the vision tower encodes

    def count(module, args, kwargs, out):
        images.append(len(kwargs["grid_thw"] if "grid_thw" in kwargs else args[1]))

    handle = prm.model.model.visual.register_forward_hook(count, with_kwargs=True)
    try:
        score_chains_shared(prm, chains, batch_size=4)
    finally:
        handle.remove()
    assert sum(images) == 1 + 1 + 2 + 1  # each problem's image(s) once, then the lone chain's


@pytest.mark.numerics
def test_score_chains_dispatches_and_restores_mode(chains):
    prm = sharpened_prm("qwen2", "token").train()
    shared = score_chains(prm, chains, batch_size=4, prefix_sharing=True)
    assert prm.training
    assert_same_scores(shared, score_chains(prm, chains, batch_size=4))


def test_max_length_counts_the_prefix(chains):
    prm = sharpened_prm("qwen2_vl", "token").train()
    with pytest.raises(ValueError, match=r"chain 'p\d#\d' is \d+ tokens long, over max_length=30"):
        score_chains_shared(prm, chains[:12], batch_size=4, max_length=30)
    assert prm.training  # restored on the error too


@pytest.mark.numerics
def test_no_shared_prefix_falls_back_to_whole_chains(chains):
    prm = sharpened_prm("qwen2", "token")
    lone = [chains[0], chains[-1]]  # different questions
    report = SharingReport()
    shared = score_chains_shared(prm, lone, report=report)
    assert_same_scores(shared, score_chains(prm, lone))
    assert (report.shared_chains, report.unshared_chains) == (0, 2)


def test_evaluation_shares_prefixes_by_default():
    assert OmegaConf.load(ROOT / "conf" / "evaluate.yaml").prefix_sharing is True


@pytest.mark.numerics
def test_header_mismatch_falls_back(chains, monkeypatch):
    """A candidate whose tokens do not start with the problem's header is scored whole."""
    item = scoring._item

    def changed_header(chain, images, steps=True):
        if not steps:
            chain = LabelledChain(id=chain.id, question=chain.question + " Changed.", steps=[], label=0)
        return item(chain, images, steps)

    monkeypatch.setattr(scoring, "_item", changed_header)
    prm = sharpened_prm("qwen2", "token")
    report = SharingReport()
    shared = score_chains_shared(prm, chains, batch_size=4, report=report)
    assert_same_scores(shared, score_chains(prm, chains, batch_size=4))
    assert report.shared_chains == 0
    assert report.fallback_reasons == {
        "header tokens differ from the chain's own": 12,
        "no other chain with the same prefix": 1,
    }


def test_continuation_batches_are_length_sorted_within_windows_of_problems():
    # problem 0 has continuations of 1 and 5 tokens, problem 1 of 3 and 4, problem 2 of 2
    rows = [
        scoring._Row(index=i, problem=p, ids=torch.zeros(n, dtype=torch.long), markers=torch.zeros(0))
        for i, (p, n) in enumerate([(0, 1), (0, 5), (1, 3), (1, 4), (2, 2)])
    ]

    def lengths(batches):
        return [[len(row.ids) for row in batch] for batch in batches]

    # window 1 x batch 2: a window closes at the first problem boundary after 2 rows: one per problem
    assert lengths(scoring.sorted_batches(rows, 2, window=1)) == [[5, 1], [4, 3], [2]]
    # window 2 x 2 = 4 rows: problems 0 and 1 (4 rows) sorted together, problem 2 alone
    assert lengths(scoring.sorted_batches(rows, 2, window=2)) == [[5, 4], [3, 1], [2]]
    # one window for all: longest first across problems
    assert lengths(scoring.sorted_batches(rows, 2, window=8)) == [[5, 4], [3, 2], [1]]
