"""The lower problem: the PRM trained on (weighted) per-example losses, as a Betty ImplicitProblem.

Precision, the non-finite guard, the schedule and the metrics window are the shared base's
(prm/bilevel/problem.py). What is the lower problem's own:

- the reweighter: a callable given to the constructor, mapping (batch, scores, losses, has_label)
  to one weight per chain: the upper problem's module (a learned strategy), a baseline that learns
  nothing (reweight=small_loss, oracle), or None (every weight is 1);
- the loss: the weighted mean over chains that carry at least one step label; metrics of an
  optimiser step: loss, raw_loss and mean_weight are means over the micro-batches, tokens and chains
  sums, grad_norm that of the summed gradient;
- DARTS re-runs this training step twice at perturbed PRM parameters and differentiates it only with
  respect to the reweighter. The per-chain losses are constants there (the reweighter reads detached
  inputs), so those passes run the PRM without an autograd graph: prm/bilevel/hypergradient.py
  enters :meth:`PRMLower.graph_free` around them (a forward each, no activations kept, no backward
  through the PRM).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch

from prm.bilevel.probe import ProbeBatches
from prm.bilevel.problem import BilevelProblem
from prm.device import to_device

#: (batch, scores, losses [chains], has_label [chains]) -> weights [chains]
Weigh = Callable[..., torch.Tensor]


class PRMLower(BilevelProblem):
    """Lower level: ``module`` is a ProcessRewardModel; ``reweighter`` a :data:`Weigh` callable or
    None (every weight is 1). The other arguments are :class:`BilevelProblem`'s."""

    SUMMED = ("tokens", "chains")

    def __init__(
        self,
        name: str,
        config,
        module,
        optimizer,
        train_data_loader,
        precision: str = "fp32",
        schedule=None,
        reweighter: Weigh | None = None,
        max_nonfinite_steps: int = 10,
    ):
        super().__init__(
            name, config, module, optimizer, train_data_loader, precision, schedule, max_nonfinite_steps
        )
        self.reweighter = reweighter
        self._grad_norm: torch.Tensor | None = None  # of the current gradients, set by grad_callback
        self._graph_free = False

    @contextmanager
    def graph_free(self) -> Iterator[None]:
        """Inside: the PRM's forwards run without an autograd graph (DARTS' perturbed passes)."""
        previous, self._graph_free = self._graph_free, True
        try:
            yield
        finally:
            self._graph_free = previous

    @property
    def is_graph_free(self) -> bool:
        """Whether a :meth:`graph_free` block is open."""
        return self._graph_free

    def trainable_parameters(self):
        """The PRM's parameters that require gradients: what Betty differentiates, and what the
        hypergradient (DARTS) perturbs. With LoRA adapters the frozen backbone is left out."""
        return [p for p in self.module.parameters() if p.requires_grad]

    def score(self, batch):
        """The PRM's forward on a training batch (the DeepSpeed problem routes it through its engine)."""
        return self.module(batch)

    def weigh(self, batch, scores, losses, has_label) -> torch.Tensor:
        """One weight per chain, shape (chains,): the reweighter's, or ones."""
        if self.reweighter is None:
            return torch.ones_like(losses)
        return self.reweighter(batch, scores, losses, has_label)

    def training_step(self, batch):
        if isinstance(batch, ProbeBatches):  # DARTS' perturbed passes over probe chains
            return self.probe_loss(batch)
        batch = to_device(batch, self.device)
        with self.autocast(), torch.no_grad() if self._graph_free else nullcontext():
            scores = self.score(batch)
        losses, has_label = self.module.losses(scores, batch["step_labels"])
        weights = self.weigh(batch, scores, losses, has_label) * has_label
        denominator = has_label.sum().clamp(min=1)
        loss = (weights * losses).sum() / denominator
        raw = (losses * has_label).sum().detach() / denominator
        self.record(
            {
                "loss": float(loss.detach()),
                "raw_loss": float(raw),
                "mean_weight": float(weights.detach().sum() / denominator),
                "tokens": batch["num_tokens"]
                if "num_tokens" in batch
                else int(batch["inputs"]["attention_mask"].sum()),
                "chains": len(losses),
            }
        )
        return loss

    def probe_loss(self, batches: ProbeBatches) -> torch.Tensor:
        """The weighted training loss over every probe chain (prm/bilevel/probe.py): the PRM without an
        autograd graph (only inside DARTS' perturbed passes, :meth:`graph_free`), the weights with one.
        Raises RuntimeError outside them."""
        if not self._graph_free:
            raise RuntimeError("probe chains are only for DARTS' perturbed passes (graph_free)")
        total, count = 0.0, 0
        for batch in batches:
            batch = to_device(batch, self.device)
            with self.autocast(), torch.no_grad():
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

    def optimizer_step(self, *args, **kwargs):
        if self.nonfinite.close_step(self._count // self.gas):
            super().optimizer_step(*args, **kwargs)
        self.last_metrics["nonfinite_steps"] = self.nonfinite.skipped
