"""The lower problem inside a DeepSpeed engine (``distributed=zero1|zero2|zero3``).

The PRM's own training step goes through the engine: forward via ``engine(batch)``, backward via
``engine.backward`` (DeepSpeed's gradient partitioning, averaging over ranks, accumulation and
clipping) and ``engine.step`` (optimiser and schedule). Everything Betty runs for the hypergradient
(the meta loss, the finite-difference perturbations) uses ``engine.module``, so DeepSpeed's gradient
hooks never see those passes. The reweighter's parameters pick up gradients from ``engine.backward``
(the weights are in the loss); they are dropped, since the upper problem gets its gradient from the
hypergradient alone. Betty's own clipping, accumulation and precision stay off for this problem:
the DeepSpeed config holds them. DeepSpeed steps inside ``engine.backward``/``engine.step`` on its own
accumulation boundaries, so a non-finite step cannot be skipped here: a non-finite loss stops the run.
"""

from __future__ import annotations

import math

from prm.bilevel.lower import PRMLower
from prm.bilevel.nonfinite import NonFiniteError


class DeepSpeedLower(PRMLower):
    def __init__(
        self, name: str, config, engine, train_data_loader, precision: str = "fp32", reweighter=None
    ):
        super().__init__(
            name=name,
            config=config,
            module=engine.module,
            optimizer=engine.optimizer,
            train_data_loader=train_data_loader,
            precision=precision,
            reweighter=reweighter,
        )
        self.engine = engine
        self._own_step = False

    def get_loss(self, batch):
        self._own_step = True
        try:
            return super().get_loss(batch)
        finally:
            self._own_step = False

    def score(self, batch):
        return self.engine(batch) if self._own_step else self.engine.module(batch)

    def backward(self, loss, params, paths, create_graph=False, retain_graph=True, allow_unused=True):
        self.engine.backward(loss)
        for parent in self._parents:
            for parameter in parent.trainable_parameters():
                parameter.grad = None

    def grad_callback(self):
        # Gradients are partitioned: the engine reports the global norm after its step.
        loss = self.last_metrics.get("loss", 0.0)
        if not math.isfinite(loss):
            raise NonFiniteError(
                f"{self.name}: non-finite loss {loss} at micro-batch {self._count} under DeepSpeed"
            )

    def optimizer_step(self, *args, **kwargs):
        self.engine.step()
        self.last_metrics["nonfinite_steps"] = 0
        norm = self.engine.get_global_grad_norm()
        if norm is not None:
            self.last_metrics["grad_norm"] = float(norm)

    def zero_grad(self):
        pass  # engine.step clears the gradients at each accumulation boundary

    def param_callback(self):
        pass  # the engine steps the schedule
