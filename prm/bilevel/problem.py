"""What the two Betty problems of a run share: precision, the non-finite guard, the schedule, metrics.

Betty owns each problem's step (loss, backward, accumulation, clipping, optimiser step). This base adds:

- precision: Betty's bf16 switch wraps the forward in CUDA-only autocast (a no-op on CPU), so the
  problems keep Betty at fp32 and wrap their own forwards in ``torch.autocast`` on the real device
  (:meth:`BilevelProblem.autocast`);
- the optimiser is kept as built: Betty's ``patch_optimizer`` rebuilds it as ``cls(params,
  **defaults)``, which torch 2.13's AdamW refuses (``decoupled_weight_decay``), and which would drop
  any loaded state. Only the default single-process strategy needs no patching;
- the learning-rate schedule is built with the problem and steps once per optimiser step (in
  ``param_callback``). It is not handed to Betty's ``scheduler=``: Betty steps that one after every
  micro-batch (``Problem.step_normal``), i.e. ``gradient_accumulation`` times per optimiser step;
- a step whose loss or gradient is not finite is skipped and counted (``<name>/nonfinite_steps``),
  and ``max_nonfinite_steps`` of them in a row stop the run (prm/bilevel/nonfinite.py);
- the metrics of an optimiser step cover its whole accumulation window: ``training_step`` hands each
  micro-batch's metrics to :meth:`BilevelProblem.record`; ``last_metrics`` holds their means over the
  window (sums for the keys in ``SUMMED``), plus ``nonfinite_steps``.
"""

from __future__ import annotations

from betty.problems import ImplicitProblem

from prm.bilevel.nonfinite import NonFiniteGuard
from prm.device import autocast


class BilevelProblem(ImplicitProblem):
    """A Betty ImplicitProblem with the shared mechanics above. ``precision``: fp32 or bf16 (of the
    problem's own forwards); ``schedule``: an LR scheduler over ``optimizer`` stepped once per
    optimiser step, or None; ``max_nonfinite_steps``: see :class:`NonFiniteGuard`."""

    #: metrics summed over an accumulation window (the others are averaged)
    SUMMED: tuple[str, ...] = ()

    def __init__(
        self,
        name: str,
        config,
        module,
        optimizer,
        train_data_loader,
        precision: str = "fp32",
        schedule=None,
        max_nonfinite_steps: int = 10,
    ):
        super().__init__(
            name=name, config=config, module=module, optimizer=optimizer, train_data_loader=train_data_loader
        )
        self.precision_mode = precision
        self.lr_scheduler = schedule
        self.nonfinite = NonFiniteGuard(name, max_nonfinite_steps)
        self.last_metrics: dict[str, float] = {}
        self._pending_metrics: dict[str, float] = {}
        self._window: list[dict] = []

    def patch_optimizer(self):
        if self._strategy not in (None, "default"):
            raise NotImplementedError(f"Betty strategy {self._strategy!r}: use the distributed config group")

    def autocast(self):
        """The problem's precision around a forward (bf16 autocast on its device, or nothing in fp32)."""
        return autocast(self.device, self.precision_mode)

    def record(self, metrics: dict[str, float]) -> None:
        """This micro-batch's metrics; they join the window when Betty's ``get_loss`` ran the step (a
        training step run again by the hypergradient, e.g. DARTS' perturbed passes, is not logged)."""
        self._pending_metrics = metrics

    def get_loss(self, batch):
        result = super().get_loss(batch)
        if (self._count - 1) % self.gas == 0:  # the first micro-batch of an optimiser step
            self._window = []
        self._window.append(self._pending_metrics)
        total = {key: sum(m[key] for m in self._window) for key in self._pending_metrics}
        self.last_metrics = {k: v if k in self.SUMMED else v / len(self._window) for k, v in total.items()}
        self.last_metrics["nonfinite_steps"] = self.nonfinite.skipped
        return result

    def param_callback(self):
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
