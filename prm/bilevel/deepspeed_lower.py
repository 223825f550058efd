"""The lower problem inside a DeepSpeed engine (``distributed=zero1|zero2|zero3``).

The PRM's own training step goes through the engine: forward via ``engine(batch)``, backward via
``engine.backward`` (DeepSpeed's gradient partitioning, averaging over ranks, accumulation and
clipping) and ``engine.step`` (optimiser and schedule). Everything Betty runs for the hypergradient
(the meta loss, the finite-difference perturbations) uses ``engine.module``, so DeepSpeed's gradient
hooks never see those passes. The reweighter's parameters pick up gradients from ``engine.backward``
(the weights are in the loss); they are dropped, since the upper problem gets its gradient from the
hypergradient alone. Betty's own clipping, accumulation and precision stay off for this problem:
the DeepSpeed config holds them.
"""

from __future__ import annotations

from prm.bilevel.lower import PRMLower


class DeepSpeedLower(PRMLower):
    def __init__(self, name: str, config, engine, train_data_loader, precision: str = "fp32", weigh=None):
        super().__init__(
            name=name,
            config=config,
            module=engine.module,
            optimizer=engine.optimizer,
            train_data_loader=train_data_loader,
            precision=precision,
            weigh=weigh,
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
        pass  # gradients are partitioned: the engine reports the global norm after its step

    def optimizer_step(self, *args, **kwargs):
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        if norm is not None:
            self.last_metrics["grad_norm"] = float(norm)

    def zero_grad(self):
        pass  # engine.step clears the gradients at each accumulation boundary

    def param_callback(self):
        pass  # the engine steps the schedule
