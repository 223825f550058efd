"""Evaluate a PRM checkpoint: python evaluate.py checkpoint=<run dir or checkpoint> [data=<test set>]

Every candidate is scored once (all steps in one forward pass); best-of-N accuracy is then computed
for every aggregation at once from those scores, beside the baselines (random expectation, first
candidate, majority vote, pass@N). A ProcessBench test file gives the first-error metric instead.
Results go to best_of_n.{json,md} / processbench.{json,md} in the evaluation's run directory
(default: <checkpoint>/eval/<time>) and the table is printed. Examples:
    python evaluate.py checkpoint=outputs/2026-11-21/12-00-00
    python evaluate.py checkpoint=<dir> data=dreamprm15 data.test=<best-of-n.json> data.image_root=<images>
    python evaluate.py checkpoint=<dir> data=processbench data.test=<gsm8k.json> backbone=...
"""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from prm.checkpoint import load_head, resolve_checkpoint
from prm.data.dataset import flatten_candidates
from prm.data.readers import read_records
from prm.data.records import BestOfNProblem, LabelledChain
from prm.device import pick_device
from prm.evaluation import (accuracy_vs_n, best_of_n, choose_threshold, processbench, write_best_of_n,
                            write_processbench)
from prm.evaluation.scoring import score_chains
from prm.model.prm import ProcessRewardModel

log = logging.getLogger("evaluate")


def load_prm(checkpoint: Path) -> ProcessRewardModel:
    """The PRM of a checkpoint, built as the run that saved it configured it."""
    saved = OmegaConf.load(checkpoint / "config.yaml")
    backbone = instantiate(saved.backbone, path=str(checkpoint))
    prm = ProcessRewardModel(backbone, head=saved.prm.head)
    prm.load_head_state_dict(load_head(checkpoint))
    return prm


def detect_mode(records: list) -> str:
    if records and all(isinstance(record, BestOfNProblem) for record in records):
        return "best_of_n"
    if records and all(isinstance(record, LabelledChain) and record.first_error is not None for record in records):
        return "processbench"
    raise ValueError("the test split holds neither best-of-N problems nor chains with known first errors")


def evaluate(cfg: DictConfig) -> dict:
    checkpoint = resolve_checkpoint(cfg.checkpoint)
    out_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else checkpoint / "eval"
    device = pick_device(cfg.device)
    prm = load_prm(checkpoint).to(device)
    data = instantiate(cfg.data)
    records = data.load("test")
    mode = detect_mode(records) if cfg.mode == "auto" else cfg.mode
    log.info("evaluating %s on %d %s records (%s)", checkpoint, len(records), data.name, mode)

    def score(chains):
        return score_chains(prm, chains, data.eval_batch_size, data.max_length, device, cfg.precision, progress=True)

    if mode == "best_of_n":
        chains = flatten_candidates(records)
        flat = score(chains)
        grouped, start = [], 0
        for problem in records:
            grouped.append(flat[start:start + len(problem.candidates)])
            start += len(problem.candidates)
        result = best_of_n(records, grouped)
        table = write_best_of_n(result, out_dir, accuracy_vs_n(records, grouped))
        summary = result.to_dict()
    else:
        scores = score(records)
        first_errors = [record.first_error for record in records]
        threshold = cfg.processbench.threshold
        if threshold is None:
            split = cfg.processbench.threshold_split
            tune = records if split is None else read_records(split, "processbench")
            tune_scores = scores if split is None else score(tune)
            threshold = choose_threshold(tune_scores, [record.first_error for record in tune])
            log.info("threshold %.4f chosen on %s", threshold, split or "the test split itself")
        result = processbench(scores, first_errors, threshold)
        table = write_processbench({data.name: result}, out_dir)
        summary = result.to_dict()
    print(table)
    log.info("results written to %s", out_dir)
    return summary


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
