"""Experiment tracking: metrics to a JSONL file in the run directory and, optionally, to wandb.

The JSONL file is always complete on its own, so nothing depends on wandb being installed or
reachable. wandb runs offline by default (``logger.wandb.mode``): one ``wandb.init`` per Hydra job
with the resolved config as a plain dict, ``finish()`` at the end so sequential multirun jobs never
merge. Runs of one multirun share a group named after the sweep, and a run is named after its
job's overrides without the seed, so a sweep's seeds sit side by side. (wandb 0.31 always runs its
own core service: there is no ``start_method`` to set, and nothing hangs under Hydra.)
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

UNNAMED_OVERRIDES = ("seed=", "hydra.", "hydra/", "logger=", "logger.", "+logger.")


def job_identity(run_dir: str | Path) -> dict[str, str | None]:
    """``name`` and ``group`` for this Hydra job: overrides (seed excluded) and the sweep's folder."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra = HydraConfig.get()
    except (ImportError, ValueError):
        return {"name": Path(run_dir).name, "group": None}
    overrides = [o for o in hydra.overrides.task if not o.startswith(UNNAMED_OVERRIDES)]
    name = ",".join(overrides) or "defaults"
    group = None
    if hydra.mode == RunMode.MULTIRUN:
        group = "sweep-" + "_".join(Path(hydra.sweep.dir).parts[-2:])
    return {"name": name, "group": group}


def read_metrics(path: str | Path) -> list[dict]:
    """The rows a Tracker wrote to ``metrics.jsonl`` ([] when there is no such file)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def truncate_metrics(path: str | Path, step: int) -> int:
    """Drop the rows of ``metrics.jsonl`` logged past ``step`` (a resumed run logs them again).

    Rows are kept up to the first row whose ``"step"`` exceeds ``step``; that row and every row after
    it go, as does an unparsable line (a row cut short when the process was killed). The file is
    rewritten atomically. Returns the number of lines dropped (logged when nonzero). A missing file
    is left missing (0).
    """
    from prm.data.native import atomic_write_text

    path = Path(path)
    if not path.exists():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines()
    kept, broken = [], 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            broken += 1
            log.warning("%s line %d: not a JSON row (cut short by a kill?): dropped", path, number)
            continue
        if isinstance(row.get("step"), int) and row["step"] > step:
            break
        kept.append(line)
    dropped = len([line for line in lines if line.strip()]) - len(kept)
    if dropped:
        atomic_write_text(path, "".join(line + "\n" for line in kept))
        log.info(
            "%s: dropped %d row(s) past step %d (%d unparsable) before resuming",
            path,
            dropped,
            step,
            broken,
        )
    return dropped


class Tracker:
    """Logs metric dictionaries by step to the configured sinks."""

    def __init__(self, jsonl: bool = True, wandb: dict | None = None):
        self.jsonl = jsonl
        self.wandb_settings = dict(wandb) if wandb else None
        self._file = None
        self._wandb_run = None

    def start(
        self,
        run_dir: str | Path,
        config: dict[str, Any],
        name: str | None = None,
        group: str | None = None,
        job_type: str | None = None,
        resume_step: int | None = None,
    ) -> None:
        """Open the sinks. ``resume_step``: a resumed run's starting step; rows of ``metrics.jsonl``
        past it are dropped first (:func:`truncate_metrics`), so no step is logged twice."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if self.jsonl and resume_step is not None:
            truncate_metrics(run_dir / "metrics.jsonl", resume_step)
        if self.jsonl:
            self._file = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")
        if self.wandb_settings is not None:
            import wandb

            settings = {k: v for k, v in self.wandb_settings.items() if v is not None}
            settings.setdefault("group", group)
            if job_type is not None:
                settings["job_type"] = job_type
            self._wandb_run = wandb.init(
                dir=str(run_dir),
                config=config,
                name=name,
                reinit="finish_previous",
                **settings,
            )

    def _write(self, row: dict) -> None:
        if self._file is not None:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()

    def log(self, metrics: dict[str, float], step: int) -> None:
        clean = {
            key: (float(value) if isinstance(value, (int, float)) else value)
            for key, value in metrics.items()
        }
        self._write(
            {
                "step": step,
                "time": time.time(),
                **{
                    k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                    for k, v in clean.items()
                },
            }
        )
        if self._wandb_run is not None:
            self._wandb_run.log(clean, step=step)

    def log_histogram(self, name: str, values: Sequence[float], step: int) -> None:
        """A distribution: a wandb histogram; in the JSONL, its quantiles."""
        values = sorted(float(v) for v in values)
        if not values:
            return
        quantiles = {
            f"{name}/q{int(q * 100):02d}": values[min(len(values) - 1, int(q * len(values)))]
            for q in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9)
        }
        quantiles[f"{name}/q100"] = values[-1]
        self._write({"step": step, "time": time.time(), **quantiles})
        if self._wandb_run is not None:
            import wandb

            self._wandb_run.log({name: wandb.Histogram(values)}, step=step)

    def log_table(self, name: str, columns: list[str], rows: list[list]) -> None:
        """A table (e.g. best-of-N accuracy per method): a wandb Table; in the JSONL, one row."""
        self._write({"table": name, "columns": columns, "rows": rows, "time": time.time()})
        if self._wandb_run is not None:
            import wandb

            self._wandb_run.log({name: wandb.Table(columns=columns, data=rows)})

    def finish(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None
