"""Evaluate a PRM checkpoint: python evaluate.py checkpoint=<run dir or checkpoint> [data=<test set>]

Runs prm/evaluation/run.py's ``evaluate``: every candidate is scored once, best-of-N accuracy is
computed for every aggregation beside the baselines (random expectation, first candidate, majority
vote, pass@N); a ProcessBench test file gives the first-error metric instead. Results go to
best_of_n.{json,md} / processbench.{json,md} in the evaluation's run directory (default:
<checkpoint>/eval/<time>) and the table is printed. A checkpoint is evaluated on its own run's data
config (test split, max_length, preflight policies) unless data= is given; which one, and why, is
logged and written to data.yaml. Examples:
    python evaluate.py checkpoint=outputs/2026-11-21/12-00-00
    python evaluate.py checkpoint=<dir> data=dreamprm15 data.test=<best-of-n.json> data.image_root=<images>
    python evaluate.py checkpoint=<dir> data=processbench data.test=<gsm8k.json>
    python evaluate.py checkpoint=multirun/2026-11-21/12-00-00   # every job of a sweep + comparison
    python evaluate.py checkpoint=<dir> bench=[processbench,prmbench] bench.processbench.root=<folder> \
        bench.prmbench.root=<folder> 'compare=[<other run>]'   # benchmarks x models in one table
    python evaluate.py backbone=internvl3_1b backbone.path=<dir> prompt=conversation data=...  # any model
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from prm.config import EvaluateSchema, entry_overrides, user_error_exit
from prm.evaluation.run import evaluate


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
@user_error_exit
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    sys.argv[1:] = entry_overrides(sys.argv[1:], EvaluateSchema)  # one-line choice errors; data.limit.test=N
    main()
