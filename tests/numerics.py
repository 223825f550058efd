"""Comparing two float computations of the same quantity, with the same verdict on every CPU.

Two code paths that compute the same function (the sparse and the full last layer, a packed and a
padded batch, a cached prefix and the whole chain, checkpointed and plain layers) round differently:
different matrix shapes pick different GEMM blockings, the vectorised kernels (ATen's AVX2, AVX-512 or
default paths, MKL's and oneDNN's per-ISA kernels) sum in different orders, and the thread count splits
reductions. In float32 the two paths differ by about sqrt(n) * 2^-24 per reduction of n terms,
amplified through the network and, for gradients and Hessian-vector products, by cancellation: up to
about 1e-4 of a tensor's scale, and by how much exactly depends on the CPU (issue 22: one of 3104
Hessian-vector-product elements 1.29e-4 apart on an AVX-512 EPYC, 1.3e-4 on an AVX2 one under
``ATEN_CPU_CAPABILITY=default``). No float32 tolerance tuned on one machine can promise a verdict on
another.

So tests whose point is the algebra run both paths in float64 (the models with ``.double()``, or
``build_backbone(..., dtype="float64")``) and compare with :func:`assert_close_at_scale` at
:data:`FLOAT64_PATHS`. The bound, derived:

- float64 rounds each operation to a relative 2^-53 = 1.1e-16. Summing n terms in two different orders
  gives results at most 2 * n * 2^-53 * sum|terms| apart (each order is within (n - 1) * 2^-53 *
  sum|terms| of the exact sum: Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed.,
  chapter 4). In these tiny models n <= 10^4 (hidden size <= 64 times <= 200
  positions) and even sum|terms| = 10^3 times the result's scale gives 2e-9 of the scale.
- float32 islands stay in a float64 computation: transformers computes RMSNorm and the eager
  attention softmax in float32 and the rotary tables from float32 frequencies, and the suite
  rounds step logits and scores to float32 on output (:mod:`prm.model.prm`,
  :func:`prm.evaluation.scoring.score_chains`). The two paths' float64 inputs to an island (1e-16
  apart) round to the same float32 value except with probability about 1e-16 / 2^-24 = 2e-9 per
  element; where they do not, the paths differ there by one float32 unit, 2^-24 = 6e-8 relative,
  carried on by the layers after it (gain below 10 in these 2-layer models with weights of std
  <= 0.1).

1e-5 of the scale covers both (the second by more than 15x) and passes on any CPU and thread count,
while a real bug (a wrong position, a dropped mask row, a wrong cached prefix, a lost second
derivative) moves results by 1e-1 to 1e0 of their scale (negative controls in tests/test_last_layer.py
and tests/test_prefix_sharing.py), four orders of magnitude above it. Measured over the 1746
comparisons of the ``numerics`` tests under ATen's AVX2 and default kernels, MKL's AUTO and COMPATIBLE
paths and 1 and 2 threads: at most 5.0e-7 of the scale, the same on every path (a float32 island
that rounded apart in packed InternVL scoring, the hidden states 3e-7 apart after it); most paths
agree to 1e-15.

The scale is the largest magnitude of the expected tensor (a normwise bound, Higham chapter 6):
elementwise relative tolerances fail on gradient entries that cancel to nearly zero, whose absolute
error is still set by the size of the terms that cancelled.
"""

from __future__ import annotations

import torch

FLOAT64_PATHS = 1e-5  # relative to the scale of the compared tensor; derived in the module docstring


def assert_close_at_scale(
    actual: torch.Tensor, expected: torch.Tensor, rel: float = FLOAT64_PATHS, msg: str | None = None
) -> None:
    """Assert ``|actual - expected| <= rel * max|expected|`` elementwise, compared in float64 (a float32
    output of a float64 computation, such as the PRM's step logits, against a float64 reference).

    Same shape required; ``expected`` all zeros demands exact equality. Raises AssertionError
    (torch.testing's message, prefixed by ``msg``) naming the worst element. NaN anywhere fails.
    """
    actual, expected = actual.detach().double(), expected.detach().double()
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    assert scale == scale, f"{msg or 'expected'}: NaN in the expected tensor"
    torch.testing.assert_close(
        actual,
        expected,
        rtol=0.0,
        atol=rel * scale,
        msg=None if msg is None else lambda default: f"{msg}: {default} (scale {scale:.3g}, rel {rel:g})",
    )


def sharpened_prm(family: str, head: str, prompt: str = "marker"):
    """A float64 tiny PRM of ``family`` whose weights are redrawn with std 0.1 (value head: 0.5,
    seeded), so that its step scores spread over [0, 1] and two float64 paths of it compare at
    :data:`FLOAT64_PATHS`."""
    from prm.model.backbones import build_backbone
    from prm.model.prm import ProcessRewardModel

    backbone = build_backbone(family, dtype="float64", prompt=prompt)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in backbone.model.parameters():
            if parameter.dim() >= 2:
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    prm = ProcessRewardModel(backbone, head)
    assert {p.dtype for p in backbone.model.parameters()} == {torch.float64}
    if prm.value_head is not None:
        torch.nn.init.normal_(prm.value_head.weight, std=0.5, generator=generator)
    return prm


def decided(grouped: list[list[torch.Tensor]], delta: float) -> dict[str, bool]:
    """Per aggregation, whether every problem's best-of-N pick survives moving each step score by
    ``delta``: every aggregation is non-decreasing in each step score, so a candidate's value lies
    between its aggregates at scores - delta and + delta; when the best one's lower end clears every
    other's upper end, any scores within delta pick it too."""
    from prm.evaluation.best_of_n import aggregate_all

    result = {}
    for group in grouped:
        steps = [s.double() for s in group]
        values = aggregate_all(steps)
        low = aggregate_all([(s - delta).clamp(0, 1) for s in steps])
        high = aggregate_all([(s + delta).clamp(0, 1) for s in steps])
        for name in values:
            best = int(values[name].argmax())
            others = torch.cat([high[name][:best], high[name][best + 1 :]])
            result[name] = result.get(name, True) and bool(low[name][best] > others.max())
    return result
