"""The upper gradient the suite computes is the hypergradient it claims to be.

A toy PRM (a linear step scorer over fixed features, float64) runs through the suite's own lower and
upper problems and Betty's engine. After one lower step to phi, Betty's DARTS gives the reweighter

    g_theta = -[grad_theta L_train(phi + eps v) - grad_theta L_train(phi - eps v)] / (2 eps),
    v = grad_phi L_meta(phi),

a central finite difference of the mixed second derivative -d/dtheta (grad_phi L_train(phi, theta) . v),
which autograd computes exactly (double backward). The test compares the two: the same approximation
(identity best-response Jacobian, DARTS/Betty), evaluated exactly. A second test checks that on a
deterministic toy with flipped labels the learned weights separate clean from corrupted chains.
"""

import pytest
import torch
from betty.configs import Config, EngineConfig
from torch import nn

from prm.aggregation import Aggregation
from prm.bilevel.engine import PRMEngine
from prm.bilevel.lower import PRMLower
from prm.bilevel.meta_loss import meta_losses
from prm.bilevel.upper import ReweightUpper
from prm.evaluation.best_of_n import auroc
from prm.model.prm import ProcessRewardModel, StepScores
from prm.reweight import DomainTable, InstanceNet, InstanceTable, TrainingSet

FEATURES, STEPS = 5, 3


class ToyPRM(nn.Module):
    """Step logits = features @ w: the PRM interface (forward -> StepScores, per-example losses)."""

    head = "token"
    losses = ProcessRewardModel.losses

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-0.3, 0.4, FEATURES, dtype=torch.float64))

    def forward(self, batch):
        return StepScores(logits=batch["features"] @ self.w, mask=batch["step_mask"])


def make_batch(features, labels, instances, domains, chain_label=None):
    n = features.shape[0]
    batch = {
        "features": features,
        "step_mask": torch.ones(n, STEPS, dtype=torch.bool),
        "step_labels": labels,
        "instance": torch.tensor(instances),
        "domain": torch.tensor(domains),
        "inputs": {"attention_mask": torch.ones(n, 4, dtype=torch.long)},
    }
    if chain_label is not None:
        batch["chain_label"] = chain_label
    return batch


class Loop:
    """An endless loader over fixed batches."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        while True:
            yield from self.batches


def build(
    reweighter,
    lower_batches,
    meta_batches,
    lower_lr=0.1,
    upper_lr=0.0,
    hypergradient="darts",
    alpha=1e-4,
    unroll=1,
):
    prm = ToyPRM()
    lower = PRMLower(
        name="prm",
        module=prm,
        optimizer=torch.optim.SGD(prm.parameters(), lr=lower_lr),
        train_data_loader=Loop(lower_batches),
        reweighter="reweight",
        config=Config(type=hypergradient, darts_alpha=alpha, unroll_steps=unroll, log_step=-1),
    )
    if isinstance(reweighter, InstanceTable):
        optimizer = torch.optim.SparseAdam(list(reweighter.parameters()), lr=max(upper_lr, 1e-12))
    else:
        optimizer = torch.optim.SGD(reweighter.parameters(), lr=upper_lr)
    upper = ReweightUpper(
        name="reweight",
        module=reweighter,
        optimizer=optimizer,
        train_data_loader=Loop(meta_batches),
        lower_name="prm",
        aggregation=Aggregation("mean"),
        config=Config(log_step=-1),
    )
    return prm, lower, upper


def run(lower, upper, steps):
    engine = PRMEngine(
        problems=[lower, upper],
        dependencies={"u2l": {upper: [lower]}, "l2u": {lower: [upper]}},
        config=EngineConfig(train_iters=steps, valid_step=steps + 1, logger_type="none"),
        total_steps=steps,
        progress=False,
    )
    engine.run()


def data(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, STEPS, FEATURES, generator=g, dtype=torch.float64)
    labels = torch.rand(n, STEPS, generator=g, dtype=torch.float64).round()
    labels[1, 2] = float("nan")  # an unlabelled step
    return features, labels


def capture_grad(upper):
    """Record the reweighter's gradient as the upper optimiser sees it (before the sparse conversion)."""
    seen = []
    original = upper.custom_optimizer_step

    def recording(*args, **kwargs):
        seen.append([p.grad.detach().clone().to_dense() for p in upper.trainable_parameters()])
        return original(*args, **kwargs)

    upper.custom_optimizer_step = recording
    return seen


def train_loss(prm, reweighter, batch):
    scores = prm(batch)
    losses, has_label = prm.losses(scores, batch["step_labels"])
    weights = reweighter(batch, scores, losses, has_label) * has_label
    return (weights * losses).sum() / has_label.sum()


