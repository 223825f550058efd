"""The Engine: Betty's loop plus progress, validation on the meta set, metrics and checkpoints.

Betty counts micro-batches (``Engine.global_step``); everything this engine shows counts optimiser
steps (micro-batches / ``accumulation``): progress, logged steps, validation and checkpoint cadence, the
step handed to ``save``. This is the one place where the two are converted. Validation and checkpoints
are keyed on the global step (not on Betty's ``valid_step`` counter of the current ``run``), so a
resumed run validates and saves at the same steps as an uninterrupted one.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
from betty.engine import Engine
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


def peak_memory_gb() -> float:
    """Peak GPU memory allocated (CUDA) or the process's peak resident memory (CPU), in GB."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kilobytes on Linux


class PRMEngine(Engine):
    """``start_step``, ``total_steps``, ``validate_every``, ``save_every``: optimiser steps;
    ``accumulation``: micro-batches per optimiser step. ``validate(step)`` returns metrics,
    ``save(step)`` writes a checkpoint, ``log_metrics(metrics, step)`` logs (steps: optimiser steps).
    ``device``: where the problems live (Betty's own choice is CUDA whenever it exists). Rank and
    world size come from an existing process group (DeepSpeed's), with Betty's strategy left at
    ``default`` so it wraps nothing itself; every rank validates (collectives inside a ZeRO-3
    forward would deadlock if only rank 0 did), only rank 0 shows progress and logs."""

    def __init__(
        self,
        problems,
        config,
        dependencies=None,
        *,
        start_step: int = 0,
        total_steps: int,
        accumulation: int = 1,
        validate_every: int = 0,
        save_every: int = 0,
        validate: Callable[[], dict] | None = None,
        save: Callable[[int], None] | None = None,
        log_metrics: Callable[[dict, int], None] | None = None,
        progress: bool = True,
        device: str | None = None,
    ):
        self._device_choice = device
        super().__init__(
            problems=problems, config=config, dependencies=dependencies or {"u2l": {}, "l2u": {}}
        )
        self.accumulation = accumulation
        self.global_step = start_step * accumulation  # Betty's counter: micro-batches
        self.total_steps = total_steps
        self.validate_every, self.save_every = validate_every, save_every
        self.validate_fn, self.save_fn, self.log_fn = validate, save, log_metrics
        self.last_validation: dict = {}
        self.progress = tqdm(
            total=total_steps,
            initial=start_step,
            desc="train",
            disable=not progress or self._rank != 0,
            dynamic_ncols=True,
        )
        self._tick = time.perf_counter()

    def configure_systems(self):
        info = super().configure_systems()
        if dist.is_initialized():
            self._world_size, self._rank = dist.get_world_size(), dist.get_rank()
            info.update(world_size=self._world_size, rank=self._rank)
        if self._device_choice is not None:
            self.device = self._device_choice
        return info

    def train_step(self):
        super().train_step()
        if self.global_step % self.accumulation:
            return  # inside an accumulation window: no optimiser step yet
        step = self.optimizer_step
        metrics = {}
        for problem in self.problems:
            metrics.update(
                {f"{problem.name}/{k}": v for k, v in getattr(problem, "last_metrics", {}).items()}
            )
            metrics[f"{problem.name}/lr"] = problem.optimizer.param_groups[0]["lr"]
        elapsed = time.perf_counter() - self._tick
        self._tick = time.perf_counter()
        lower = self.problems[0].last_metrics
        metrics["throughput/chains_per_s"] = lower.get("chains", 0) / max(elapsed, 1e-9)
        metrics["throughput/tokens_per_s"] = lower.get("tokens", 0) / max(elapsed, 1e-9)
        metrics["memory/peak_gb"] = peak_memory_gb()
        self.progress.update(1)
        self.progress.set_postfix(loss=f"{lower.get('loss', float('nan')):.4f}")
        last = step == self.total_steps
        if self.validate_fn is not None and (
            last or (self.validate_every and step % self.validate_every == 0)
        ):
            self.eval()
            self.last_validation = self.validate_fn(step)
            self.train()
            metrics.update({f"val/{k}": v for k, v in self.last_validation.items()})
            log.info(
                "step %d validation: %s", step, {k: round(v, 4) for k, v in self.last_validation.items()}
            )
        if self.log_fn is not None and self._rank == 0:
            self.log_fn(metrics, step)
        if self.save_fn is not None and (last or (self.save_every and step % self.save_every == 0)):
            self.save_fn(step)

    @property
    def optimizer_step(self) -> int:
        """Optimiser steps taken so far (Betty's micro-batch counter / accumulation)."""
        return self.global_step // self.accumulation

    def cleanup(self):
        self.progress.close()
        super().cleanup()
