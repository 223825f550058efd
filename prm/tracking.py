"""Experiment tracking: metrics to a JSONL file in the run directory and, optionally, to wandb.

The JSONL file is always complete on its own, so nothing depends on wandb being installed or
reachable. wandb runs offline by default (``logger.wandb.mode``); one ``wandb.init`` per run with
the resolved config as a plain dict, and ``finish()`` at the end so sequential multirun jobs never
merge. (wandb 0.31 always runs its core service and no longer has a ``start_method`` setting.)
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class Tracker:
    """Logs metric dictionaries by step to the configured sinks."""

    def __init__(self, jsonl: bool = True, wandb: dict | None = None):
        self.jsonl = jsonl
        self.wandb_settings = dict(wandb) if wandb else None
        self._file = None
        self._wandb_run = None

    def start(self, run_dir: str | Path, config: dict[str, Any], name: str | None = None) -> None:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if self.jsonl:
            self._file = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")
        if self.wandb_settings is not None:
            import wandb

            settings = dict(self.wandb_settings)
            self._wandb_run = wandb.init(
                dir=str(run_dir), config=config, name=name, reinit="finish_previous", **settings,
            )

    def log(self, metrics: dict[str, float], step: int) -> None:
        clean = {key: (float(value) if isinstance(value, (int, float)) else value) for key, value in metrics.items()}
        if self._file is not None:
            row = {"step": step, "time": time.time(),
                   **{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in clean.items()}}
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
        if self._wandb_run is not None:
            self._wandb_run.log(clean, step=step)

    def finish(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None