def analytic_hypergradient(prm, reweighter, lower_batch, meta_batch):
    """-d/dtheta [grad_phi L_train(phi, theta) . v], v = grad_phi L_meta(phi), at the current phi.

    Tables: exact, by double backward. The net reads detached features of phi, so the phi-dependence
    of its weights is invisible to autograd: there the derivative of grad_theta L_train along v is taken
    by our own central difference (independent of Betty's code path, float64, a smaller step).
    """
    phi = list(prm.parameters())
    theta = list(reweighter.parameters())
    scores = prm(meta_batch)
    meta = meta_losses(scores.probs, scores.mask, meta_batch["chain_label"], Aggregation("mean")).mean()
    v = torch.autograd.grad(meta, phi)
    if not isinstance(reweighter, InstanceNet):
        grads = torch.autograd.grad(train_loss(prm, reweighter, lower_batch), phi, create_graph=True)
        directional = sum((g * u).sum() for g, u in zip(grads, v))
        return [-g for g in torch.autograd.grad(directional, theta)]
    h = 1e-6 / torch.sqrt(sum((u**2).sum() for u in v))
    sides = []
    for sign in (1, -1):
        with torch.no_grad():
            for p, u in zip(phi, v):
                p.add_(sign * h * u)
        sides.append(torch.autograd.grad(train_loss(prm, reweighter, lower_batch), theta))
        with torch.no_grad():
            for p, u in zip(phi, v):
                p.sub_(sign * h * u)
    return [-(a - b) / (2 * h) for a, b in zip(*sides)]


def toy_batches():
    """The seeded toy bi-level set-up: 8 training chains over 2 domains, a lower batch of 6 of them
    and a meta batch of 4 whole-chain labels. Returns (training_set, lower_batch, meta_batch)."""
    torch.manual_seed(0)
    features, labels = data()
    meta_features, _ = data(seed=1, n=4)
    training_set = TrainingSet(
        ids=[f"c{i}" for i in range(8)], domains=["a", "b"], instance_domain=[0, 0, 1, 1, 0, 1, 0, 1]
    )
    lower_batch = make_batch(features, labels, instances=[0, 2, 3, 5, 6, 7], domains=[0, 1, 1, 1, 0, 1])
    meta_batch = make_batch(
        meta_features,
        torch.full((4, STEPS), float("nan"), dtype=torch.float64),
        instances=[0, 1, 2, 3],
        domains=[0, 0, 0, 0],
        chain_label=torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64),
    )
    return training_set, lower_batch, meta_batch


@pytest.mark.parametrize("kind", ["instance_table", "domain_table", "instance_net"])
def test_darts_upper_gradient_matches_the_exact_mixed_derivative(kind):
    training_set, lower_batch, meta_batch = toy_batches()
    if kind == "instance_table":
        reweighter = InstanceTable(training_set, nn.Softplus(), initialization=1.0)
        with torch.no_grad():
            reweighter.theta.add_(torch.linspace(-0.5, 0.5, 8))
    elif kind == "domain_table":
        reweighter = DomainTable(training_set)
        with torch.no_grad():
            reweighter.theta.copy_(torch.tensor([0.3, -0.2]))
    else:
        reweighter = InstanceNet(training_set, nn.Softplus(), hidden_size=4, layers=2)
    reweighter.double()
    prm, lower, upper = build(reweighter, [lower_batch], [meta_batch], alpha=1e-6)
    seen = capture_grad(upper)
    run(lower, upper, steps=1)  # one lower step to phi, then one upper step at phi

    assert len(seen) == 1
    expected = analytic_hypergradient(prm, reweighter, lower_batch, meta_batch)
    for got, want in zip(seen[0], expected):
        assert want.abs().max() > 1e-6  # the test can fail: the hypergradient is not trivially zero
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-9)
    if kind == "instance_table":
        assert seen[0][0][[1, 4]].abs().max() == 0  # instances outside the batch get no gradient


def test_weights_move_toward_clean_chains_in_a_deterministic_toy():
    """Labels of a fixed true scorer; a third of the training chains have flipped labels."""
    g = torch.Generator().manual_seed(3)
    true_w = torch.randn(FEATURES, generator=g, dtype=torch.float64)

    def labelled(n):
        features = torch.randn(n, STEPS, FEATURES, generator=g, dtype=torch.float64)
        return features, (features @ true_w > 0).double()

    n = 48
    features, labels = labelled(n)
    corrupted = torch.zeros(n, dtype=torch.bool)
    corrupted[::3] = True
    labels[corrupted] = 1 - labels[corrupted]
    batches = [
        make_batch(features[i : i + 8], labels[i : i + 8], list(range(i, i + 8)), [0] * 8)
        for i in range(0, n, 8)
    ]
    meta_batches = []
    for _ in range(4):
        meta_features, meta_steps = labelled(8)
        chain = meta_steps.min(-1).values  # a chain is right when every step is
        meta_batches.append(
            make_batch(
                meta_features,
                torch.full((8, STEPS), float("nan"), dtype=torch.float64),
                [0] * 8,
                [0] * 8,
                chain_label=chain,
            )
        )
    training_set = TrainingSet(ids=[str(i) for i in range(n)], domains=["toy"], instance_domain=[0] * n)
    reweighter = InstanceTable(training_set, nn.Softplus(), initialization=1.0).double()
    meta_batches = [
        make_batch(
            b["features"],
            b["step_labels"],
            b["instance"].tolist(),
            b["domain"].tolist(),
            chain_label=b["chain_label"],
        )
        for b in meta_batches
    ]
    _, lower, upper = build(reweighter, batches, meta_batches, lower_lr=0.3, upper_lr=0.05, alpha=0.01)
    upper.aggregation = Aggregation("min")
    run(lower, upper, steps=600)
    weights = reweighter.instance_weights()
    assert weights[corrupted].mean() < 0.8 * weights[~corrupted].mean()
    assert auroc(weights.tolist(), (~corrupted).int().tolist()) > 0.9
