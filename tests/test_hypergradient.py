"""The upper gradient the suite computes is the hypergradient it claims to be.

A toy PRM (a linear step scorer over fixed features, float64) runs through the suite's own lower and
upper problems and Betty's engine. After one lower step to phi, Betty's DARTS gives the reweighter

    g_theta = -[grad_theta L_train(phi + eps v) - grad_theta L_train(phi - eps v)] / (2 eps),
    v = grad_phi L_meta(phi),

a central finite difference of the mixed second derivative -d/dtheta (grad_phi L_train(phi, theta) . v),
which autograd computes exactly (double backward). The test compares the two: the same approximation
(identity best-response Jacobian, DARTS/Betty), evaluated exactly. A second test checks that on a
deterministic toy with flipped labels the learned weights separate clean from corrupted chains.

The implicit hypergradients (neumann, and the suite's own cg, which replaces betty-ml 0.2.1's) are
checked on a weighted least-squares toy whose lower solution and exact hypergradient have closed forms:
cg gives the Krylov-optimal estimate at every iteration and the exact hypergradient after dim(phi)
iterations, neumann the truncated series, converging at the rate its step size sets.
"""

import math

import pytest
import torch
from betty.configs import Config, EngineConfig
from torch import nn

from prm.aggregation import Aggregation
from prm.bilevel.conjugate_gradient import conjugate_gradient
from prm.bilevel.engine import PRMEngine
from prm.bilevel.lower import PRMLower
from prm.bilevel.meta_loss import meta_losses
from prm.bilevel.upper import ReweightUpper
from prm.evaluation.best_of_n import auroc
from prm.model.prm import ProcessRewardModel, StepScores
from prm.reweight import DomainTable, InstanceNet, InstanceTable, TrainingSet
from prm.reweight.domain_instance import DomainInstance

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
        reweighter=reweighter,
        config=Config(type=hypergradient, darts_alpha=alpha, unroll_steps=unroll, log_step=-1),
    )

    def optimizer(group):  # sparse rows: SparseAdam (an lr of 0 is refused); dense: SGD
        if group.sparse:
            return torch.optim.SparseAdam(list(group.parameters), lr=max(upper_lr, 1e-12))
        return torch.optim.SGD(group.parameters, lr=upper_lr)

    upper = ReweightUpper(
        name="reweight",
        module=reweighter,
        optimizer=optimizer,
        train_data_loader=Loop(meta_batches),
        prm=prm,
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


@pytest.mark.numerics
@pytest.mark.parametrize("kind", ["instance_table", "domain_table", "instance_net", "domain_instance"])
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
    elif kind == "domain_instance":  # two parameter groups: a dense domain table, a sparse instance table
        reweighter = DomainInstance(training_set, nn.Softplus(), initialization=1.0)
        with torch.no_grad():
            reweighter.domain.theta.copy_(torch.tensor([0.3, -0.2]))
            reweighter.instance.theta.add_(torch.linspace(-0.5, 0.5, 8))
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
    if kind == "domain_instance":
        assert len(seen[0]) == 2 and seen[0][1][[1, 4]].abs().max() == 0  # domain theta, instance theta


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


# ---------------------------------------------------------------------------------------------------
# Implicit hypergradients (neumann, cg) on a weighted least-squares toy with a closed-form lower solution
#
# Lower: L(phi, theta) = (1/N) sum_i w_i (x_i . phi - y_i)^2 / 2,  w_i = softplus(theta_i), phi in R^D:
#   H = X^T W X / N,  phi*(theta) = H^-1 X^T W y / N,
#   d/dtheta_i grad_phi L = sigmoid(theta_i) r_i x_i / N,  r = X phi - y   (the columns of J, D x N).
# Upper: L_meta(phi) = mean_j (x'_j . phi - y'_j)^2 / 2,  g = grad_phi L_meta(phi*).
# Exact (implicit function theorem): dL_meta(phi*(theta))/dtheta = -J^T H^-1 g.
# A method that estimates H^-1 g by x gives -J^T x; J^T has full column rank D here, so x is recovered
# from the suite's hypergradient by least squares and its error measured in phi-space.
#
# Tolerances: float64 (unit roundoff u = 1.1e-16). Every quantity compared is a product of a few
# D x N (5 x 12) matrices and at most 2D + 25 Hessian-vector products, with kappa(H) = 18.9 and
# kappa(J) = 5.0 (printed by test_least_squares_toy_closed_forms_agree); rounding error is then of
# order (iterations + N) * kappa * u < 1e-12 relative, on any summation order (AVX2/AVX-512, 1 or 2
# threads). RTOL = 1e-10 leaves a margin of over 100 while staying far below every difference the
# tests rely on (the smallest: CG's last error before convergence, 1.5e-2 relative).
# ---------------------------------------------------------------------------------------------------

LSQ_D, LSQ_N, LSQ_M = 5, 12, 7
RTOL = 1e-10


def _least_squares_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(LSQ_N, LSQ_D, generator=g, dtype=torch.float64)
    y = torch.randn(LSQ_N, generator=g, dtype=torch.float64)
    x_meta = torch.randn(LSQ_M, LSQ_D, generator=g, dtype=torch.float64)
    y_meta = torch.randn(LSQ_M, generator=g, dtype=torch.float64)
    theta = torch.linspace(-1, 1, LSQ_N, dtype=torch.float64)
    return x, y, x_meta, y_meta, theta


class LeastSquaresPRM(nn.Module):
    """The PRM interface over one-step chains: step logit = features . w, chain loss (logit - label)^2 / 2."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, batch):
        logits = batch["features"] @ self.w
        return StepScores(logits=logits, mask=torch.ones_like(logits, dtype=torch.bool))

    def losses(self, scores, step_labels):
        labelled = torch.ones(len(step_labels), dtype=torch.bool)
        return 0.5 * ((scores.logits - step_labels) ** 2).sum(-1), labelled


class LeastSquaresMeta(ReweightUpper):
    """The suite's upper problem with a float64 least-squares meta loss (the suite's meta losses read
    probabilities in float32, which would bound every comparison at float32's roundoff)."""

    def training_step(self, batch):
        loss = 0.5 * ((self.lower_prm(batch).logits - batch["targets"]) ** 2).mean()
        self.record({"loss": float(loss.detach())})
        return loss


class LeastSquaresToy:
    """Closed forms of the toy (see the block comment above), all float64."""

    def __init__(self):
        self.x, self.y, self.x_meta, self.y_meta, self.theta = _least_squares_data()
        w = nn.functional.softplus(self.theta)
        self.H = (self.x.T * w) @ self.x / LSQ_N
        self.phi = self.phi_star(self.theta)
        r = self.x @ self.phi - self.y
        self.J = self.x.T * (torch.sigmoid(self.theta) * r) / LSQ_N
        self.g = self.x_meta.T @ (self.x_meta @ self.phi - self.y_meta) / LSQ_M
        self.solution = torch.linalg.solve(self.H, self.g)  # H^-1 g
        self.eigenvalues = torch.linalg.eigvalsh(self.H)

    def phi_star(self, theta):
        w = nn.functional.softplus(theta)
        return torch.linalg.solve((self.x.T * w) @ self.x, self.x.T @ (w * self.y))

    def exact_hypergradient(self):
        """d L_meta(phi*(theta)) / d theta by autograd through the closed-form solve (no IFT, no Betty)."""
        theta = self.theta.clone().requires_grad_()
        loss = 0.5 * ((self.x_meta @ self.phi_star(theta) - self.y_meta) ** 2).mean()
        return torch.autograd.grad(loss, theta)[0]

    def hypergradient_of(self, x):
        return -self.J.T @ x

    def recover(self, hypergradient):
        """x with -J^T x = hypergradient (least squares; J^T has full column rank)."""
        return torch.linalg.lstsq(-self.J.T, hypergradient.unsqueeze(1)).solution.squeeze(1)

    def suite_hypergradient(self, kind, iterations, alpha=1.0):
        """The reweighter's gradient from one bi-level step of the suite (PRMLower, ReweightUpper,
        PRMEngine and the registered Betty hypergradient ``kind``), with the PRM held at phi*(theta)
        (lower learning rate 0)."""
        training_set = TrainingSet(
            ids=[str(i) for i in range(LSQ_N)], domains=["a"], instance_domain=[0] * LSQ_N
        )
        reweighter = InstanceTable(training_set, nn.Softplus()).double()
        with torch.no_grad():
            reweighter.theta.copy_(self.theta)
        prm = LeastSquaresPRM(self.phi)
        lower_batch = {
            "features": self.x.unsqueeze(1),
            "step_labels": self.y.unsqueeze(1),
            "instance": torch.arange(LSQ_N),
            "domain": torch.zeros(LSQ_N, dtype=torch.long),
            "inputs": {"attention_mask": torch.ones(LSQ_N, 2, dtype=torch.long)},
        }
        meta_batch = {"features": self.x_meta.unsqueeze(1), "targets": self.y_meta.unsqueeze(1)}
        config = Config(
            type=kind,
            cg_iterations=iterations,
            cg_alpha=alpha,
            neumann_iterations=iterations,
            neumann_alpha=alpha,
            log_step=-1,
        )
        lower = PRMLower(
            name="prm",
            module=prm,
            optimizer=torch.optim.SGD(prm.parameters(), lr=0.0),
            train_data_loader=Loop([lower_batch]),
            reweighter=reweighter,
            config=config,
        )
        upper = LeastSquaresMeta(
            name="reweight",
            module=reweighter,
            optimizer=lambda group: torch.optim.SparseAdam(list(group.parameters), lr=1e-12),
            train_data_loader=Loop([meta_batch]),
            prm=prm,
            aggregation=Aggregation("mean"),
            config=Config(log_step=-1),
        )
        seen = capture_grad(upper)
        run(lower, upper, steps=1)
        assert len(seen) == 1
        torch.testing.assert_close(prm.w.detach(), self.phi, rtol=0, atol=0)  # the step kept phi at phi*
        return seen[0][0]


def relative_error(got, want):
    return float((got - want).norm() / want.norm())


def krylov_solution(H, g, k):
    """argmin of the H-norm error ||x - H^-1 g||_H over span{g, Hg, ..., H^(k-1) g} (what CG's k-th
    iterate is in exact arithmetic; Nocedal and Wright, Numerical Optimization, Theorem 5.2): Galerkin
    projection x = V (V^T H V)^-1 V^T g on an orthonormal basis V built by Arnoldi with two rounds of
    Gram-Schmidt (independent of CG's short recurrences)."""
    basis = [g / g.norm()]
    for _ in range(k - 1):
        v = H @ basis[-1]
        for _ in range(2):
            v = v - torch.stack(basis, 1) @ (torch.stack(basis, 1).T @ v)
        basis.append(v / v.norm())
    V = torch.stack(basis, 1)
    return V @ torch.linalg.solve(V.T @ H @ V, V.T @ g)


@pytest.fixture
def registered(monkeypatch):
    """The suite's hypergradients registered into a copy of Betty's mapping (restored afterwards)."""
    from betty import hypergradient as betty_hypergradient

    from prm.bilevel import hypergradient

    monkeypatch.setattr(betty_hypergradient, "jvp_fn_mapping", dict(betty_hypergradient.jvp_fn_mapping))
    hypergradient.register()
    return betty_hypergradient.jvp_fn_mapping


@pytest.fixture(scope="module")
def toy():
    return LeastSquaresToy()


def test_least_squares_toy_closed_forms_agree(toy):
    """The IFT formula -J^T H^-1 g equals the derivative of L_meta(phi*(theta)) taken through the solve,
    and the conditioning the tolerances assume holds."""
    exact = toy.exact_hypergradient()
    assert exact.norm() > 0.1
    assert relative_error(toy.hypergradient_of(toy.solution), exact) < RTOL
    assert float(torch.linalg.cond(toy.H)) == pytest.approx(18.86, abs=0.01)
    assert float(torch.linalg.cond(toy.J)) == pytest.approx(5.02, abs=0.01)


def test_cg_hypergradient_is_the_krylov_solution_and_exact_after_dim_phi_iterations(toy, registered):
    exact = toy.exact_hypergradient()
    errors = []  # ||x_k - H^-1 g||_H, the norm CG minimises
    for k in range(1, LSQ_D + 1):
        got = toy.suite_hypergradient("cg", k)
        want = toy.hypergradient_of(krylov_solution(toy.H, toy.g, k))
        assert relative_error(got, want) < RTOL, k
        e = toy.recover(got) - toy.solution
        errors.append(float(torch.sqrt(e @ toy.H @ e)))
    # monotone, within the classical bound 2 ((sqrt(kappa) - 1) / (sqrt(kappa) + 1))^k ||x*||_H
    # (Nocedal and Wright eq. 5.36), and 0 (to rounding) at k = D = dim(phi)
    initial = float(torch.sqrt(toy.solution @ toy.H @ toy.solution))
    kappa = float(toy.eigenvalues[-1] / toy.eigenvalues[0])
    rate = (kappa**0.5 - 1) / (kappa**0.5 + 1)
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert all(e <= 2 * rate ** (k + 1) * initial for k, e in enumerate(errors)), errors
    assert errors[-2] > 1e-3 * initial  # not converged one step early: the last step matters
    assert errors[-1] < RTOL * initial
    assert relative_error(toy.suite_hypergradient("cg", LSQ_D), exact) < RTOL
    # more iterations than dimensions stay at the solution (the residual is rounding, not garbage)
    assert relative_error(toy.suite_hypergradient("cg", 2 * LSQ_D), exact) < RTOL


def test_cg_alpha_scales_the_hessian_without_changing_the_estimate(toy, registered):
    """Betty's cg_alpha: CG on (alpha H) y = g, returning alpha y. CG's iterates on alpha H are those on
    H divided by alpha, so the estimate is the same; for a power of two every scaling is exact in
    floating point, so the results are bitwise equal; for alpha = 0.3 they agree to rounding."""
    k = 3  # mid-way: the estimate is still far from H^-1 g, so equality is not convergence
    reference = toy.suite_hypergradient("cg", k)
    assert relative_error(reference, toy.exact_hypergradient()) > 0.1
    for alpha in (0.25, 4.0):
        assert torch.equal(toy.suite_hypergradient("cg", k, alpha), reference), alpha
    assert relative_error(toy.suite_hypergradient("cg", k, 0.3), reference) < RTOL


def test_neumann_hypergradient_is_the_truncated_series_converging_at_rate_rho(toy, registered):
    """Betty's neumann (which the suite keeps): x_K = a sum_{j=0..K} (I - a H)^j g, whose error is
    x_K - H^-1 g = -(I - a H)^(K+1) H^-1 g; each iteration shrinks it by a factor between
    min_i |1 - a lambda_i| and rho = max_i |1 - a lambda_i| (lambda_i: eigenvalues of H)."""
    a = 0.5  # a * lambda_max = 1.29 < 2: convergent
    factors = (1 - a * toy.eigenvalues).abs()
    rho, slowest = float(factors.max()), float(factors.min())
    assert rho == pytest.approx(1 - a * float(toy.eigenvalues[0]))
    assert 0.9 < rho < 1
    step = torch.eye(LSQ_D, dtype=torch.float64) - a * toy.H
    exact = toy.exact_hypergradient()
    errors = []
    for K in range(0, 25):
        got = toy.suite_hypergradient("neumann", K, a)
        want_error = toy.hypergradient_of(-torch.linalg.matrix_power(step, K + 1) @ toy.solution)
        assert relative_error(got, exact + want_error) < RTOL, K
        errors.append(float((toy.recover(got) - toy.solution).norm()))
    initial = float(toy.solution.norm())
    for K in range(len(errors) - 1):
        ratio = errors[K + 1] / errors[K]
        assert slowest - 1e-9 <= ratio <= rho + 1e-9, (K, ratio)
        assert errors[K] <= rho ** (K + 1) * initial * (1 + 1e-9)


def test_type_cg_runs_the_suites_conjugate_gradient_not_bettys(toy, registered):
    """betty-ml 0.2.1's cg builds its next direction from the old residual; on this toy it is far from
    the exact hypergradient after D iterations and further after 2D. The suite's replaces it."""
    from prm.bilevel import conjugate_gradient

    used = registered["cg"]
    assert getattr(used, "rank_averaged", False)
    assert used.__wrapped__ is conjugate_gradient.cg
    betty_cg = pytest.importorskip("betty.hypergradient.cg").cg
    assert used.__wrapped__ is not betty_cg
    exact = toy.exact_hypergradient()
    assert relative_error(toy.suite_hypergradient("cg", LSQ_D), exact) < RTOL
    registered["cg"] = betty_cg  # Betty's own, for the comparison
    drift = [relative_error(toy.suite_hypergradient("cg", k), exact) for k in (LSQ_D, 2 * LSQ_D)]
    assert drift[0] > 0.5 and drift[1] > drift[0], drift  # measured: 0.97 and 1.50


def test_register_is_idempotent(registered):
    from prm.bilevel import conjugate_gradient, hypergradient

    before = dict(registered)
    hypergradient.register()
    assert registered == before
    assert registered["cg"].__wrapped__ is conjugate_gradient.cg


def matrix_hvp(A):
    return lambda v: [A @ v[0]]


def test_conjugate_gradient_on_a_matrix():
    """The solver alone: exact after n steps on an SPD matrix, each step the Krylov solution."""
    A = torch.tensor([[4.0, 1.0, 0.5], [1.0, 3.0, -0.5], [0.5, -0.5, 2.0]], dtype=torch.float64)
    b = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    x_star = torch.linalg.solve(A, b)
    for k in (1, 2):
        (x,) = conjugate_gradient(matrix_hvp(A), [b], k)
        assert relative_error(x, krylov_solution(A, b, k)) < RTOL
        assert relative_error(x, x_star) > 1e-3
    (x,) = conjugate_gradient(matrix_hvp(A), [b], 3)
    assert relative_error(x, x_star) < RTOL
    # one step by hand: Ab = (2.25, -5.25, 2.5), x_1 = (b.b / b.Ab) b = (5.25 / 14) b = 0.375 b
    (x,) = conjugate_gradient(matrix_hvp(A), [b], 1)
    torch.testing.assert_close(x, 0.375 * b, rtol=1e-15, atol=0)


def test_conjugate_gradient_edge_cases():
    A = torch.diag(torch.tensor([2.0, 3.0], dtype=torch.float64))
    zero = torch.zeros(2, dtype=torch.float64)
    (x,) = conjugate_gradient(matrix_hvp(A), [zero], 5)  # b = 0: x = 0, not 0/0
    assert torch.equal(x, zero)
    e1 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    (x,) = conjugate_gradient(matrix_hvp(A), [e1], 5)  # an eigenvector: exact after one step, then stops
    assert torch.equal(x, torch.tensor([0.5, 0.0], dtype=torch.float64))
    # negative curvature along b at the first step: H^-1 ~ alpha I (Nocedal and Wright, Algorithm 7.1)
    indefinite = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
    b = torch.tensor([1.0, 2.0], dtype=torch.float64)  # b.Ab = 1 - 4 < 0
    (x,) = conjugate_gradient(matrix_hvp(indefinite), [b], 3, alpha=0.5)
    assert torch.equal(x, 0.5 * b)
    # a non-finite Hessian-vector product is not hidden behind the negative-curvature rule
    (x,) = conjugate_gradient(lambda v: [torch.full_like(v[0], float("nan"))], [b], 2)
    assert torch.isnan(x).all()
    # several tensors are one vector: the blocks of a block-diagonal system are solved jointly
    xs = conjugate_gradient(lambda v: [2.0 * v[0], 3.0 * v[1]], [e1, torch.ones(1, dtype=torch.float64)], 2)
    torch.testing.assert_close(xs, [0.5 * e1, torch.tensor([1 / 3], dtype=torch.float64)], rtol=1e-15, atol=0)


def test_an_early_stop_at_negative_curvature_is_logged_once_and_counted(caplog, monkeypatch):
    from prm.bilevel import conjugate_gradient as module

    monkeypatch.setattr(module, "early_stops", {"count": 0, "logged": False})
    indefinite = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
    b = torch.tensor([1.0, 2.0], dtype=torch.float64)  # b.Ab = -3: stops at step 0 of 20
    with caplog.at_level("WARNING", logger="prm.bilevel.conjugate_gradient"):
        conjugate_gradient(matrix_hvp(indefinite), [b], 20)
        conjugate_gradient(matrix_hvp(indefinite), [b], 20)
    messages = [r.getMessage() for r in caplog.records if "cg hypergradient" in r.getMessage()]
    assert len(messages) == 1 and "stopped after 0 of 20 iterations" in messages[0]
    assert module.early_stops["count"] == 2
    # a positive-definite solve never reports
    conjugate_gradient(matrix_hvp(torch.eye(2, dtype=torch.float64)), [b], 3)
    assert module.early_stops["count"] == 2


@pytest.mark.parametrize(
    "iterations,alpha,message",
    [(0, 1.0, "cg_iterations=0: must be an integer >= 1"), (2, 0.0, "cg_alpha=0.0: must be > 0")],
)
def test_conjugate_gradient_refuses_bad_settings(iterations, alpha, message):
    b = [torch.ones(2, dtype=torch.float64)]
    with pytest.raises(ValueError, match=message):
        conjugate_gradient(matrix_hvp(torch.eye(2, dtype=torch.float64)), b, iterations, alpha)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["reweight.hypergradient.type=cg", "reweight.hypergradient.iterations=0"],
            "iterations=0: must be >= 1",
        ),
        (["reweight.hypergradient.type=neumann", "reweight.hypergradient.alpha=0"], "alpha=0.0: must be > 0"),
    ],
)
def test_config_refuses_bad_cg_and_neumann_settings(overrides, message):
    from conftest import compose_config as composed

    from prm.config import ConfigError, validate_train_config

    cfg = composed("reweight=domain_table", "backbone.attn_implementation=eager", *overrides)
    with pytest.raises(ConfigError, match=message):
        validate_train_config(cfg)
    # neumann with 0 iterations is the estimate H^-1 ~ alpha I, and allowed
    validate_train_config(
        composed(
            "reweight=domain_table",
            "backbone.attn_implementation=eager",
            "reweight.hypergradient.type=neumann",
            "reweight.hypergradient.iterations=0",
        )
    )


