"""Reweighting modules and the meta loss: exact values, detachment, sparse table updates."""

import logging
import math

import pytest
import torch
from torch import nn

from prm.aggregation import Aggregation
from prm.bilevel.meta_loss import check_meta_loss, meta_losses
from prm.config import ConfigError
from prm.model.prm import StepScores
from prm.reweight import DomainTable, InstanceNet, InstanceTable, TrainingSet
from prm.reweight.base import can_be_negative
from prm.reweight.domain_instance import DomainInstance
from prm.reweight.instance_table import inverse
from prm.reweight.report import weight_report, weights_markdown

SET = TrainingSet(ids=["a", "b", "c", "d"], domains=["clean", "noisy"], instance_domain=[0, 0, 1, 1])


def batch(instances=(0, 1, 2, 3), domains=(0, 0, 1, 1)):
    labels = torch.tensor([[1.0, 0.0], [1.0, float("nan")], [0.5, 1.0], [0.0, 0.0]])[: len(instances)]
    return {"instance": torch.tensor(instances), "domain": torch.tensor(domains), "step_labels": labels}


def scores(n=4):
    logits = torch.tensor([[2.0, -1.0], [0.0, 0.0], [1.0, 3.0], [-2.0, 0.5]])[:n].requires_grad_()
    mask = torch.tensor([[True, True], [True, False], [True, True], [True, True]])[:n]
    return StepScores(logits=logits, mask=mask)


def test_domain_table_starts_at_one_and_keeps_mean_one():
    table = DomainTable(SET)
    assert torch.equal(table(batch(), None, None), torch.ones(4))
    with torch.no_grad():
        table.theta.copy_(torch.tensor([1.0, -1.0]))
    sp = [math.log1p(math.exp(1.0)), math.log1p(math.exp(-1.0))]
    expected = [v / ((sp[0] + sp[1]) / 2) for v in sp]
    assert table.domain_weights() == pytest.approx({"clean": expected[0], "noisy": expected[1]}, rel=1e-6)
    assert table(batch(), None, None).tolist() == pytest.approx(
        [expected[0]] * 2 + [expected[1]] * 2, rel=1e-6
    )
    assert sum(table.domain_weights().values()) / 2 == pytest.approx(1.0)


@pytest.mark.parametrize(
    "activation, value",
    [
        (nn.Softplus(), 1.0),
        (nn.ReLU(), 1.0),
        (nn.Hardtanh(-1, 3), 1.0),
        (nn.Sigmoid(), 0.5),
        (nn.LeakyReLU(0.01), 1.0),
        (nn.Identity(), 2.0),
    ],
)
def test_instance_table_initialization_is_the_initial_weight(activation, value):
    table = InstanceTable(SET, activation, initialization=value)
    assert table.instance_weights().tolist() == pytest.approx([value] * 4, abs=1e-6)


def test_initialization_outside_the_activation_range_is_refused():
    with pytest.raises(ValueError, match="outside the range"):
        inverse(nn.Sigmoid(), 1.0)


def test_activations_that_allow_negative_weights_warn(caplog):
    assert (
        can_be_negative(nn.Hardtanh(-1, 3))
        and can_be_negative(nn.Identity())
        and can_be_negative(nn.LeakyReLU(0.01))
    )
    assert (
        not can_be_negative(nn.Softplus())
        and not can_be_negative(nn.ReLU())
        and not can_be_negative(nn.Sigmoid())
    )
    with caplog.at_level(logging.WARNING):
        InstanceTable(SET, nn.Softplus())
    assert "negative" not in caplog.text
    with caplog.at_level(logging.WARNING):
        InstanceTable(SET, nn.Hardtanh(-1, 3))
    assert "negative weights" in caplog.text


def test_instance_table_looks_up_instances_and_normalises_per_batch():
    table = InstanceTable(SET, nn.Identity(), normalize="batch")
    with torch.no_grad():
        table.theta.copy_(torch.tensor([1.0, 2.0, 3.0, 6.0]))
    has_label = torch.tensor([True, True, False])
    weights = table(batch(instances=(3, 0, 1), domains=(1, 0, 0)), None, None, has_label)
    # mean over the labelled chains (instances 3 and 0) is (6 + 1) / 2
    assert weights.tolist() == pytest.approx([6 / 3.5, 1 / 3.5, 2 / 3.5])


