"""The conjugate-gradient hypergradient (``reweight.hypergradient.type=cg``), registered over Betty's.

By the implicit function theorem the reweighter's gradient is

    dL_meta/dtheta = -(d^2 L_lower / dtheta dphi) x,    H x = g,
    H = d^2 L_lower / dphi^2,    g = dL_meta / dphi,

(docs/methods.md#hypergradients). :func:`cg` solves ``H x = g`` with ``cg_iterations`` steps of
conjugate gradients (Hestenes and Stiefel 1952; Nocedal and Wright, *Numerical Optimization*, 2nd ed.,
Algorithm 5.2), each step one Hessian-vector product by double backward, then forms the mixed term by
one more backward into the reweighter's parameters.

Why not Betty's: betty-ml 0.2.1's ``betty.hypergradient.cg`` builds the next search direction from the
previous residual instead of the new one, so its directions are not conjugate and its estimate drifts
away from ``H^-1 g`` as iterations grow; it also takes Hessian-vector products with respect to every
parameter of the lower problem (``parameters()``), frozen ones (LoRA's backbone) included.

``cg_alpha`` keeps Betty's meaning, a scale of the Hessian: CG runs on ``(alpha H) y = g`` and returns
``alpha y``, an estimate of ``H^-1 g`` for every ``alpha > 0`` (as ``neumann_alpha`` scales the Neumann
series ``alpha * sum_j (I - alpha H)^j g``). Conjugate gradients are invariant under scaling the
operator (the iterates on ``alpha H`` are those on ``H`` divided by ``alpha``), so with a correct CG
``alpha`` changes the result only by rounding, unlike Neumann's, where it sets the rate of convergence.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

log = logging.getLogger(__name__)
# Solves stopped early at a direction of non-positive curvature, and the first of them reported.
early_stops = {"count": 0, "logged": False}

Vectors = Sequence[torch.Tensor]


def _dot(a: Vectors, b: Vectors) -> torch.Tensor:
    """sum_i <a_i, b_i> over a list of tensors, accumulated in at least float32 (a 0-dim tensor)."""
    return sum(torch.sum(x * y, dtype=torch.promote_types(x.dtype, torch.float32)) for x, y in zip(a, b))


def conjugate_gradient(
    hvp: Callable[[list[torch.Tensor]], Sequence[torch.Tensor]],
    b: Vectors,
    iterations: int,
    alpha: float = 1.0,
) -> list[torch.Tensor]:
    """Approximate ``H^-1 b`` by ``iterations`` conjugate-gradient steps on ``(alpha H) y = b`` from
    ``y = 0``; returns ``alpha y`` (Betty's ``cg_alpha`` semantics, see the module docstring).

    Args:
        hvp: ``v -> H v`` for a symmetric ``H``, on lists of tensors shaped like ``b``.
        b: the right-hand side, a list of tensors (e.g. one per parameter).
        iterations: CG steps (each one ``hvp`` call). In exact arithmetic and for positive-definite
            ``H``, step k gives the minimiser of the ``H``-norm error over the Krylov space
            span{b, Hb, ..., H^(k-1) b}, and ``H^-1 b`` itself after at most ``dim(b)`` steps.
        alpha: the Hessian's scale (> 0).

    Returns:
        A list of tensors shaped like ``b``. The iteration stops early when the residual is exactly 0
        (the solution is reached; ``b = 0`` gives zeros). Where ``H`` is not positive definite along a
        search direction (``p^T H p <= 0``, possible at a non-convex lower problem) the quadratic CG
        minimises is unbounded below; as in truncated Newton-CG (Nocedal and Wright, Algorithm 7.1)
        the iterate so far is returned, or ``alpha b`` (``H^-1 ~ alpha I``, the zero-iteration Neumann
        estimate) when that happens at the first step. A non-finite ``H v`` gives a non-finite result.

    Raises:
        ValueError: ``iterations`` < 1 or ``alpha`` <= 0 (named by Betty's keys cg_iterations and
            cg_alpha).
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"cg_iterations={iterations!r}: must be an integer >= 1")
    if not alpha > 0:
        raise ValueError(f"cg_alpha={alpha!r}: must be > 0 (it scales the Hessian)")
    y = [torch.zeros_like(v) for v in b]
    r = [v.detach().clone() for v in b]  # residual b - alpha H y, at y = 0
    p = [v.clone() for v in r]  # search direction
    rr = _dot(r, r)
    if rr == 0:
        return y
    for step in range(iterations):
        ap = [alpha * v for v in hvp(p)]
        curvature = _dot(p, ap)
        if curvature <= 0:  # False for NaN: a non-finite product propagates into the result
            _report_early_stop(step, iterations, float(curvature))
            if step == 0:
                return [alpha * v.detach().clone() for v in b]
            break
        size = rr / curvature
        y = [yi + size * pi for yi, pi in zip(y, p)]
        r = [ri - size * api for ri, api in zip(r, ap)]
        rr_new = _dot(r, r)
        if rr_new == 0:
            break
        beta = rr_new / rr  # Nocedal and Wright eq. (5.24d)
        p = [ri + beta * pi for ri, pi in zip(r, p)]  # from the *new* residual
        rr = rr_new
    return [alpha * yi for yi in y]


