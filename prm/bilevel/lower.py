"""The lower problem: the PRM trained on (weighted) per-example losses, as a Betty ImplicitProblem.

Betty owns the step: loss, backward, gradient accumulation (``Config.gradient_accumulation``),
clipping (``Config.gradient_clipping``) and the optimiser step. What is ours:

- the reweighter: with an upper level, Betty sets the upper problem as an attribute of this one under
  its name (``Engine.set_problem_attr``), and the loss weighs every chain by ``<reweighter>.module``;
- precision: Betty's bf16 switch wraps the forward in CUDA-only autocast (a no-op on CPU), so the
  problem keeps Betty at fp32 and wraps its own forward in ``torch.autocast`` on the real device;
- the learning-rate schedule is built with the problem and steps once per optimiser step (in
  ``param_callback``). It is not handed to Betty's ``scheduler=``: Betty steps that one after every
  micro-batch (``Problem.step_normal``), i.e. ``gradient_accumulation`` times per optimiser step;
- the optimiser is kept as built: Betty's ``patch_optimizer`` rebuilds it as
  ``cls(params, **defaults)``, which torch 2.13's AdamW refuses (``decoupled_weight_decay``), and
  which would drop any loaded state. Only the default single-process strategy needs no patching;
- a step whose loss or gradient is not finite is skipped and counted (``prm/nonfinite_steps``), and
  ``max_nonfinite_steps`` of them in a row stop the run (prm/bilevel/nonfinite.py);
- metrics of an optimiser step cover its whole accumulation window: loss, raw_loss and mean_weight
  are means over the micro-batches, tokens and chains sums, grad_norm that of the summed gradient;
- DARTS re-runs this training step twice at perturbed PRM parameters and differentiates it only with
  respect to the reweighter. The per-chain losses are constants there (the reweighter reads detached
  inputs), so those passes run the PRM without an autograd graph (``graph_free``, set by
  prm/bilevel/hypergradient.py): a forward each, no activations kept, no backward through the PRM.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from betty.problems import ImplicitProblem

from prm.bilevel.nonfinite import NonFiniteGuard
from prm.bilevel.probe import ProbeBatches
from prm.device import autocast, to_device

SUMMED = ("tokens", "chains")


class PRMLower(ImplicitProblem):
    """Lower level: ``module`` is a ProcessRewardModel; ``reweighter`` names the upper problem whose
    module maps (batch, scores, losses, has_label) to one weight per chain, or is such a module itself
    (a baseline that learns nothing: reweight=small_loss, oracle), or None (every weight is 1).

    The loss is the weighted mean over chains that carry at least one step label.
    """

    def __init__(
        self,
        name: str,
        config,
        module,
        optimizer,
        train_data_loader,
        precision: str = "fp32",
        schedule=None,
        reweighter=None,
        max_nonfinite_steps: int = 10,
    ):
        super().__init__(
            name=name, config=config, module=module, optimizer=optimizer, train_data_loader=train_data_loader
        )
        self.precision_mode = precision
        self.lr_scheduler = schedule
        self.reweighter = reweighter
        self.nonfinite = NonFiniteGuard(name, max_nonfinite_steps)
        self.last_metrics: dict[str, float] = {}
        self._window: list[dict] = []
        self._grad_norm: torch.Tensor | None = None  # of the current gradients, set by grad_callback
        self.graph_free = False  # True inside DARTS' perturbed passes: the PRM forward needs no graph

    def patch_optimizer(self):
        if self._strategy not in (None, "default"):
            raise NotImplementedError(f"Betty strategy {self._strategy!r}: use the distributed config group")

    def trainable_parameters(self):
        """The PRM's parameters that require gradients: what Betty differentiates, and what the
        hypergradient (DARTS) perturbs. With LoRA adapters the frozen backbone is left out."""
        return [p for p in self.module.parameters() if p.requires_grad]

    def score(self, batch):
        """The PRM's forward on a training batch (the DeepSpeed problem routes it through its engine)."""
        return self.module(batch)

    def weigh(self, batch, scores, losses, has_label) -> torch.Tensor:
        """One weight per chain, shape (chains,): the upper problem's reweighter, or ones."""
        if self.reweighter is None:
            return torch.ones_like(losses)
        if isinstance(self.reweighter, str):
            return getattr(self, self.reweighter).module(batch, scores, losses, has_label)
        return self.reweighter(batch, scores, losses, has_label)

    def training_step(self, batch):
        if isinstance(batch, ProbeBatches):  # DARTS' perturbed passes over probe chains
            return self.probe_loss(batch)
        batch = to_device(batch, self.device)
        with (
            autocast(self.device, self.precision_mode),
            torch.no_grad() if self.graph_free else nullcontext(),
        ):
            scores = self.score(batch)
        losses, has_label = self.module.losses(scores, batch["step_labels"])
        weights = self.weigh(batch, scores, losses, has_label) * has_label
        denominator = has_label.sum().clamp(min=1)
        loss = (weights * losses).sum() / denominator
        raw = (losses * has_label).sum().detach() / denominator
        self._pending_metrics = {
            "loss": float(loss.detach()),
            "raw_loss": float(raw),
            "mean_weight": float(weights.detach().sum() / denominator),
            "tokens": batch["num_tokens"]
            if "num_tokens" in batch
            else int(batch["inputs"]["attention_mask"].sum()),
            "chains": len(losses),
        }
        return loss

    def probe_loss(self, batches: ProbeBatches) -> torch.Tensor:
        """The weighted training loss over every probe chain (prm/bilevel/probe.py): the PRM without an
        autograd graph (only inside DARTS' perturbed passes, ``graph_free``), the weights with one."""
        if not self.graph_free:
            raise RuntimeError("probe chains are only for DARTS' perturbed passes (graph_free)")
        total, count = 0.0, 0
        for batch in batches:
            batch = to_device(batch, self.device)
            with autocast(self.device, self.precision_mode), torch.no_grad():
                scores = self.score(batch)
            losses, has_label = self.module.losses(scores, batch["step_labels"])
            weights = self.weigh(batch, scores, losses, has_label) * has_label
            total = total + (weights * losses).sum()
            count += int(has_label.sum())
        return total / max(count, 1)

    def grad_callback(self):
        """Gradient norm of the PRM before clipping (Betty calls this after every backward): one
        fused pass over the gradients (``torch.nn.utils.get_total_norm``) gives the logged
        ``grad_norm``, the non-finite check (a NaN or infinite entry makes the norm non-finite; the
        optimiser step is then skipped) and the norm that :meth:`clip_grad` clips with."""
        grads = [p.grad.detach() for p in self.module.parameters() if p.grad is not None]
        self._grad_norm = torch.nn.utils.get_total_norm(grads) if grads else None
        norm = None if self._grad_norm is None else float(self._grad_norm)
        self.nonfinite.observe(self.last_metrics.get("loss"), grad_norm=norm)
        if norm is not None:
            self.last_metrics["grad_norm"] = norm

    def clip_grad(self):
        """Betty's gradient clipping (``Config.gradient_clipping``) with the norm :meth:`grad_callback`
        measured on the same (accumulated) gradients, instead of a second pass over them."""
        if self._grad_norm is not None:  # None: no parameter has a gradient, nothing to clip
            torch.nn.utils.clip_grads_with_norm_(
                self.trainable_parameters(), self.gradient_clipping, self._grad_norm
            )

    def get_loss(self, batch):
        # Only the training step's own forward is logged, not the hypergradient's perturbed re-runs of it.
        result = super().get_loss(batch)
        if (self._count - 1) % self.gas == 0:  # the first micro-batch of an optimiser step
            self._window = []
        self._window.append(self._pending_metrics)
        total = {key: sum(m[key] for m in self._window) for key in self._pending_metrics}
        self.last_metrics = {k: v if k in SUMMED else v / len(self._window) for k, v in total.items()}
        self.last_metrics["nonfinite_steps"] = self.nonfinite.skipped
        return result

    def optimizer_step(self, *args, **kwargs):
        if self.nonfinite.close_step(self._count // self.gas):
            super().optimizer_step(*args, **kwargs)
        self.last_metrics["nonfinite_steps"] = self.nonfinite.skipped

    def param_callback(self):
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
