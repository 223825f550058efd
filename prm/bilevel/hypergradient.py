"""Betty's hypergradients made rank-consistent, plus DARTS for parameters partitioned by ZeRO-3.

- Every registered type averages the meta-gradient v over ranks first: each rank computes v on its
  own meta batch; averaged, all ranks perturb the PRM along the same v with the same eps, so their
  upper gradients are pieces of one global estimate (the upper problem then averages them).
- Under ZeRO-3, ``p.data`` is empty outside a forward, so Betty's DARTS cannot add eps * v to it.
  The variant below perturbs each rank's shard (``p.ds_tensor``, the rank's slice of the flattened
  parameter) and, for parameters kept whole (``stage3_param_persistence_threshold``), the whole
  tensor too; the next forward gathers the perturbed shards. Shards are restored from a backup
  exactly, not by subtracting (which leaves rounding error, large in bf16).

- DARTS differentiates the lower problem's loss at the perturbed parameters only with respect to the
  upper parameters, through the weights; its passes run inside the lower problem's ``graph_free()``
  block (PRMLower.graph_free), so its PRM forward runs without an autograd graph. Neumann, CG and
  SAMA need second derivatives and keep it.

- With ``reweight.hypergradient.probe_chains`` DARTS' perturbed passes run over a fresh draw of
  training chains instead of the lower problem's current batch (prm/bilevel/probe.py).

- ``cg`` is the suite's own (prm/bilevel/conjugate_gradient.py): betty-ml 0.2.1's conjugate gradient
  does not converge to ``H^-1 g``.

All of it is registered into ``betty.hypergradient.jvp_fn_mapping`` under Betty's names; in a world of
one without ZeRO-3 it is Betty's function unchanged (the suite's own for ``cg``).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist
from betty import hypergradient
from betty.utils import replace_none_with_zero, to_vec

from prm.bilevel import conjugate_gradient
from prm.distributed import average


def _is_zero3(problem) -> bool:
    engine = getattr(problem, "engine", None)
    return engine is not None and engine.zero_optimization_stage() == 3


def _whole(parameter) -> bool:
    """Is the full parameter present in ``.data``, in storage of its own (not the shard's)?"""
    return (
        parameter.data.numel() == parameter.ds_numel
        and parameter.data.data_ptr() != parameter.ds_tensor.data_ptr()
    )


def _shard_of(vector: torch.Tensor, parameter) -> torch.Tensor:
    """This rank's slice of the flattened ``vector``, zero-padded like the parameter's shard."""
    shard = parameter.ds_tensor
    start = (dist.get_rank() if dist.is_initialized() else 0) * shard.numel()
    piece = torch.zeros(shard.numel(), dtype=shard.dtype, device=shard.device)
    flat = vector.detach().reshape(-1)[start : start + shard.numel()]
    piece[: flat.numel()] = flat.to(shard.dtype)
    return piece


def darts_zero3(vector, curr, prev, sync):
    """Betty's DARTS (same eps, same sign conventions) on ZeRO-3-partitioned lower parameters."""
    eps = curr.config.darts_alpha / (to_vec(vector).norm().item() + 1e-15)
    params = list(curr.meta_trainable_parameters())
    shards = [p.ds_tensor.detach().clone() for p in params]
    wholes = [p.data.detach().clone() if _whole(p) else None for p in params]
    pieces = [_shard_of(v, p) for p, v in zip(params, vector)]

    def perturbed_grad(sign: float):
        with torch.no_grad():
            for p, v, piece in zip(params, vector, pieces):
                p.ds_tensor.add_(piece, alpha=sign * eps)
                if _whole(p):
                    p.data.add_(v.to(p.dtype), alpha=sign * eps)
        loss = curr.training_step_exec(curr.cur_batch)
        grads = torch.autograd.grad(loss, prev.trainable_parameters(), allow_unused=True)
        restore()
        return replace_none_with_zero(grads, prev.trainable_parameters())

    def restore():
        with torch.no_grad():
            for p, shard, whole in zip(params, shards, wholes):
                p.ds_tensor.copy_(shard)
                if whole is not None and _whole(p):
                    p.data.copy_(whole)

    grad_p, grad_n = perturbed_grad(+1.0), perturbed_grad(-1.0)
    implicit = [(n - p).div_(2 * eps) for n, p in zip(grad_n, grad_p)]
    if sync:
        prev.set_grads(prev.trainable_parameters(), implicit)
        return None
    return implicit


@contextmanager
def _probe(problem, enabled: bool):
    """For DARTS with probe chains (prm/bilevel/probe.py): the lower problem's current batch replaced
    by this upper step's draw of probe chains for the duration (both perturbed passes), then put back."""
    sampler = getattr(problem, "probe", None)
    if not enabled or sampler is None:
        yield
        return
    current = problem.cur_batch
    problem.cur_batch = sampler.draw(problem._count)
    try:
        yield
    finally:
        problem.cur_batch = current


def _rank_averaged(fn, name: str):
    def averaged(vector, curr, prev, sync):
        if dist.is_initialized() and dist.get_world_size() > 1:
            vector = [v.detach().clone() for v in vector]
            average(vector)
        with curr.graph_free() if name == "darts" else nullcontext(), _probe(curr, name == "darts"):
            if name == "darts" and _is_zero3(curr):
                return darts_zero3(vector, curr, prev, sync)
            if _is_zero3(curr):
                raise NotImplementedError(f"hypergradient {name!r} under ZeRO-3: use darts (or zero1/zero2)")
            return fn(vector, curr, prev, sync)

    averaged.rank_averaged = True
    averaged.__wrapped__ = fn
    return averaged


#: hypergradients of the suite's own that replace Betty's under the same name
OWN = {"cg": conjugate_gradient.cg}  # betty-ml 0.2.1's cg updates its direction from the old residual


def register() -> None:
    """Put the suite's hypergradients into ``betty.hypergradient.jvp_fn_mapping`` (idempotent): its own
    ``cg`` (prm/bilevel/conjugate_gradient.py) in place of Betty's, every type rank-averaged."""
    for name, fn in OWN.items():
        current = hypergradient.jvp_fn_mapping.get(name)
        if getattr(current, "__wrapped__", current) is not fn:
            hypergradient.jvp_fn_mapping[name] = fn
    for name, fn in list(hypergradient.jvp_fn_mapping.items()):
        if not getattr(fn, "rank_averaged", False):
            hypergradient.jvp_fn_mapping[name] = _rank_averaged(fn, name)
