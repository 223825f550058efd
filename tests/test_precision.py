"""Step scores under bf16: the head runs in float32 whatever the backbone's precision (issue 22).

The defect: both label logits were computed under the caller's bf16 autocast and rounded to bf16
(8 significant bits: spacing 0.125 between 16 and 32) before their difference was taken, so with
label logits near 20 (as a trained PRM has) l+ - l- only took multiples of 0.125 and the scores of a
whole test set collapsed to a few values.

Setup: the tiny Qwen2-VL backbone on a small generated demo best-of-N set, with its LM head untied
from the input embeddings (the demo text contains "+", whose input embedding must not move) and the
two label rows redrawn so that both label logits sit near 20 and their difference carries some
signal about step correctness:

- ``base = 20 c / |c|^2`` with ``c`` the mean float32 hidden state at the score positions (all of
  them the step marker token, so they share a large common part and h . base stays near 20);
- ``w``: a least-squares fit of +-1 step correctness on the top principal components of the centred
  hidden states, orthogonal to ``c`` (the directions the bf16 backbone perturbs least, relative to
  their spread);
- label rows ``base + w / 2`` (+) and ``base - w / 2`` (-), so l+ - l- = h . w.

``LegacyPRM`` is the head as it was, kept here to show that each test fails on it.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prm.data.dataset import ChainDataset, PRMCollator, flatten_candidates
from prm.data.records import StepChain
from prm.data.sources import DataSources
from prm.data.synthetic import DemoBenchmark
from prm.device import autocast
from prm.evaluation.best_of_n import best_of_n
from prm.evaluation.scoring import score_chains
from prm.model.backbones import build_backbone
from prm.model.prm import ProcessRewardModel, StepScores

U32 = 2.0**-24  # unit roundoff of float32
LABEL_LOGIT = 20.0  # where both label logits sit, as in the defect report
SPREAD = 2.0  # least-squares target +-SPREAD for right / wrong steps (l+ - l- of std ~0.6)
COMPONENTS = 8  # principal components the signal direction is fitted on


def gamma(n: int) -> float:
    """Higham's gamma_n = n u / (1 - n u): the relative error bound of an n-term float32 dot product
    (any summation order, with or without FMA), Accuracy and Stability of Numerical Algorithms, 3.1."""
    return n * U32 / (1 - n * U32)


class LegacyPRM(ProcessRewardModel):
    """The step head before issue 22: run under the caller's autocast, both label logits (or the value
    head) in bf16, then their difference."""

    def step_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.head == "token":
            rows = self.model.get_output_embeddings().weight[self.label_ids]
            pair = hidden @ rows.T.to(hidden.dtype)
            return (pair[..., 0] - pair[..., 1]).float()
        return self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """16 generated best-of-N problems of 4 candidates: (problems, one chain per candidate)."""
    generator = DemoBenchmark(
        tmp_path_factory.mktemp("demo"), train_per_domain=0, meta_size=0, test_problems=16, n_candidates=4
    )
    problems = DataSources(name="demo", generator=generator).load("test")
    return problems, flatten_candidates(problems)


def collate(backbone, chains) -> dict:
    return PRMCollator(backbone, None)([ChainDataset(chains)[i] for i in range(len(chains))])


def step_correct(chain) -> list[float]:
    """1.0 for the steps before the chain's first error (every step of a right chain), else 0.0."""
    return [float(chain.first_error == -1 or k < chain.first_error) for k in range(len(chain.steps))]


@pytest.fixture(scope="module")
def scaled(demo):
    """A token-head PRM whose label logits sit near 20 on the demo chains (see the module docstring)."""
    _, chains = demo
    backbone = build_backbone("qwen2_vl")
    model = backbone.model
    model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())  # untie from the inputs
    model.config.tie_word_embeddings = False
    prm = ProcessRewardModel(backbone, "token").eval()
    batch = collate(backbone, chains)
    with torch.no_grad():
        hidden = prm.hidden_at_markers(batch)[batch["step_mask"]].double()  # [steps, hidden]
    c = hidden.mean(0)
    base = LABEL_LOGIT * c / c.dot(c)
    across = torch.eye(len(c), dtype=torch.float64) - torch.outer(c, c) / c.dot(c)  # orthogonal to c
    centred = (hidden - c) @ across
    top = torch.linalg.svd(centred, full_matrices=False).Vh[:COMPONENTS].T  # [hidden, components]
    target = torch.tensor([y for chain in chains for y in step_correct(chain)], dtype=torch.float64)
    w = across @ top @ torch.linalg.lstsq(centred @ top, (2 * target - 1) * SPREAD).solution
    plus, minus = backbone.label_token_ids
    with torch.no_grad():
        model.lm_head.weight[plus] = (base + w / 2).float()
        model.lm_head.weight[minus] = (base - w / 2).float()
    return prm


