"""Rollouts spent per labelled step: OmegaPRM against plain Monte Carlo labelling of every prefix.

    python experiments/label_efficiency.py [--seeds 40] [--rollouts 4 8 16] [--error-rate 0.15]

Both searches label demo seed problems with the simulated policy (whose errors are known) and the
rule judge. For each number of rollouts per estimate it prints the labelled prefixes, the rollouts
spent, rollouts per labelled prefix, the agreement of the labels (value > 0) with the truth (is the
prefix still correct?), and how many labelled prefixes are wrong ones (the negatives a PRM needs).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prm.data.readers import read_mmprm_seeds  # noqa: E402
from prm.generate.judge import Judge  # noqa: E402
from prm.generate.policy import SimulatedPolicy  # noqa: E402
from prm.generate.run import demo_seeds, seed_key  # noqa: E402
from prm.generate.search import MonteCarloLabeller, OmegaPRM, node_value  # noqa: E402


def measure(search, seeds, error_rate: float) -> dict:
    policy = SimulatedPolicy(error_rate=error_rate, seed=0)
    labelled = agree = negatives = rollouts = 0
    for seed in seeds:
        policy.reseed(seed_key(seed))
        tree = search.search(seed, policy, Judge("rule"))
        rollouts += tree["rollouts"]
        for node in tree["nodes"][1:]:
            value = node_value(node)
            if value is None:
                continue
            truth = policy.truth(seed, node["steps"])
            labelled += 1
            agree += (value > 0) == truth
            negatives += not truth
    return {
        "labelled": labelled,
        "rollouts": rollouts,
        "per_label": rollouts / max(labelled, 1),
        "agreement": agree / max(labelled, 1),
        "negatives": negatives,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--rollouts", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--error-rate", type=float, default=0.15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        seeds = read_mmprm_seeds(demo_seeds(Path(tmp), args.seeds), data_root=tmp)
        lines = [
            "| search | rollouts / estimate | labelled prefixes | wrong prefixes | rollouts | "
            "rollouts / labelled prefix | agreement with truth |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for k in args.rollouts:
            for name, search in (
                ("OmegaPRM", OmegaPRM(rollouts=k, rollout_budget=200)),
                ("Monte Carlo, every prefix", MonteCarloLabeller(rollouts=k, samples=4)),
            ):
                r = measure(search, seeds, args.error_rate)
                lines.append(
                    f"| {name} | {k} | {r['labelled']} | {r['negatives']} | {r['rollouts']} | "
                    f"{r['per_label']:.2f} | {r['agreement']:.3f} |"
                )
    print(f"{args.seeds} demo seeds, simulated policy error rate {args.error_rate} per step, rule judge\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