def test_instance_net_reads_detached_features_and_the_label():
    torch.manual_seed(0)
    net = InstanceNet(SET, nn.Sigmoid(), hidden_size=5, layers=2)
    s = scores()
    losses = torch.tensor([0.3, 0.7, 0.2, 0.9], requires_grad=True)
    features, labelled = net.inputs(batch(), s, losses)
    assert features.shape == (4, 2, 4)
    assert torch.allclose(features[..., 0], torch.sigmoid(s.logits.detach()))
    assert torch.allclose(features[..., 0] + features[..., 1], torch.ones(4, 2))
    assert features[0, :, 2].tolist() == [1.0, 0.0] and features[2, 0, 3].item() == pytest.approx(0.2)
    assert labelled.tolist() == [[True, True], [True, False], [True, True], [True, True]]
    weights = net(batch(), s, losses)
    assert weights.shape == (4,) and bool(((weights > 0) & (weights < 1)).all())
    weights.sum().backward()
    assert s.logits.grad is None and losses.grad is None  # the PRM cannot lower its own weight
    assert all(p.grad is not None for p in net.parameters())
    # the published net: probabilities only
    assert InstanceNet(SET, nn.Sigmoid(), features=["probs"]).inputs(batch(), s, losses)[0].shape[-1] == 2
    with pytest.raises(ValueError, match="features"):
        InstanceNet(SET, nn.Sigmoid(), features=["logits"])


def test_instance_net_can_read_the_prms_detached_hidden_states():
    torch.manual_seed(0)
    s = scores()
    s.hidden = torch.randn(4, 2, 3, requires_grad=True)
    net = InstanceNet(SET, nn.Softplus(), features=["label", "hidden"], prm_hidden_size=3)
    features, _ = net.inputs(batch(), s, torch.zeros(4))
    assert features.shape == (4, 2, 4)
    assert torch.equal(features[..., 1:], s.hidden.detach()) and features[0, :, 0].tolist() == [1.0, 0.0]
    net(batch(), s, torch.zeros(4)).sum().backward()
    assert s.hidden.grad is None  # read, never trained through
    with pytest.raises(ValueError, match="prm_hidden_size"):
        InstanceNet(SET, nn.Softplus(), features=["hidden"])
    with pytest.raises(ValueError, match="hidden states"):
        net(batch(), scores(), torch.zeros(4))


def test_meta_loss_exact_values():
    probs = torch.tensor([[0.9, 0.5], [0.2, 0.4]])
    mask = torch.tensor([[True, True], [True, False]])
    labels = torch.tensor([1, 0])
    plus = meta_losses(probs, mask, labels, Aggregation("mean"), "+")
    assert plus.tolist() == pytest.approx([(0.7 - 1) ** 2, 0.2**2])
    both = meta_losses(probs, mask, labels, Aggregation("mean"), "both")
    # y=1 keeps r; y=0 scores 1 - r over its one step: (0.8 - 1)^2
    assert both.tolist() == pytest.approx([(0.7 - 1) ** 2, (0.8 - 1) ** 2])
    # DreamPRM: log_mean = sigmoid(mean logit)
    logit = (math.log(0.9 / 0.1) + 0.0) / 2
    expected = (1 / (1 + math.exp(-logit)) - 1) ** 2
    assert meta_losses(probs, mask, labels, Aggregation("log_mean"), "+")[0].item() == pytest.approx(expected)


def test_meta_loss_is_finite_with_gradients_at_saturated_scores():
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    mask = torch.ones(2, 2, dtype=torch.bool)
    for name in ("log_mean", "prod", "mean", "min"):
        for target in ("+", "both"):
            loss = meta_losses(probs, mask, torch.tensor([1, 0]), Aggregation(name), target).sum()
            (grad,) = torch.autograd.grad(loss, probs)
            assert torch.isfinite(loss) and torch.isfinite(grad).all(), (name, target)


def test_meta_loss_needs_a_probability_aggregation():
    check_meta_loss(Aggregation("log_mean"), "both")
    with pytest.raises(ValueError, match="not a probability"):
        check_meta_loss(Aggregation("sum_logit"), "+")
    with pytest.raises(ValueError, match="loss_target"):
        check_meta_loss(Aggregation("mean"), "-")


def test_sparse_adam_moves_only_rows_with_a_gradient():
    table = InstanceTable(SET, nn.Identity())
    optimizer = torch.optim.SparseAdam(list(table.parameters()), lr=0.1)
    for _ in range(3):  # momentum from earlier steps must not move rows that are not sampled now
        weights = table(batch(instances=(1, 2), domains=(0, 1)), None, None)
        weights.sum().backward()
        table.theta.grad = table.theta.grad.to_sparse()
        optimizer.step()
        optimizer.zero_grad()
    weights = table.instance_weights()
    assert weights[0].item() == 1.0 and weights[3].item() == 1.0
    assert weights[1].item() == pytest.approx(0.7, abs=1e-5) and weights[2].item() == pytest.approx(
        0.7, abs=1e-5
    )