def legacy_of(prm: ProcessRewardModel) -> LegacyPRM:
    """The old head on the same backbone (shared modules, value head included)."""
    legacy = LegacyPRM(prm.backbone, prm.head).eval()
    legacy.value_head = prm.value_head
    return legacy


def as_value_head(prm: ProcessRewardModel) -> ProcessRewardModel:
    """A value-head PRM on the same backbone whose output sits near 20 too: weight ``base + w`` and
    bias 0, ``w`` the token head's difference of rows (so the value head carries the same signal)."""
    rows = prm.model.get_output_embeddings().weight[prm.label_ids].detach()
    value = ProcessRewardModel(prm.backbone, "value").eval()
    with torch.no_grad():
        value.value_head.weight.copy_(((rows[0] + rows[1]) / 2 + (rows[0] - rows[1])).unsqueeze(0))
        value.value_head.bias.zero_()
    return value


def reference(prm: ProcessRewardModel, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The head in float64 on ``hidden`` ``[n, hidden]``, and its float32 error bound per entry.

    Token head: hidden . (w+ - w-). float32 computes fl(w+ - w-) (error <= u |w+ - w-| per entry)
    and a dot product of ``hidden_size`` terms (error <= gamma_H sum |h_i| |d_i|), so the error is
    at most gamma_(H+1) sum_i |h_i| |w+_i - w-_i|. Value head: hidden . v + b, an (H+1)-term dot
    product: gamma_(H+1) (sum_i |h_i| |v_i| + |b|). ``hidden`` is exact in float32 (float32 or bf16).
    """
    h = hidden.detach().double()
    size = h.shape[-1]
    if prm.head == "token":
        rows = prm.model.get_output_embeddings().weight[prm.label_ids].detach().double()
        direction = rows[0] - rows[1]
        return h @ direction, gamma(size + 1) * (h.abs() @ direction.abs())
    weight = prm.value_head.weight.detach().double()[0]
    bias = prm.value_head.bias.detach().double()[0]
    return h @ weight + bias, gamma(size + 1) * (h.abs() @ weight.abs() + bias.abs())


def near_twenty(prm: ProcessRewardModel, hidden: torch.Tensor) -> torch.Tensor:
    """Whether each of the values the old head rounded to bf16 (both label logits, or the value-head
    output) lies in [16, 32), where bf16's spacing is 0.125."""
    h = hidden.detach().double()
    if prm.head == "token":
        values = h @ prm.model.get_output_embeddings().weight[prm.label_ids].detach().double().T
    else:
        values = h @ prm.value_head.weight.detach().double().T + prm.value_head.bias.detach().double()
    return ((values >= 16) & (values < 32)).all(-1)


def distinct(values: torch.Tensor) -> int:
    return int(torch.unique(values).numel())


@pytest.mark.parametrize("head", ["token", "value"])
def test_bf16_scores_are_the_float32_head_on_the_bf16_hidden_states(demo, scaled, head):
    _, chains = demo
    prm = scaled if head == "token" else as_value_head(scaled)
    batch = collate(prm.backbone, chains[:24])
    mask = batch["step_mask"]
    with torch.no_grad():
        fp32_hidden = prm.hidden_at_markers(batch)[mask]
        with autocast("cpu", "bf16"):
            hidden = prm.hidden_at_markers(batch)  # the backbone in bf16
            logits = prm.step_logits(hidden)
            old = legacy_of(prm).step_logits(hidden)
        outside = prm.step_logits(hidden)  # no autocast at all
    assert not torch.equal(hidden[mask], fp32_hidden)  # the backbone did run in bf16
    assert logits.dtype == torch.float32
    # autocast changes nothing in the head: the same float32 operations on the same inputs
    assert torch.equal(logits, outside)
    expected, bound = reference(prm, hidden[mask])
    assert near_twenty(prm, hidden[mask]).all()  # as in the defect
    error = (logits[mask].double() - expected).abs()
    assert (error <= bound).all(), f"float32 head off by {(error - bound).max():.3g} beyond its bound"
    # the old head rounded to bf16 near 20 (spacing 0.0625 to 0.125): off by far more, far fewer values
    assert (old[mask].double() - expected).abs().max() > 100 * bound.max()
    first = first_of_each_prefix(chains[:24])  # candidates share first steps: equal prefixes, equal scores
    fp32_logits = prm.step_logits(fp32_hidden).detach()
    assert distinct(fp32_logits[first]) == len(first)
    assert distinct(logits[mask][first]) == distinct(fp32_logits[first])
    assert distinct(old[mask][first]) < len(first) / 4


def first_of_each_prefix(chains) -> list[int]:
    """Indices, in the chains' steps laid end to end, of the first occurrence of each distinct step
    prefix (question, images, steps[:k+1]): the candidates of a problem share their first steps, and
    the same prefix has the same score."""
    seen: dict[tuple, int] = {}
    index = 0
    for chain in chains:
        for k in range(len(chain.steps)):
            seen.setdefault((chain.question, tuple(chain.images), tuple(chain.steps[: k + 1])), index)
            index += 1
    return list(seen.values())


def unique_prefix_scores(chains, scores: list[torch.Tensor]) -> torch.Tensor:
    """One score per distinct step prefix (see :func:`first_of_each_prefix`)."""
    return torch.cat(scores)[first_of_each_prefix(chains)]


@pytest.mark.parametrize("prefix_sharing", [False, True])
def test_bf16_scoring_keeps_every_step_score_distinct(demo, scaled, prefix_sharing):
    """Through score_chains (validation and evaluate): as many distinct step scores as in float32.

    Two different prefixes getting bitwise-equal float32 scores by chance would need two of ~300
    values spread over ~0.4 to meet at float32 resolution (~6e-8): odds below 1e-3."""
    _, chains = demo

    def scores(prm, precision):
        return unique_prefix_scores(
            chains, score_chains(prm, chains, 16, None, "cpu", precision, prefix_sharing=prefix_sharing)
        )

    fp32, bf16 = scores(scaled, "fp32"), scores(scaled, "bf16")
    assert distinct(fp32) == len(fp32)  # every distinct prefix its own score
    assert distinct(bf16) == distinct(fp32)
    assert distinct(scores(legacy_of(scaled), "bf16")) < len(fp32) / 4  # the old head collapses them


def best_of_n_results(problems, chains, prm, precision):
    flat = score_chains(prm, chains, 16, None, "cpu", precision, prefix_sharing=True)  # evaluate's default
    per_problem, start = [], 0
    for problem in problems:
        per_problem.append(flat[start : start + len(problem.candidates)])
        start += len(problem.candidates)
    return best_of_n(problems, per_problem).aggregations


def test_best_of_n_under_bf16_matches_float32(demo, scaled):
    """Tolerance: one problem per aggregation. The backbone still runs in bf16, so a problem whose best
    right and best wrong candidates lie within the backbone's bf16 perturbation of each other (about
    2e-3 in step score on this set) may change its pick (a tie of the two counts half); measured on
    this set: no accuracy changes at all, at 1 or 2 threads, AVX2 or ATen's default kernels."""
    problems, chains = demo
    fp32 = best_of_n_results(problems, chains, scaled, "fp32")
    bf16 = best_of_n_results(problems, chains, scaled, "bf16")
    old = best_of_n_results(problems, chains, legacy_of(scaled), "bf16")
    tolerance = 1 / len(problems)
    for name, result in fp32.items():
        assert abs(bf16[name].accuracy - result.accuracy) <= tolerance + 1e-12, name
    assert max(fp32["mean"].accuracy, fp32["min"].accuracy) > 0.5  # the fitted head does pick right ones
    # the old head fails it: its quantised scores tie candidates on many problems (equal aggregates),
    # and some accuracy moves by more than the tolerance
    assert sum(old[name].ties for name in fp32) > sum(fp32[name].ties for name in fp32) + len(problems) / 2
    assert max(abs(old[name].accuracy - fp32[name].accuracy) for name in fp32) > tolerance


def test_bf16_training_step_reaches_the_label_rows_and_the_backbone(demo, scaled):
    """Under bf16 autocast the loss still back-propagates: to the two label rows, with the float64
    gradient of binary cross-entropy on z = h . (w+ - w-), and through the hidden states to the
    backbone. The per-chain loss is the mean over its labelled steps, so d(sum of chain losses)/dz_s
    = (sigmoid(z_s) - y_s) / n_chain and d/dw+ = sum_s (sigmoid(z_s) - y_s) / n_chain h_s = -d/dw-."""
    _, chains = demo
    train_chains = [
        StepChain(id=c.id, question=c.question, steps=c.steps, labels=step_correct(c), images=c.images)
        for c in chains[:8]
    ]
    prm = scaled
    batch = collate(prm.backbone, train_chains)
    prm.zero_grad(set_to_none=True)
    prm.train()
    try:
        with autocast("cpu", "bf16"):
            hidden = prm.hidden_at_markers(batch)
            scores = StepScores(logits=prm.step_logits(hidden), mask=batch["step_mask"])
        losses, has_label = prm.losses(scores, batch["step_labels"])
        losses.sum().backward()
    finally:
        prm.eval()
    assert losses.dtype == torch.float32 and has_label.all()
    mask = batch["step_mask"]
    z, z_bound = reference(prm, hidden.detach()[mask])
    counts = mask.sum(-1, keepdim=True).expand_as(mask)[mask].double()
    labels = batch["step_labels"][mask].double()
    g = (torch.sigmoid(z) - labels) / counts  # [steps]
    h = hidden.detach()[mask].double()
    expected = g @ h
    # float32 error of each g_s: z's (<= z_bound, times sigmoid' <= 1/4) plus a few ulps for the
    # sigmoid, the subtraction and the division; then a len(g)-term sum of products g_s h_s
    g_error = (z_bound / 4 + 4 * U32) / counts
    bound = gamma(len(g) + 1) * (g.abs() @ h.abs()) + g_error @ h.abs()
    grad = prm.model.lm_head.weight.grad
    plus, minus = prm.backbone.label_token_ids
    assert ((grad[plus].double() - expected).abs() <= bound).all()
    assert torch.equal(grad[minus], -grad[plus])
    others = torch.ones(grad.shape[0], dtype=torch.bool)
    others[[plus, minus]] = False
    assert torch.count_nonzero(grad[others]) == 0  # full-vocabulary logits are never formed
    layer = prm.model.model.language_model.layers[0].self_attn.q_proj.weight
    assert layer.grad is not None and torch.isfinite(layer.grad).all() and layer.grad.abs().sum() > 0
    prm.zero_grad(set_to_none=True)


def test_bf16_weights_give_float32_scores():
    """DeepSpeed's bf16 keeps the weights themselves in bf16: hidden states and LM-head rows are bf16
    tensors, and the head still computes in float32 (exact float32 of the bf16 inputs)."""
    backbone = build_backbone("qwen2", dtype="bfloat16")
    prm = ProcessRewardModel(backbone, "token").eval()
    chains = [
        StepChain(
            id=f"c{i}", question=f"What is {i} + 3?", steps=[f"{i} + 3 = {i + 3}.", "Done."], labels=[1, 1]
        )
        for i in range(4)
    ]
    batch = collate(backbone, chains)
    with torch.no_grad():
        hidden = prm.hidden_at_markers(batch)
        logits = prm.step_logits(hidden)
    assert hidden.dtype == torch.bfloat16 and logits.dtype == torch.float32
    mask = batch["step_mask"]
    expected, bound = reference(prm, hidden[mask])
    assert ((logits[mask].double() - expected).abs() <= bound).all()
    assert math.isfinite(float(logits[mask].sum()))
