"""python -m prm.generate [policy=...] [judge=...] [search=...] [seeds=<file>] [shard=k num_shards=n]

Seed problems -> OmegaPRM (or Monte Carlo) step labels -> ``<out>/train.jsonl`` (native, for
``python train.py data.train=<out>/train.jsonl``) and ``<out>/train_mmprm.jsonl`` (MM-PRM format).
Config: ``conf/generate.yaml``. Examples:
    python -m prm.generate                                   # demo seeds, simulated policy, OmegaPRM
    python -m prm.generate search=mc                         # plain MC labelling of every prefix
    python -m prm.generate seeds=seeds.json image_root=img policy=transformers policy.path=/models/qwen
    OPENAI_API_KEY=... python -m prm.generate seeds=seeds.json policy=openai \\
        policy.client.base_url=http://localhost:8000/v1 policy.client.model=Qwen2.5-VL-7B-Instruct
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from prm.config import user_error_exit
from prm.data.errors import SkipReport
from prm.data.formats.mmprm import read_mmprm_seeds
from prm.generate.run import demo_seeds, grow_trees, write_training_files

log = logging.getLogger("generate")


def generate(cfg: DictConfig) -> dict:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds_path = cfg.seeds
    if seeds_path is None:
        seeds_path = demo_seeds(out, cfg.demo_seeds, seed=cfg.seed)
        image_root = out
    else:
        image_root = cfg.image_root
    report = SkipReport(str(seeds_path))
    seeds = read_mmprm_seeds(
        seeds_path,
        data_root=image_root,
        missing_image=cfg.missing_image,
        report=report,
        allow_outside_paths=cfg.get("allow_outside_paths", False),
    )
    report.log()
    policy, judge, search = instantiate(cfg.policy), instantiate(cfg.judge), instantiate(cfg.search)
    counts = grow_trees(seeds, search, policy, judge, out, shard=cfg.shard, num_shards=cfg.num_shards)
    counts.update(write_training_files(out, cfg.paths_per_seed, seed=cfg.seed))
    counts["judge"] = dict(getattr(judge, "counts", {}))
    (out / "summary.json").write_text(json.dumps(counts, indent=1) + "\n", encoding="utf-8")
    log.info("generated: %s -> %s", counts, out / "train.jsonl")
    return counts


@hydra.main(config_path="../../conf", config_name="generate", version_base="1.3")
@user_error_exit
def main(cfg: DictConfig) -> None:
    generate(cfg)


if __name__ == "__main__":
    main()
