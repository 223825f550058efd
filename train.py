"""Train a process reward model: python train.py [group=option ...] [key=value ...]

Composes conf/config.yaml and runs the training recipe (prm/training/recipe.py): data, backbone and
PRM, the Betty problems (the PRM, and with reweight != none the reweighter over the meta set), each
with its optimiser and schedule from the config, then Betty's engine with validation and checkpoints.
Steps count optimiser steps. Examples:
    python train.py                                  # tiny Qwen2-VL PRM on the demo benchmark
    python train.py backbone=tiny_internvl experiment=smoke
    python train.py train.optimizer.lr=3e-4 schedule=linear
    python train.py resume=true hydra.run.dir=<interrupted run dir>   # continue a run
    python train.py -m aggregation=mean,min,max      # a Hydra multirun sweep under multirun/
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from prm.config import TrainRunSchema, entry_overrides, user_error_exit
from prm.training import train


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
@user_error_exit
def main(cfg: DictConfig) -> float:
    """Train; return the final validation's ``optimized_metric`` (for sweepers; NaN if absent)."""
    return train(cfg).get(cfg.optimized_metric, float("nan"))


if __name__ == "__main__":
    sys.argv[1:] = entry_overrides(sys.argv[1:], TrainRunSchema)  # one-line choice errors; data.limit.test=N
    main()