def test_weight_report_tables():
    class Chain:
        def __init__(self, domain, corrupted):
            self.domain, self.meta = domain, {"corrupted": corrupted}

    chains = [Chain("clean", False), Chain("clean", False), Chain("noisy", True), Chain("noisy", False)]
    table = InstanceTable(SET, nn.Identity())
    with torch.no_grad():
        table.theta.copy_(torch.tensor([1.2, 1.0, 0.2, 0.8]))
    report = weight_report(table, table.instance_weights(), chains, extremes=2)
    assert report["per_domain"]["clean"]["mean"] == pytest.approx(1.1)
    assert [r["id"] for r in report["lowest"]] == ["c", "d"] and report["highest"][0]["id"] == "a"
    assert report["corruption"]["ratio"] == pytest.approx(0.2 / 1.0)
    assert report["corruption"]["auroc_clean_vs_corrupted"] == 1.0
    text = weights_markdown(report)
    assert "| noisy | 2 |" in text and "ratio 0.200" in text


def test_training_set_knows_corrupted_chains_only_when_every_chain_says():
    from types import SimpleNamespace as Chain

    chains = [
        Chain(id="a", domain="x", meta={"corrupted": True}),
        Chain(id="b", domain="x", meta={"corrupted": False}),
    ]
    assert TrainingSet.of(chains, ["x"]).corrupted == [True, False]
    chains.append(Chain(id="c", domain="x", meta={}))
    partial = TrainingSet.of(chains, ["x"])
    assert partial.corrupted is None and partial.missing_corrupted == "c"


def test_oracle_weighs_out_corrupted_chains_and_needs_to_know_them():
    from prm.reweight import Oracle

    known = TrainingSet(["a", "b", "c", "d"], ["x"], [0, 0, 0, 0], corrupted=[False, True, False, True])
    oracle = Oracle(known)  # normalize=batch by default: the clean chains carry the batch
    weights = oracle(batch(instances=(0, 1, 2, 3)), None, torch.zeros(4), torch.ones(4, dtype=torch.bool))
    assert weights.tolist() == [2.0, 0.0, 2.0, 0.0]
    assert oracle.instance_weights().tolist() == [1.0, 0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="meta.corrupted.*'q' has none"):
        Oracle(TrainingSet(["q"], ["x"], [0], missing_corrupted="q"))


def test_small_loss_ramps_then_drops_the_highest_losses_among_labelled_chains():
    from prm.reweight import SmallLoss

    table = SmallLoss(SET, drop_rate=0.5, warmup_steps=2, normalize="none")
    assert [table.rate(t) for t in (0, 1, 2, 5)] == [0.0, 0.25, 0.5, 0.5]
    losses = torch.tensor([0.3, 0.9, 0.1, 0.5])
    labelled = torch.tensor([True, True, True, False])  # chain 3 has no label: never ranked
    step = lambda: table(batch(), None, losses, labelled).tolist()  # noqa: E731
    assert step() == [1.0, 1.0, 1.0, 1.0]  # batch 0: rate 0
    assert step() == [1.0, 0.0, 1.0, 1.0]  # batch 1: rate 0.25 of 3 labelled: keep int(2.25) = 2
    assert step() == [0.0, 0.0, 1.0, 1.0]  # batch 2: rate 0.5: keep int(1.5) = 1, the lowest loss
    assert table.seen.tolist() == [3, 3, 3, 0] and table.dropped.tolist() == [1, 2, 0, 0]
    assert table.instance_weights().tolist() == pytest.approx([2 / 3, 1 / 3, 1.0, 1.0])
    normalised = SmallLoss(SET, drop_rate=0.5, warmup_steps=0)  # normalize=batch by default
    weights = normalised(batch(), None, torch.tensor([0.3, 0.9, 0.1, 0.5]), torch.ones(4, dtype=torch.bool))
    assert weights.tolist() == [2.0, 0.0, 2.0, 0.0]  # 2 of 4 dropped; the kept two carry the batch
    restored = SmallLoss(SET, drop_rate=0.5, warmup_steps=2)
    restored.load_state_dict(table.state_dict())
    assert int(restored.batches) == 3 and restored.dropped.tolist() == [1, 2, 0, 0]