@pytest.mark.slow
def test_training_with_type_cg_runs_the_suites_conjugate_gradient(tmp_path, monkeypatch):
    """train() end to end (smoke experiment, tiny backbone, eager attention) with type=cg: every upper
    step solves with the suite's CG (2 Hessian-vector products each), never Betty's, and the domain
    weights move to finite values."""
    from betty import hypergradient as betty_hypergradient
    from conftest import smoke_config as config

    from prm.bilevel import conjugate_gradient as suite_cg
    from prm.training import train

    def bettys(*args):
        raise AssertionError("Betty's cg ran")

    monkeypatch.setattr(
        betty_hypergradient, "jvp_fn_mapping", {**betty_hypergradient.jvp_fn_mapping, "cg": bettys}
    )
    products = []
    original = suite_cg.conjugate_gradient

    def counting(hvp, b, iterations, alpha=1.0):
        products.append(0)

        def counted(v):
            products[-1] += 1
            return hvp(v)

        return original(counted, b, iterations, alpha)

    monkeypatch.setattr(suite_cg, "conjugate_gradient", counting)
    monkeypatch.setenv("PRM_CACHE_DIR", str(tmp_path / "cache"))
    steps = 2
    metrics = train(
        config(
            "reweight=domain_table",
            "reweight.hypergradient.type=cg",
            "reweight.hypergradient.iterations=2",
            "backbone.attn_implementation=eager",
            f"train.steps={steps}",
            f"train.validate_every={steps}",
            "train.save_every=0",
        ),
        run_dir=tmp_path / "run",
    )
    assert products == [2] * steps  # one solve per upper step (unroll 1), two products each
    weights = [value for key, value in metrics.items() if key.startswith("weight/") and "_over_" not in key]
    assert len(weights) == 3 and all(math.isfinite(w) for w in weights)
    assert any(w != 1.0 for w in weights)  # the hypergradient reached the table


