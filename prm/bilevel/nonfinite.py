"""Skipping optimiser steps whose loss or gradient is not finite, and stopping a run that keeps failing.

A step whose loss or gradient holds NaN or infinity would write NaN into the parameters (and, through
Adam's moments, into every later step). The problem skips such a step instead (no optimiser step, the
gradients are cleared as after any step) and counts it; ``limit`` skipped steps in a row mean the run
cannot recover (a diverged model, a broken batch stream) and stop it with :class:`NonFiniteError`.
"""

from __future__ import annotations

import math

import torch


class NonFiniteError(RuntimeError):
    """Raised after ``limit`` optimiser steps in a row had a non-finite loss or gradient."""


def all_finite(tensors) -> bool:
    """True when every tensor of ``tensors`` (None entries ignored) holds only finite values."""
    return all(bool(torch.isfinite(t).all()) for t in tensors if t is not None)


class NonFiniteGuard:
    """Counts non-finite optimiser steps of one problem.

    ``limit``: skipped steps in a row that stop the run (``train.max_nonfinite_steps``; 0 or less: never).
    ``skipped``: total skipped steps (logged as ``<problem>/nonfinite_steps``); ``in_a_row``: current streak.
    """

    def __init__(self, name: str, limit: int):
        self.name, self.limit = name, limit
        self.skipped = self.in_a_row = 0
        self.window_finite = True

    def observe(self, loss: float | None = None, grads=(), grad_norm: float | None = None) -> None:
        """Record one micro-batch's loss (a float) and its gradients, or the total norm of those
        gradients (``grad_norm``: NaN or infinity propagate into it, so a non-finite norm means a
        non-finite gradient, and one norm replaces a check of every tensor); any non-finite value
        spoils the current optimiser step (the accumulation window)."""
        if loss is not None and not math.isfinite(loss):
            self.window_finite = False
        elif grad_norm is not None and not math.isfinite(grad_norm):
            self.window_finite = False
        elif grad_norm is None and not all_finite(grads):
            self.window_finite = False

    def close_step(self, step: int) -> bool:
        """End of an optimiser step: True when it may be taken. Raises NonFiniteError after ``limit``
        non-finite steps in a row; ``step`` (1-based optimiser step) only names it in the error."""
        finite, self.window_finite = self.window_finite, True
        if finite:
            self.in_a_row = 0
            return True
        self.skipped += 1
        self.in_a_row += 1
        if 0 < self.limit <= self.in_a_row:
            raise NonFiniteError(
                f"{self.name}: {self.in_a_row} optimiser steps in a row (the last: step {step}) had a "
                f"non-finite loss or gradient; stopping (train.max_nonfinite_steps={self.limit}). Lower "
                "the learning rate, check the data, or train in fp32."
            )
        return False
