"""What a PRM trained on the demo benchmark has learned, error kind by error kind.

    python experiments/demo_diagnostics.py <run dir or checkpoint> [<more checkpoints> ...]

For every checkpoint it prints, on the demo meta set (whose chains carry their error kind):
the mean score of the first wrong step, the mean score of the same step in correct chains, and the
chain AUROC (mean aggregation) of correct chains against the chains with that kind of error; and on
the test set the within-problem pairwise accuracy: over problems with both correct and wrong
candidates, the share of (correct, wrong) pairs the PRM orders right (ties count one half). Best-of-N
needs the latter, an AUROC across problems does not show it.

Where the training chains say which labels were corrupted (the demo's ``meta.corrupted``), it also
prints how well the PRM itself tells them apart: the AUROC of the chain's lowest step score for
correct chains against corrupted ones (a PRM trained on clean labels scores the hidden error low),
and its mean score at the first wrong step of corrupted chains and of wrong chains whose labels are
true (on the generator's whole training set, also for a run trained on a subset such as the
oracle's). The reweighting study reads it as how clean a reweighted PRM ended.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hydra.utils import instantiate  # noqa: E402

from prm.checkpoint import resolve_checkpoint  # noqa: E402
from prm.data.dataset import flatten_candidates  # noqa: E402
from prm.evaluation.best_of_n import auroc  # noqa: E402
from prm.evaluation.scoring import score_chains  # noqa: E402
from prm.model.build import load_prm  # noqa: E402


def within_problem_accuracy(problems, chain_scores: list[float]) -> tuple[float, int]:
    """Share of (correct, wrong) candidate pairs of one problem ordered right, over all such pairs."""
    right, pairs, start = 0.0, 0, 0
    for problem in problems:
        scores = chain_scores[start : start + len(problem.candidates)]
        start += len(problem.candidates)
        good = [s for s, c in zip(scores, problem.candidates) if c.correct]
        bad = [s for s, c in zip(scores, problem.candidates) if not c.correct]
        for g in good:
            for b in bad:
                right += 1.0 if g > b else 0.5 if g == b else 0.0
                pairs += 1
    return (right / pairs if pairs else float("nan")), pairs


def corrupted_detection(prm, data) -> None:
    """The PRM on its own training chains: correct chains against corrupted ones (see the docstring)."""
    chains = data.load("train")
    if not any(chain.meta.get("corrupted") for chain in chains):
        return
    scores = score_chains(prm, chains, 32, data.max_length)
    bad = [i for i, c in enumerate(chains) if c.meta.get("corrupted")]
    good = [
        i for i, c in enumerate(chains) if not c.meta.get("corrupted") and c.meta.get("first_error", 0) < 0
    ]
    wrong = [
        i for i, c in enumerate(chains) if not c.meta.get("corrupted") and c.meta.get("first_error", -1) >= 0
    ]
    lowest = [float(scores[i].min()) for i in good + bad]
    detection = auroc(lowest, [1] * len(good) + [0] * len(bad))

    def at_error(indices):
        values = [
            float(scores[i][chains[i].meta["first_error"]])
            for i in indices
            if chains[i].meta["first_error"] >= 0
        ]
        return sum(values) / len(values) if values else float("nan")

    print(
        f"training chains: AUROC of the lowest step score, {len(good)} correct vs {len(bad)} corrupted: "
        f"{detection:.3f}; score at the first wrong step: corrupted {at_error(bad):.3f}, "
        f"true-labelled wrong chains {at_error(wrong):.3f}"
    )


def diagnose(checkpoint: Path, verified: dict | None = None) -> None:
    """``verified``: the record of folders already hashed (resolve_checkpoint's), so none is hashed twice."""
    saved = OmegaConf.load(checkpoint / "config.yaml")
    data = instantiate(saved.data)
    prm = load_prm(checkpoint, verified=verified)
    meta = data.load("meta")
    scores = score_chains(prm, meta, 32, data.max_length)
    by_kind: dict[str, list[int]] = defaultdict(list)
    for index, chain in enumerate(meta):
        by_kind[chain.meta.get("error_kind") or "correct"].append(index)
    correct = by_kind.pop("correct")
    print(f"\n{checkpoint}")
    print(f"{'kind':<12}{'chains':>7}{'wrong step':>12}{'same step ok':>14}{'AUROC':>8}")
    for kind, indices in sorted(by_kind.items()):
        wrong_step = [float(scores[i][meta[i].first_error]) for i in indices]
        same_ok = [
            float(scores[j][meta[i].first_error])
            for i in indices
            for j in correct
            if len(scores[j]) == len(scores[i]) and meta[j].question == meta[i].question
        ][:200]
        chain = [float(scores[i].mean()) for i in correct + indices]
        labels = [1] * len(correct) + [0] * len(indices)
        print(
            f"{kind:<12}{len(indices):>7}{sum(wrong_step) / len(wrong_step):>12.3f}"
            f"{(sum(same_ok) / len(same_ok) if same_ok else float('nan')):>14.3f}{auroc(chain, labels):>8.3f}"
        )
    full = saved.data.copy()
    if (
        full.get("generator") is not None
    ):  # the generator's whole training set (the oracle's file lacks the bad chains)
        full.train = None
    corrupted_detection(prm, instantiate(full))
    test = data.load("test")
    test_scores = score_chains(prm, flatten_candidates(test), 32, data.max_length)
    for name, reduce in (("mean", torch.mean), ("min", torch.min), ("last", lambda s: s[-1])):
        accuracy, pairs = within_problem_accuracy(test, [float(reduce(s)) for s in test_scores])
        print(f"test within-problem pair accuracy ({name}): {accuracy:.3f} over {pairs} pairs")


if __name__ == "__main__":
    verified: dict = {}
    for argument in sys.argv[1:]:
        diagnose(resolve_checkpoint(argument, verified), verified)
