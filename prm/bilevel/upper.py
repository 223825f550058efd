"""The upper problem: the reweighter, tuned so the PRM does well on the meta set (a Betty ImplicitProblem).

Its loss is the meta loss of the *lower* problem's PRM on a meta batch; the reweighter's parameters
get their gradient through Betty's hypergradient (``Config.type`` of the lower problem: darts,
neumann, cg or sama), never directly. Two things are ours:

- ``grad_scale="rms"`` (``reweight.upper.grad_scale``) divides the hypergradient by the RMS of its
  non-zero entries before the step (:func:`rms_scale`), for SGD on tables;
- tables with ``sparse_rows`` step with torch's ``SparseAdam`` on the rows that have a gradient
  (only instances of the batch the hypergradient used), so unsampled weights stay where they are;
- the schedule is built with the problem and steps once per upper step (``param_callback``), as in
  the lower problem;
- a hypergradient that is not finite (e.g. after a non-finite lower step) is not applied: the step is
  skipped and counted (``reweight/nonfinite_steps``), and too many in a row stop the run;
- with several ranks the gradient is averaged over them before the step, so the replicated
  reweighter stays identical on every rank;
- a reweighter that weighs domains logs each domain's weight after every upper step
  (``reweight/weight/<domain>``), so the weights' path, not only their end, is in the metrics.
"""

from __future__ import annotations

import torch
from betty.problems import ImplicitProblem

from prm.bilevel.meta_loss import meta_losses, step_meta_losses
from prm.bilevel.nonfinite import NonFiniteGuard
from prm.device import autocast, to_device
from prm.distributed import average

GRAD_SCALES = ("none", "rms")


def rms_scale(grad: torch.Tensor) -> None:
    """Divide ``grad`` in place by the root mean square of its non-zero entries (a table: the rows
    this step touched), so that plain SGD moves them by ``lr`` on average while keeping their
    relative sizes: unlike per-row Adam, a chain with a strong signal moves further than one with a
    weak one. A gradient of zeros is left as it is."""
    with torch.no_grad():
        touched = grad != 0
        if bool(touched.any()):
            grad.div_(grad[touched].float().pow(2).mean().sqrt().to(grad.dtype))


class ReweightUpper(ImplicitProblem):
    def __init__(
        self,
        name: str,
        config,
        module,
        optimizer,
        train_data_loader,
        lower_name: str,
        aggregation,
        loss_target: str = "+",
        precision: str = "fp32",
        schedule=None,
        max_nonfinite_steps: int = 10,
        grad_scale: str = "none",
    ):
        super().__init__(
            name=name, config=config, module=module, optimizer=optimizer, train_data_loader=train_data_loader
        )
        self.lower_name = lower_name
        self.aggregation = aggregation
        self.loss_target = loss_target
        self.precision_mode = precision
        self.lr_scheduler = schedule
        if grad_scale not in GRAD_SCALES:
            raise ValueError(f"reweight.upper.grad_scale must be one of {GRAD_SCALES}, got {grad_scale!r}")
        self.grad_scale = grad_scale
        self.nonfinite = NonFiniteGuard(name, max_nonfinite_steps)
        self.last_metrics: dict[str, float] = {}
        self.steps_taken = 0

    def patch_optimizer(self):
        if self._strategy not in (None, "default"):
            raise NotImplementedError(f"Betty strategy {self._strategy!r}: use the distributed config group")

    def training_step(self, batch):
        prm = getattr(self, self.lower_name).module
        batch = to_device(batch, self.device)
        with autocast(self.device, self.precision_mode):
            scores = prm(batch)
        if self.loss_target == "steps":
            losses = step_meta_losses(prm, scores, batch)
        else:
            losses = meta_losses(
                scores.probs.float(), scores.mask, batch["chain_label"], self.aggregation, self.loss_target
            )
        loss = losses.mean()
        self.last_metrics = {"loss": float(loss.detach())}
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
        if self.module.sparse_rows:
            for parameter in self.trainable_parameters():
                if parameter.grad is not None and not parameter.grad.is_sparse:
                    parameter.grad = parameter.grad.to_sparse()
        self.optimizer.step()
        # the weights as they move (domain tables: one per domain; cheap), logged every upper step
        domains = self.module.domain_weights()
        if domains:
            self.last_metrics.update({f"weight/{name}": value for name, value in domains.items()})

    def param_callback(self):
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
