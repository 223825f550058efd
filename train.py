"""Train a process reward model: python train.py [group=option ...] [key=value ...]

Reads top to bottom like a recipe: compose the config (conf/config.yaml), build the data and the
backbone from it, then train. Examples:
    python train.py                                  # tiny Qwen2-VL PRM on the demo benchmark
    python train.py backbone=tiny_internvl experiment=smoke
    python train.py -m aggregation=mean,min,max      # a Hydra multirun sweep under multirun/
"""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from prm.data.dataset import ChainDataset, PRMCollator

log = logging.getLogger("train")


def train(cfg: DictConfig) -> dict[str, float]:
    """Run one training job; returns its final metrics (so sweepers can use them)."""
    torch.manual_seed(cfg.seed)
    run_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path("outputs/manual")
    tracker = instantiate(cfg.logger)
    tracker.start(run_dir, OmegaConf.to_container(cfg, resolve=True), name=run_dir.name)

    data = instantiate(cfg.data)
    train_chains, meta_chains = data.load("train"), data.load("meta")
    backbone = instantiate(cfg.backbone)
    log.info("backbone %s: %d parameters; %d training chains in domains %s; %d meta chains",
             backbone.family, backbone.num_parameters(), len(train_chains),
             sorted({chain.domain for chain in train_chains}), len(meta_chains))

    train_set = ChainDataset(train_chains)
    loader = DataLoader(train_set, batch_size=data.batch_size, shuffle=True, collate_fn=PRMCollator(backbone, data.max_length))
    batch = next(iter(loader))
    with torch.no_grad():
        backbone.model(**batch["inputs"])
    metrics = {"train_chains": len(train_chains), "meta_chains": len(meta_chains),
               "parameters": backbone.num_parameters(),
               "tokens_per_batch": int(batch["inputs"]["attention_mask"].sum())}
    tracker.log(metrics, step=0)
    tracker.finish()
    # The PRM head, its losses and the Betty training loop come with issue 3: this run checks that
    # the data, the backbone and a batch fit together end to end.
    log.info("data and backbone ready: %s (training loop: issue 3)", metrics)
    return metrics


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
