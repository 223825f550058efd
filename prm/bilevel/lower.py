"""The lower problem: the PRM trained on (weighted) per-example losses, as a Betty ImplicitProblem.

Betty owns the step: loss, backward, gradient accumulation (``Config.gradient_accumulation``),
clipping (``Config.gradient_clipping``) and the optimiser step. Two things are ours:

- precision: Betty's bf16 switch wraps the forward in CUDA-only autocast (a no-op on CPU), so the
  problem keeps Betty at fp32 and wraps its own forward in ``torch.autocast`` on the real device;
- the learning-rate schedule steps once per optimiser step (in ``param_callback``), not once per
  micro-batch as Betty's built-in scheduler hook would under gradient accumulation;
- the optimiser is kept as built: Betty's ``patch_optimizer`` rebuilds it as
  ``cls(params, **defaults)``, which torch 2.13's AdamW refuses (``decoupled_weight_decay``), and
  which would drop any loaded state. Only the default single-process strategy needs no patching.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from betty.problems import ImplicitProblem

from prm.device import autocast, to_device


class PRMLower(ImplicitProblem):
    """Lower level: ``module`` is a ProcessRewardModel; ``weigh`` maps (batch, scores, losses, has_label)
    to one weight per chain (the upper problem's reweighter).

    Without an upper level every weight is 1 and the loss is the plain mean over chains that carry
    at least one step label.
    """

    def __init__(
        self,
        name: str,
        config,
        module,
        optimizer,
        train_data_loader,
        precision: str = "fp32",
        lr_scheduler=None,
        weigh: Callable | None = None,
    ):
        super().__init__(
            name=name, config=config, module=module, optimizer=optimizer, train_data_loader=train_data_loader
        )
        self.precision_mode = precision
        self.lr_scheduler = lr_scheduler
        self.weigh = weigh
        self.last_metrics: dict[str, float] = {}

    def patch_optimizer(self):
        if self._strategy not in (None, "default"):
            raise NotImplementedError(f"Betty strategy {self._strategy!r}: use the distributed config group")

    def score(self, batch):
        """The PRM's forward on a training batch (the DeepSpeed problem routes it through its engine)."""
        return self.module(batch)

    def training_step(self, batch):
        batch = to_device(batch, self.device)
        with autocast(self.device, self.precision_mode):
            scores = self.score(batch)
        losses, has_label = self.module.losses(scores, batch["step_labels"])
        if self.weigh is not None:
            weights = self.weigh(batch, scores, losses, has_label)
        else:
            weights = torch.ones_like(losses)
        weights = weights * has_label
        denominator = has_label.sum().clamp(min=1)
        loss = (weights * losses).sum() / denominator
        raw = (losses * has_label).sum().detach() / denominator
        self._pending_metrics = {
            "loss": float(loss.detach()),
            "raw_loss": float(raw),
            "mean_weight": float(weights.detach().sum() / denominator),
            "tokens": int(batch["inputs"]["attention_mask"].sum()),
            "chains": len(losses),
        }
        return loss

    def grad_callback(self):
        """Gradient norm of the PRM before clipping (Betty calls this after every backward)."""
        norms = [p.grad.detach().float().norm() for p in self.module.parameters() if p.grad is not None]
        if norms:
            self._pending_metrics["grad_norm"] = float(torch.stack(norms).norm())

    def get_loss(self, batch):
        # Only the training step's own forward is logged, not the hypergradient's perturbed re-runs of it.
        result = super().get_loss(batch)
        self.last_metrics = self._pending_metrics  # the same dict: grad_callback adds to it afterwards
        return result

    def param_callback(self):
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
