"""Collation: right padding, step-marker positions, label tables, chain labels, errors."""

import math

import pytest
import torch

from prm.data.dataset import ChainDataset, PRMCollator, flatten_candidates
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
    assert torch.isnan(batch["step_labels"]).all()


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
