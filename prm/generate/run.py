"""The generation run: seeds -> one tree file per seed -> a native training file and an MM-PRM export.

A seed's tree file is ``trees/<key>.json`` with ``key`` a hash of the seed (id, question, answer,
images), written atomically; a rerun skips seeds whose tree exists, so an interrupted run resumes
and produces the same files. ``shard=k num_shards=n`` keeps the seeds whose key falls in shard k, so
several processes or machines split one seed file without coordination. The training files are
rebuilt from all tree files present (every shard's), with balanced, seeded path sampling.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from prm.data.formats.mmprm import SeedProblem, write_mmprm
from prm.data.native import atomic_write_text, write_native
from prm.data.records import StepChain
from prm.generate.search import sample_paths

log = logging.getLogger(__name__)


def seed_key(seed: SeedProblem) -> str:
    blob = json.dumps([seed.id, seed.question, seed.correct_answer, list(seed.images)], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def in_shard(seed: SeedProblem, shard: int, num_shards: int) -> bool:
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard={shard} must be in [0, num_shards={num_shards})")
    return int(seed_key(seed), 16) % num_shards == shard


def grow_trees(
    seeds: Sequence[SeedProblem], search, policy, judge, out: Path, shard: int = 0, num_shards: int = 1
) -> dict[str, int]:
    """Search every seed of this shard that has no tree file yet; returns counts."""
    trees = out / "trees"
    trees.mkdir(parents=True, exist_ok=True)
    mine = [seed for seed in seeds if in_shard(seed, shard, num_shards)]
    todo = [seed for seed in mine if not (trees / f"{seed_key(seed)}.json").exists()]
    log.info(
        "shard %d/%d: %d of %d seeds, %d already done",
        shard,
        num_shards,
        len(mine),
        len(seeds),
        len(mine) - len(todo),
    )
    rollouts = 0
    for seed in tqdm(todo, desc="search", dynamic_ncols=True):
        if hasattr(policy, "reseed"):
            policy.reseed(seed_key(seed))
        tree = search.search(seed, policy, judge)
        rollouts += tree["rollouts"]
        atomic_write_text(trees / f"{seed_key(seed)}.json", json.dumps(tree, ensure_ascii=False) + "\n")
    return {"seeds": len(mine), "searched": len(todo), "skipped": len(mine) - len(todo), "rollouts": rollouts}


def load_trees(out: Path) -> list[dict]:
    return [json.loads(path.read_text(encoding="utf-8")) for path in sorted((out / "trees").glob("*.json"))]


def _portable_image_path(image: str, out: Path) -> str:
    """``image`` relative to ``out`` (the training files' folder) when it lies under it, else absolute.

    Readers refuse absolute image paths unless ``data.allow_outside_paths=true``, so images under the
    output folder (the demo seeds') make a training file usable as it is."""
    path, root = Path(image).resolve(), Path(out).resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def write_training_files(out: Path, paths_per_seed: int = 4, seed: int = 0) -> dict[str, int]:
    """``train.jsonl`` (native StepChains: every policy step, a chunk's MC value as the soft label of
    its last step, the chunk's other steps unlabelled) and ``train_mmprm.jsonl`` (MM-PRM's format:
    chunks each ended by <prm>, one label per chunk: :func:`prm.data.formats.mmprm.write_mmprm`)."""
    rng = random.Random(seed)
    chains, mmprm = [], []
    for tree in load_trees(out):
        problem = SeedProblem(**tree["seed"])
        for number, (chunks, labels) in enumerate(sample_paths(tree, rng, paths_per_seed)):
            steps = ["\n".join(chunk) for chunk in chunks]
            images = [_portable_image_path(image, out) for image in problem.images]
            # native: one step per policy step; a chunk's value labels its last step, the others none
            flat = [step for chunk in chunks for step in chunk]
            step_labels = [
                label if i == len(chunk) - 1 else None
                for chunk, label in zip(chunks, labels)
                for i in range(len(chunk))
            ]
            chains.append(
                StepChain(
                    id=f"{problem.id}-{number}",
                    question=problem.question,
                    steps=flat,
                    labels=step_labels,
                    images=images,
                    domain="generated",
                    meta={"answer": problem.correct_answer, "seed_key": seed_key(problem)},
                )
            )
            mmprm.append(
                StepChain(
                    id=f"{problem.id}-{number}",
                    question=problem.question,
                    steps=steps,
                    labels=labels,
                    images=images,
                    meta={"answer": problem.correct_answer},
                )
            )
    write_native(out / "train.jsonl", chains)
    write_mmprm(out / "train_mmprm.jsonl", mmprm)
    positives = sum(chain.labels[-1] > 0 for chain in chains)  # a path's last step is always labelled
    return {"chains": len(chains), "positive": positives, "negative": len(chains) - positives}


def demo_seeds(out: Path, count: int, seed: int = 0, image_size: int = 56) -> Path:
    """A seed file of ``count`` demo problems (MM-PRM seed format) with their images, for the
    simulated policy: ``id, question, correct_answer, image_path``."""
    from prm.data import synthetic

    pool = synthetic._layout_pools(seed)["train"]
    rng = random.Random(f"{seed}:seeds")
    problems = rng.sample(pool, count)
    images = out / "seed_images"
    records = []
    for index, problem in enumerate(problems):
        relative = f"seed_images/seed-{index:05d}.png"
        synthetic._save_image(problem, relative.split("/", 1)[1], images, image_size, rng)
        records.append(
            {
                "id": f"seed-{index:05d}",
                "question": problem.question,
                "correct_answer": str(problem.answer),
                "image_path": relative,
            }
        )
    path = out / "seeds.json"
    atomic_write_text(path, json.dumps(records, indent=1) + "\n")
    return path