def _report_early_stop(step: int, iterations: int, curvature: float) -> None:
    """Count a solve that stopped at step ``step`` of ``iterations`` (non-positive curvature) and log the
    first one, so a user who asked for more iterations learns that they were not used."""
    early_stops["count"] += 1
    if not early_stops["logged"]:
        early_stops["logged"] = True
        log.warning(
            "cg hypergradient: stopped after %d of %d iterations: the lower loss's Hessian has "
            "non-positive curvature (p^T H p = %.3g) along a search direction (a non-convex lower "
            "problem), where conjugate gradients cannot continue; the iterate so far is used. Later "
            "early stops are counted, not logged (prm.bilevel.conjugate_gradient.early_stops). "
            "type=neumann with a small alpha does not need positive curvature",
            step,
            iterations,
            curvature,
        )


def hessian_vector_product(gradient: Vectors, parameters: Vectors, vector: Vectors) -> list[torch.Tensor]:
    """``H v`` by double backward: the derivative of ``<gradient, v>`` with respect to ``parameters``,
    where ``gradient`` is ``dL/dparameters`` built with ``create_graph=True``; the graph is kept for
    the next product. A gradient that does not depend on the parameters (a loss linear in them)
    contributes zeros."""
    pairs = [(g, v) for g, v in zip(gradient, vector) if g.requires_grad]
    if not pairs:
        return [torch.zeros_like(v) for v in vector]
    outputs, directions = zip(*pairs)
    products = torch.autograd.grad(
        outputs, list(parameters), grad_outputs=directions, retain_graph=True, allow_unused=True
    )
    return [torch.zeros_like(v) if h is None else h for h, v in zip(products, vector)]


def cg(vector, curr, prev, sync):
    """Betty hypergradient function (``betty.hypergradient.jvp_fn_mapping["cg"]``'s signature).

    Args:
        vector: ``g = dL_meta/dphi``, one tensor per ``curr.trainable_parameters()``.
        curr: the lower problem (its ``cur_batch`` is the batch of its last step; ``config.cg_iterations``
            and ``config.cg_alpha`` tune the solve).
        prev: the upper problem, whose ``trainable_parameters()`` receive the hypergradient.
        sync: accumulate ``-(d^2 L_lower / dtheta dphi) x`` into ``prev``'s ``.grad`` and return None
            (True), or return it, one tensor (or None where unused) per upper parameter (False).

    Raises:
        NotImplementedError: ``curr`` has lower problems of its own (more than two levels), as in Betty.
        ValueError: bad ``cg_iterations`` / ``cg_alpha`` (see :func:`conjugate_gradient`).
    """
    if len(curr.paths) != 0:
        raise NotImplementedError("hypergradient cg supports two levels only, as in Betty")
    config = curr.config
    parameters = list(curr.trainable_parameters())
    loss = curr.training_step_exec(curr.cur_batch)
    gradient = torch.autograd.grad(loss, parameters, create_graph=True)
    x = conjugate_gradient(
        lambda v: hessian_vector_product(gradient, parameters, v),
        [v.detach() for v in vector],
        config.cg_iterations,
        config.cg_alpha,
    )
    # the mixed term -d/dtheta <dL_lower/dphi, x>, through the parts of the gradient that depend on theta
    pairs = [(g, -xi) for g, xi in zip(gradient, x) if g.requires_grad]
    outputs, directions = [g for g, _ in pairs], [d for _, d in pairs]
    upper = list(prev.trainable_parameters())
    if not outputs:  # a lower loss linear in phi: no mixed term
        return None if sync else [None] * len(upper)
    if sync:
        torch.autograd.backward(outputs, inputs=upper, grad_tensors=directions)
        return None
    return list(torch.autograd.grad(outputs, upper, grad_outputs=directions, allow_unused=True))