@pytest.mark.parametrize(
    "drop_rate, warmup, message", [(1.0, 0, "drop_rate"), (-0.1, 0, "drop_rate"), (0.2, -1, "warmup")]
)
def test_small_loss_refuses_bad_settings(drop_rate, warmup, message):
    from prm.reweight import SmallLoss

    with pytest.raises(ValueError, match=message):
        SmallLoss(SET, drop_rate=drop_rate, warmup_steps=warmup)


def test_step_meta_loss_is_the_prm_step_loss_on_the_known_first_error():
    from prm.bilevel.meta_loss import step_meta_losses
    from prm.data.dataset import meta_step_labels
    from prm.model.prm import ProcessRewardModel

    assert meta_step_labels(-1, 3) == [1.0, 1.0, 1.0]
    assert meta_step_labels(0, 1) == [0.0]
    assert meta_step_labels(1, 4) == [1.0, 0.0, 0.0, 0.0]

    prm = type("P", (), {"head": "token", "losses": ProcessRewardModel.losses})()
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    labels = torch.tensor([meta_step_labels(1, 3), meta_step_labels(-1, 2) + [math.nan]], dtype=torch.float64)
    labels[0, 2] = math.nan  # a step past the chain's known labels does not count
    out = step_meta_losses(
        prm, StepScores(logits=logits, mask=mask), {"step_labels": labels, "ids": ["m0", "m1"]}
    )
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731  softplus: BCE(logit, 1) = sp(-x), BCE(logit, 0) = sp(x)
    # float32 result (the meta loss is float32 like every meta loss): a few ulps, 2**-23 each
    assert out.tolist() == pytest.approx(
        [(sp(-2.0) + sp(-1.0)) / 2, (sp(0.0) + sp(-1.0)) / 2], rel=8 * 2**-23
    )
    unknown = torch.full((2, 3), math.nan, dtype=torch.float64)
    with pytest.raises(ValueError, match="meta chain 'm0' has no first_error"):
        step_meta_losses(
            prm, StepScores(logits=logits, mask=mask), {"step_labels": unknown, "ids": ["m0", "m1"]}
        )


def test_probe_sampler_draws_depend_on_seed_and_step_only():
    from types import SimpleNamespace as Chain

    from prm.bilevel.probe import ProbeSampler

    chains = [Chain(id=f"c{i}", domain="x", images=[]) for i in range(10)]
    collate = lambda items: [item["instance"] for item in items]  # noqa: E731
    sampler = ProbeSampler(chains, ["x"], collate, size=4, batch_size=3, seed=7)
    first = sampler.draw(5)
    assert [len(b) for b in first] == [3, 1] and len(set(sum(first, []))) == 4
    assert sampler.draw(5) == first
    assert ProbeSampler(chains, ["x"], collate, size=4, batch_size=3, seed=7).draw(5) == first
    assert sampler.draw(6) != first
    assert sorted(
        sum(ProbeSampler(chains, ["x"], collate, size=99, batch_size=4, seed=0).draw(1), [])
    ) == list(range(10))
    with pytest.raises(ValueError, match="must be >= 1"):
        ProbeSampler(chains, ["x"], collate, size=0, batch_size=3, seed=0)
    # two ranks: the same draw, split in two equal disjoint shares
    shares = [
        sum(ProbeSampler(chains, ["x"], collate, 5, 8, 7, rank=r, world_size=2).draw(3), []) for r in (0, 1)
    ]
    assert len(shares[0]) == len(shares[1]) == 2 and not set(shares[0]) & set(shares[1])
    assert set(shares[0]) | set(shares[1]) <= set(
        sum(ProbeSampler(chains, ["x"], collate, 5, 8, 7).draw(3), [])
    )


# ------------------------------------------------------------------ domain x instance (two parameter groups)


