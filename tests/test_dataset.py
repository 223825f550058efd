"""Collation: right padding, step-marker positions, label tables, chain labels, errors."""

import math
from pathlib import Path

import pytest
import torch
from conftest import compose_config

from prm.data.dataset import ChainDataset, PRMCollator, chain_lengths, flatten_candidates, meta_step_labels
from prm.data.records import LabelledChain, StepChain
from prm.data.sources import DataSources
from prm.data.synthetic import DemoBenchmark
from prm.model.backbones import build_backbone


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    sources = DataSources(
        name="demo",
        format="native",
        generator=DemoBenchmark(
            tmp_path_factory.mktemp("demo"), train_per_domain=4, meta_size=4, test_problems=2, n_candidates=3
        ),
    )
    return sources


@pytest.fixture(scope="module")
def backbone():
    return build_backbone("qwen2_vl")


def test_batch_matches_single_examples(demo, backbone):
    train = demo.load("train")
    dataset = ChainDataset(train)
    collate = PRMCollator(backbone)
    batch = collate([dataset[i] for i in range(5)])
    assert batch["ids"] == [chain.id for chain in train[:5]]
    assert batch["domain"].tolist() == [dataset.domains.index(chain.domain) for chain in train[:5]]
    for row in range(5):
        chain = train[row]
        single = collate([dataset[row]])
        length = int(single["inputs"]["attention_mask"].sum())
        assert torch.equal(batch["inputs"]["input_ids"][row, :length], single["inputs"]["input_ids"][0])
        assert batch["inputs"]["attention_mask"][row, length:].sum() == 0
        steps = len(chain.steps)
        positions = batch["marker_positions"][row, :steps]
        assert torch.equal(positions, single["marker_positions"][0, :steps])
        assert (batch["inputs"]["input_ids"][row, positions] == backbone.step_marker_id).all()
        assert batch["step_mask"][row].sum() == steps
        labels = batch["step_labels"][row]
        assert labels[:steps].tolist() == pytest.approx(chain.labels)
        assert all(math.isnan(value) for value in labels[steps:].tolist())


def test_meta_batches_carry_chain_labels(demo, backbone):
    meta = demo.load("meta")
    batch = PRMCollator(backbone)([ChainDataset(meta)[i] for i in range(4)])
    assert batch["chain_label"].tolist() == [float(chain.label) for chain in meta[:4]]
    # the demo's meta chains know their first wrong step: 1 before it, 0 from it on (prm.loss_target=steps)
    for row, chain in enumerate(meta[:4]):
        expected = meta_step_labels(chain.first_error, len(chain.steps))
        assert batch["step_labels"][row, : len(expected)].tolist() == expected
        assert torch.isnan(batch["step_labels"][row, len(expected) :]).all()


def test_best_of_n_candidates_flatten_in_order(demo):
    problems = demo.load("test")
    chains = flatten_candidates(problems)
    assert len(chains) == sum(len(problem.candidates) for problem in problems)
    assert chains[1].meta == {"problem": problems[0].id, "candidate": 1}
    assert chains[1].label == int(problems[0].candidates[1].correct)


def test_missing_step_labels_stay_nan(demo, backbone):
    chain = demo.load("train")[0]
    chain.labels = [None] * (len(chain.steps) - 1) + [1.0]
    batch = PRMCollator(backbone)([ChainDataset([chain])[0]])
    assert torch.isnan(batch["step_labels"][0, :-1]).all() and batch["step_labels"][0, -1] == 1.0


def test_text_only_backbone_ignores_images(demo):
    text_backbone = build_backbone("qwen2")
    batch = PRMCollator(text_backbone)([ChainDataset(demo.load("train"))[0]])
    assert "pixel_values" not in batch["inputs"]


def test_too_long_chain_names_the_chain(demo, backbone):
    chain = demo.load("train")[0]
    with pytest.raises(ValueError, match=f"chain '{chain.id}' is .* tokens long, over max_length=10"):
        PRMCollator(backbone, max_length=10)([ChainDataset([chain])[0]])


def test_step_text_containing_the_marker_is_refused(demo, backbone):
    chain = demo.load("train")[0]
    chain.steps[0] += " <step>"
    with pytest.raises(ValueError, match="step markers for"):
        PRMCollator(backbone)([ChainDataset([chain])[0]])


# ---------------------------------------------------------------------------------------------------
# chain_lengths: the lengths length grouping sorts by, in the configured prompt layout


@pytest.mark.parametrize("family", ["qwen2", "qwen2_vl"])
@pytest.mark.parametrize("prompt", ["marker", "conversation"])
def test_chain_lengths_are_the_collated_lengths_in_the_prompt_layout(family, prompt):
    """Text-only chains (images count as placeholders in chain_lengths, so without them the counts are
    exact), with and without step labels (the conversation's teacher-forced replies follow them)."""
    backbone = build_backbone(family, prompt=prompt)
    chains = [
        StepChain(
            id="a",
            question="What is 2 + 3?",
            steps=["2 + 3 = 5.", "So 6.", "Answer: 6"],
            labels=[1.0, 0.0, None],
        ),
        StepChain(
            id="b", question="Count the tiles, then add one.", steps=["There are 4 tiles."], labels=[0.75]
        ),
        LabelledChain(
            id="c", question="A longer question " * 6, steps=["One.", "Two.", "Three.", "Four."], label=1
        ),
        LabelledChain(id="d", question="Short?", steps=[], label=0),
    ]
    batch = PRMCollator(backbone)([ChainDataset(chains)[i] for i in range(len(chains))])
    collated = batch["inputs"]["attention_mask"].sum(1).tolist()
    assert chain_lengths(chains, backbone) == collated
    if prompt == "conversation":  # the marker layout's lengths, which chain_lengths measured before
        marker = build_backbone(family, prompt="marker")
        assert chain_lengths(chains, marker) != collated


# ---------------------------------------------------------------------------------------------------
# data.max_length: one default


def test_max_length_has_one_default_and_only_demo_sets_its_own():
    from omegaconf import OmegaConf

    from prm.config import DEFAULT_MAX_LENGTH, DataSchema

    conf = Path(__file__).resolve().parent.parent / "conf"
    assert DEFAULT_MAX_LENGTH == 4096  # the value the README documents
    assert DataSources().max_length == DataSchema().max_length == DEFAULT_MAX_LENGTH
    own = sorted(p.name for p in (conf / "data").rglob("*.yaml") if "max_length" in OmegaConf.load(p))
    assert own == ["demo.yaml"]  # a deliberate per-dataset value; every other config inherits
    expected = {name: 512 for name in ("demo", "demo_shift", "demo_shift_hard", "demo_scatter")}
    expected.update(demo_scatter_mixed=512, demo_clean=512)
    names = sorted(p.stem for p in (conf / "data").glob("*.yaml"))
    for name in names:
        data = compose_config(f"data={name}").data
        assert data.max_length == expected.get(name, DEFAULT_MAX_LENGTH), name
    assert compose_config("data=files", name="evaluate").data.max_length == DEFAULT_MAX_LENGTH
