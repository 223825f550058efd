"""Evaluate a PRM checkpoint: python evaluate.py checkpoint=<dir> data=<test set>

Best-of-N selection for every aggregation, with the baselines, lands with issue 3; for now this
reads and summarises a test split so data configs can be checked from the command line.
"""
from __future__ import annotations

import logging

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from prm.data.records import BestOfNProblem

log = logging.getLogger("evaluate")


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    data = instantiate(cfg.data)
    records = data.load("test")
    problems = [record for record in records if isinstance(record, BestOfNProblem)]
    summary = {"records": len(records), "best_of_n_problems": len(problems)}
    if problems:
        summary["random_baseline"] = sum(sum(c.correct for c in p.candidates) / len(p.candidates)
                                         for p in problems) / len(problems)
        summary["pass_at_n"] = sum(any(c.correct for c in p.candidates) for p in problems) / len(problems)
    log.info("test split: %s", summary)
    return summary


if __name__ == "__main__":
    main()
