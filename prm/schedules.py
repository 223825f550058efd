"""Learning-rate schedules, all built as ``fn(optimizer, total_steps, **options) -> LRScheduler``.

Configs (conf/schedule/*.yaml, ``reweight.upper.schedule``) name one of these with ``_partial_: true``;
the training recipe completes the call with the optimiser and the run's number of optimiser steps, so
every schedule is stepped once per optimiser step and warmup is given as a share of the run.
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, StepLR
from transformers import get_scheduler


def warmup_schedule(
    optimizer: Optimizer, total_steps: int, name: str = "cosine", warmup_ratio: float = 0.05
) -> LambdaLR:
    """transformers' ``name`` schedule (constant_with_warmup, linear, cosine, ...) with
    ``round(warmup_ratio * total_steps)`` linear warmup steps, over ``total_steps`` optimiser steps.

    Raises ValueError when ``warmup_ratio`` is outside [0, 1)."""
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
    return get_scheduler(
        name, optimizer, num_warmup_steps=round(warmup_ratio * total_steps), num_training_steps=total_steps
    )


def step_schedule(
    optimizer: Optimizer, total_steps: int, step_size: int = 100, gamma: float = 0.5
) -> LRScheduler:
    """torch's StepLR: the learning rate is multiplied by ``gamma`` every ``step_size`` optimiser steps
    (``total_steps`` is accepted for the common signature and not needed). Raises ValueError when
    ``step_size`` < 1."""
    if step_size < 1:
        raise ValueError(f"step_size must be >= 1, got {step_size}")
    return StepLR(optimizer, step_size=step_size, gamma=gamma)