class FixedProbe:
    """A probe sampler stand-in: the same probe batches at every draw, and the steps it was asked at."""

    def __init__(self, batches):
        self.batches, self.steps = batches, []

    def draw(self, step):
        from prm.bilevel.probe import ProbeBatches

        self.steps.append(step)
        return ProbeBatches(self.batches)


@pytest.mark.numerics
@pytest.mark.parametrize("kind", ["instance_table", "instance_net"])
def test_darts_over_probe_chains_is_the_exact_mixed_derivative_over_those_chains(kind, registered):
    """With probe chains, the perturbed passes run over them (not the lower batch): the upper gradient
    is -d/dtheta (grad_phi L_probe . v), L_probe the weighted loss over every probe chain."""
    training_set, lower_batch, meta_batch = toy_batches()
    features, labels = data(seed=5, n=6)
    probe = [  # two batches, instances 1 and 4 are not in the lower batch
        make_batch(features[:4], labels[:4], instances=[1, 4, 0, 2], domains=[0, 0, 0, 1]),
        make_batch(features[4:], labels[4:], instances=[5, 7], domains=[1, 1]),
    ]
    if kind == "instance_table":
        reweighter = InstanceTable(training_set, nn.Softplus(), initialization=1.0)
        with torch.no_grad():
            reweighter.theta.add_(torch.linspace(-0.5, 0.5, 8))
    else:
        reweighter = InstanceNet(training_set, nn.Softplus(), hidden_size=4, layers=2)
    reweighter.double()
    prm, lower, upper = build(reweighter, [lower_batch], [meta_batch], alpha=1e-6)
    lower.probe = FixedProbe(probe)
    seen = capture_grad(upper)
    run(lower, upper, steps=1)

    merged = {
        key: torch.cat([b[key] for b in probe])
        for key in ("features", "step_mask", "step_labels", "instance")
    }
    merged["domain"] = torch.cat([b["domain"] for b in probe])
    expected = analytic_hypergradient(prm, reweighter, merged, meta_batch)
    assert lower.probe.steps == [1]  # drawn once per upper step (both perturbed passes share it)
    for got, want in zip(seen[0], expected):
        assert want.abs().max() > 1e-6
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-9)
    if kind == "instance_table":
        assert seen[0][0][[3, 6]].abs().max() == 0  # in the lower batch but not probed: no gradient
        assert seen[0][0][[1, 4]].abs().min() > 0  # probed though never in a lower batch


def test_probe_loss_outside_the_perturbed_passes_is_refused():
    from prm.bilevel.probe import ProbeBatches

    training_set, lower_batch, meta_batch = toy_batches()
    _, lower, upper = build(InstanceTable(training_set, nn.Softplus()).double(), [lower_batch], [meta_batch])
    lower.upper_problem = upper
    with pytest.raises(RuntimeError, match="only for DARTS"):
        lower.training_step(ProbeBatches([lower_batch]))


def test_upper_warmup_keeps_the_weights_until_the_lower_has_taken_its_steps():
    training_set, lower_batch, meta_batch = toy_batches()
    reweighter = InstanceTable(training_set, nn.Softplus()).double()
    prm, lower, upper = build(reweighter, [lower_batch], [meta_batch], upper_lr=0.1)
    lower.warmup_steps = 3  # Betty's Config.warmup_steps (reweight.hypergradient.warmup_steps)
    seen = capture_grad(upper)
    run(lower, upper, steps=5)
    assert len(seen) == 2  # upper steps after lower steps 4 and 5 only
