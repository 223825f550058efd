"""Learning-rate schedules with warmup given as a share of the run (configs hold ratios, not steps)."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_scheduler


def warmup_schedule(
    optimizer: Optimizer, total_steps: int, name: str = "cosine", warmup_ratio: float = 0.05
) -> LambdaLR:
    """transformers' ``name`` schedule with ``round(warmup_ratio * total_steps)`` warmup steps."""
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
    return get_scheduler(
        name, optimizer, num_warmup_steps=round(warmup_ratio * total_steps), num_training_steps=total_steps
    )