def test_domain_instance_weight_is_the_domain_weight_times_the_instance_weight():
    table = DomainInstance(SET, nn.Softplus(), initialization=1.0)
    assert torch.equal(table(batch(), None, None), torch.ones(4))  # both factors start at 1
    with torch.no_grad():
        table.domain.theta.copy_(torch.tensor([1.0, -1.0]))
        table.instance.theta.copy_(torch.tensor([0.0, 2.0, -1.0, 0.5]))
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    domain = [softplus(1.0) / ((softplus(1.0) + softplus(-1.0)) / 2)]
    domain.append(softplus(-1.0) / ((softplus(1.0) + softplus(-1.0)) / 2))
    instance = [softplus(x) for x in (0.0, 2.0, -1.0, 0.5)]
    expected = [
        domain[0] * instance[0],
        domain[0] * instance[1],
        domain[1] * instance[2],
        domain[1] * instance[3],
    ]
    assert table(batch(), None, None).tolist() == pytest.approx(expected, rel=1e-6)
    assert table.instance_weights().tolist() == pytest.approx(expected, rel=1e-6)
    assert table.domain_weights() == pytest.approx({"clean": domain[0], "noisy": domain[1]}, rel=1e-6)
    # a batch of instances 3 and 0, in that order
    assert table(batch(instances=(3, 0), domains=(1, 0)), None, None).tolist() == pytest.approx(
        [expected[3], expected[0]], rel=1e-6
    )


def test_domain_instance_declares_a_dense_and_a_sparse_group():
    table = DomainInstance(SET, nn.Softplus())
    groups = table.parameter_groups()
    assert [(g.name, g.sparse) for g in groups] == [("domain", False), ("instance", True)]
    assert groups[0].parameters == (table.domain.theta,) and groups[1].parameters == (table.instance.theta,)
    assert [(g.name, g.sparse) for g in InstanceTable(SET, nn.Softplus()).parameter_groups()] == [
        ("weights", True)
    ]
    assert [(g.name, g.sparse) for g in DomainTable(SET).parameter_groups()] == [("weights", False)]


def test_domain_strategies_need_two_domains():
    one = TrainingSet(ids=["a", "b"], domains=["only"], instance_domain=[0, 0])
    for build, name in (
        (lambda: DomainTable(one), "domain_table"),
        (lambda: DomainInstance(one, nn.Softplus()), "domain_instance"),
    ):
        with pytest.raises(ConfigError, match=f"reweight={name} needs at least two training domains"):
            build()


def test_upper_step_moves_every_domain_entry_and_only_the_sampled_instance_rows():
    """The upper problem's step with one optimiser per group (AdamW on the domain table, SparseAdam on
    the instance rows), as conf/reweight/domain_instance.yaml builds them."""
    from betty.configs import Config

    from prm.bilevel.upper import ReweightUpper

    table = DomainInstance(SET, nn.Softplus())
    optimizers = {"domain": torch.optim.AdamW, "instance": torch.optim.SparseAdam}
    upper = ReweightUpper(
        name="reweight",
        config=Config(),
        module=table,
        optimizer=lambda group: optimizers[group.name](list(group.parameters), lr=0.1),
        train_data_loader=[],
        prm=None,
        aggregation=Aggregation("mean"),
    )
    assert set(upper.optimizer.state_dict()) == {"domain", "instance"}
    start = table.instance.theta.detach().clone()
    upper.last_metrics = {"loss": 0.0}
    weights = table(batch(instances=(1, 2), domains=(0, 1)), None, None)
    (
        weights * torch.tensor([1.0, 3.0])
    ).sum().backward()  # a plain sum would leave the domain mean's gradient 0
    upper.custom_optimizer_step()
    assert (table.domain.theta != 0).all()  # dense: every domain entry moves
    assert torch.equal(table.instance.theta[[0, 3]], start[[0, 3]])  # sparse: unsampled rows stay
    assert (table.instance.theta[[1, 2]] != start[[1, 2]]).all()
    assert set(upper.last_metrics) >= {"nonfinite_steps", "grad_norm", "weight/clean", "weight/noisy"}


def test_each_group_gets_its_configured_optimiser_and_an_undeclared_group_is_refused():
    from omegaconf import OmegaConf

    from prm.training.problems import group_optimizers

    table = DomainInstance(SET, nn.Softplus())
    adamw = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 0.01}
    sparse = {"_target_": "torch.optim.SparseAdam", "_partial_": True, "lr": 0.1}
    build = group_optimizers(
        OmegaConf.create({"optimizer": adamw, "optimizers": {"instance": sparse}}), table
    )
    domain, instance = (build(group) for group in table.parameter_groups())
    assert type(domain) is torch.optim.AdamW and domain.param_groups[0]["lr"] == 0.01
    assert type(instance) is torch.optim.SparseAdam and instance.param_groups[0]["lr"] == 0.1
    typo = OmegaConf.create({"optimizer": adamw, "optimizers": {"instances": sparse}})
    with pytest.raises(
        ConfigError, match="optimizers.instances: DomainInstance has no parameter group 'instances'"
    ):
        group_optimizers(typo, table)
