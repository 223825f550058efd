"""The upper problem: the reweighter, tuned so the PRM does well on the meta set (a Betty ImplicitProblem).

Its loss is the meta loss of the *lower* problem's PRM (given to the constructor as ``prm``) on a meta
batch; the reweighter's parameters get their gradient through Betty's hypergradient (``Config.type``
of the lower problem: darts, neumann, cg or sama), never directly. Precision, the non-finite guard,
the schedule and the metrics window are the shared base's (prm/bilevel/problem.py). Its own:

- one optimiser per parameter group the reweighter declares (:meth:`Reweighter.parameter_groups`),
  each with its own schedule (prm/bilevel/groups.py); a sparse group's gradients are handed to its
  optimiser as sparse tensors (torch's ``SparseAdam`` then steps only the rows that have a gradient:
  instances of the batch the hypergradient used), so unsampled weights stay where they are;
- ``grad_scale="rms"`` (``reweight.upper.grad_scale``) divides the hypergradient by the RMS of its
  non-zero entries before the step (:func:`rms_scale`), for SGD on tables;
- a hypergradient that is not finite (e.g. after a non-finite lower step) is not applied: the step is
  skipped and counted (``reweight/nonfinite_steps``), and too many in a row stop the run;
- with several ranks the gradient is averaged over them before the step, so the replicated
  reweighter stays identical on every rank;
- a reweighter that weighs domains logs each domain's weight after every upper step
  (``reweight/weight/<domain>``), so the weights' path, not only their end, is in the metrics.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from prm.bilevel.groups import GroupedOptimizer, GroupedSchedule, grouped
from prm.bilevel.meta_loss import meta_losses, step_meta_losses
from prm.bilevel.problem import BilevelProblem
from prm.config import GradScale, check_choice
from prm.device import to_device
from prm.distributed import average
from prm.reweight.base import ParameterGroup


def rms_scale(grad: torch.Tensor) -> None:
    """Divide ``grad`` in place by the root mean square of its non-zero entries (a table: the rows
    this step touched), so that plain SGD moves them by ``lr`` on average while keeping their
    relative sizes: unlike per-row Adam, a chain with a strong signal moves further than one with a
    weak one. A gradient of zeros is left as it is."""
    with torch.no_grad():
        touched = grad != 0
        if bool(touched.any()):
            grad.div_(grad[touched].float().pow(2).mean().sqrt().to(grad.dtype))


class ReweightUpper(BilevelProblem):
    """Upper level over the meta set.

    ``module``: the reweighter (a :class:`prm.reweight.Reweighter`); ``prm``: the lower problem's
    PRM, whose meta loss this problem minimises; ``optimizer``: ``fn(group) -> torch optimiser``,
    called once per :class:`ParameterGroup` of the reweighter; ``schedule``: ``fn(optimizer) ->
    LR scheduler`` (or None), once per optimiser; ``aggregation`` and ``loss_target``: the meta loss
    (prm/bilevel/meta_loss.py); ``grad_scale``: none or rms. Raises ValueError for an unknown
    ``grad_scale``.
    """

    def __init__(
        self,
        name: str,
        config,
        module,
        optimizer: Callable[[ParameterGroup], torch.optim.Optimizer],
        train_data_loader,
        prm,
        aggregation,
        loss_target: str = "+",
        precision: str = "fp32",
        schedule: Callable | None = None,
        max_nonfinite_steps: int = 10,
        grad_scale: str = "none",
    ):
        check_choice("reweight.upper.grad_scale", grad_scale, GradScale)
        self.groups = module.parameter_groups()
        optimizers = {group.name: optimizer(group) for group in self.groups}
        schedules = {name: schedule(o) for name, o in optimizers.items()} if schedule is not None else {}
        super().__init__(
            name,
            config,
            module,
            grouped(optimizers, GroupedOptimizer),
            train_data_loader,
            precision,
            grouped(schedules, GroupedSchedule) if schedules else None,
            max_nonfinite_steps,
        )
        self.lower_prm = prm  # not ``self.prm``: Betty sets each problem on the other under its name
        self.aggregation = aggregation
        self.loss_target = loss_target
        self.grad_scale = grad_scale
        self.steps_taken = 0

    def training_step(self, batch):
        batch = to_device(batch, self.device)
        with self.autocast():
            scores = self.lower_prm(batch)
        if self.loss_target == "steps":
            losses = step_meta_losses(self.lower_prm, scores, batch)
        else:
            losses = meta_losses(
                scores.probs.float(), scores.mask, batch["chain_label"], self.aggregation, self.loss_target
            )
        loss = losses.mean()
        self.record({"loss": float(loss.detach())})
        return loss

    def custom_optimizer_step(self, *args, **kwargs):
        # Replicated on every rank: average the ranks' pieces of the hypergradient so all step alike.
        grads = [p.grad for p in self.trainable_parameters() if p.grad is not None]
        average(grads)
        self.nonfinite.observe(self.last_metrics.get("loss"), grads)
        finite = self.nonfinite.close_step(self.steps_taken + 1)
        self.last_metrics["nonfinite_steps"] = self.nonfinite.skipped
        self.steps_taken += 1
        if not finite:
            return
        if grads:
            self.last_metrics["grad_norm"] = float(
                torch.stack([g.detach().float().norm() for g in grads]).norm()
            )
        if self.grad_scale == "rms":
            for grad in grads:
                rms_scale(grad)
        for group in self.groups:
            if group.sparse:
                for parameter in group.parameters:
                    if parameter.grad is not None and not parameter.grad.is_sparse:
                        parameter.grad = parameter.grad.to_sparse()
        self.optimizer.step()
        # the weights as they move (domain tables: one per domain; cheap), logged every upper step
        domains = self.module.domain_weights()
        if domains:
            self.last_metrics.update({f"weight/{name}": value for name, value in domains.items()})
