"""OmegaPRM tree search and plain Monte Carlo labelling (docs/methods.md#omegaprm-and-monte-carlo-labels).

A tree node is a prefix of steps (its parent's prefix plus a chunk) with a Monte Carlo value:
the share of rollouts from it that the judge accepts. OmegaPRM:

1. estimates the root with ``rollouts`` rollouts; each correct rollout becomes a child leaf with
   value 1, and if the value is above 0 every incorrect rollout enters the candidate pool;
2. repeatedly pops the (node, rollout) pair of highest Q + U, with
   Q = alpha^(1 - MC(node)) * beta^(words(rollout) / L) and
   U = c_puct * sqrt(sum of visits) / (1 + visits(node)),
   and binary-searches the rollout for its first wrong step: estimate the prefix up to the middle;
   value 0 means the error is at or before it, otherwise it is after. Every estimated prefix joins
   the tree (and feeds the pool like the root did);
3. stops after ``max_search_count`` searches, when ``rollout_budget`` rollouts are spent or when the
   pool is empty.

``MonteCarloLabeller`` is the DreamPRM-style baseline: every prefix of given chains gets its own
estimate. Both count the rollouts they spend.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from prm.data.formats.mmprm import SeedProblem


@dataclass
class Node:
    steps: list[str]  # the whole prefix
    parent: int | None
    chunk_start: int  # where this node's chunk starts in ``steps``
    correct: int = 0
    total: int = 0
    visits: int = 0
    children: list[int] = field(default_factory=list)
    leaf: bool = False  # a complete solution (a correct rollout)

    @property
    def value(self) -> float | None:
        return self.correct / self.total if self.total else None


class Estimator:
    """Monte Carlo value of a prefix: ``k`` rollouts judged against the reference; counts rollouts."""

    def __init__(self, policy, judge: Callable, rollouts: int):
        self.policy, self.judge, self.k = policy, judge, rollouts
        self.spent = 0

    def __call__(self, seed: SeedProblem, prefix: Sequence[str]):
        results = self.policy.rollouts(seed, list(prefix), self.k)
        self.spent += len(results)
        answers = [r.answer for r in results]
        if hasattr(self.judge, "many"):  # one batch: an LLM judge sends its requests concurrently
            verdicts = self.judge.many(answers, seed.correct_answer, seed.question)
        else:
            verdicts = [self.judge(a, seed.correct_answer, seed.question) for a in answers]
        return results, verdicts


def locate_first_error(
    value_of: Callable[[int], float], length: int, can_spend: Callable[[], bool] = lambda: True
) -> int | None:
    """Binary search for the first wrong step of a rollout of ``length`` steps whose own end is wrong,
    from a prefix whose value is above 0: ``value_of(m)`` estimates the prefix plus the rollout's
    first m steps. Returns the index of the first wrong step (None when the budget ran out first);
    uses at most ceil(log2(length)) estimates."""
    lo, hi = 0, length  # value(lo) > 0 (the starting prefix); hi: the whole rollout, known wrong
    while hi - lo > 1:
        if not can_spend():
            return None
        mid = (lo + hi) // 2
        if value_of(mid) > 0:
            lo = mid
        else:
            hi = mid
    return lo


class OmegaPRM:
    def __init__(
        self,
        rollouts: int = 16,
        alpha: float = 0.5,
        beta: float = 0.9,
        length_scale: float = 500,
        c_puct: float = 0.125,
        max_search_count: int = 20,
        rollout_budget: int = 200,
    ):
        self.k, self.alpha, self.beta, self.L, self.c_puct = rollouts, alpha, beta, length_scale, c_puct
        self.max_search_count, self.rollout_budget = max_search_count, rollout_budget

    def search(self, seed: SeedProblem, policy, judge) -> dict:
        estimate = Estimator(policy, judge, self.k)
        nodes: list[Node] = [Node(steps=[], parent=None, chunk_start=0)]
        pool: list[tuple[int, list[str]]] = []

        def add(parent: int, steps: list[str], leaf: bool = False) -> int:
            nodes.append(Node(steps=steps, parent=parent, chunk_start=len(nodes[parent].steps), leaf=leaf))
            nodes[parent].children.append(len(nodes) - 1)
            return len(nodes) - 1

        def expand(index: int) -> float:
            node = nodes[index]
            results, verdicts = estimate(seed, node.steps)
            node.correct += sum(verdicts)
            node.total += len(verdicts)
            for result, right in zip(results, verdicts):
                if right and result.steps:
                    leaf = add(index, node.steps + result.steps, leaf=True)
                    nodes[leaf].correct = nodes[leaf].total = 1
            if node.value > 0:
                pool.extend((index, r.steps) for r, right in zip(results, verdicts) if not right and r.steps)
            return node.value

        def priority(item) -> float:
            index, rollout = item
            node = nodes[index]
            q = self.alpha ** (1 - node.value) * self.beta ** (sum(len(s.split()) for s in rollout) / self.L)
            u = self.c_puct * math.sqrt(sum(n.visits for n in nodes)) / (1 + node.visits)
            return q + u

        expand(0)
        searches = 0
        while pool and searches < self.max_search_count and estimate.spent < self.rollout_budget:
            best = max(range(len(pool)), key=lambda i: priority(pool[i]))
            index, rollout = pool.pop(best)
            base, state = nodes[index].steps, {"parent": index}

            # Called only within this iteration (by locate_first_error below): the loop variables are current.
            def value_of(length: int) -> float:  # estimate base + rollout[:length], hanging it in the tree
                child = add(state["parent"], base + rollout[:length])  # noqa: B023
                value = expand(child)
                if value > 0:
                    state["parent"] = child  # noqa: B023
                return value

            first_wrong = locate_first_error(
                value_of, len(rollout), lambda: estimate.spent < self.rollout_budget
            )
            if first_wrong == len(rollout) - 1:  # never estimated: the judged-wrong rollout itself, value 0
                end = add(state["parent"], base + rollout)
                nodes[end].total = 1
            nodes[index].visits += 1
            searches += 1
        return {
            "seed": asdict(seed),
            "nodes": [asdict(n) for n in nodes],
            "rollouts": estimate.spent,
            "searches": searches,
        }


class MonteCarloLabeller:
    """Every prefix of ``samples`` whole solutions sampled from the policy gets ``k`` rollouts."""

    def __init__(self, rollouts: int = 16, samples: int = 4):
        self.k, self.samples = rollouts, samples

    def search(self, seed: SeedProblem, policy, judge) -> dict:
        estimate = Estimator(policy, judge, self.k)
        nodes: list[Node] = [Node(steps=[], parent=None, chunk_start=0)]
        for result in policy.rollouts(seed, [], self.samples):
            estimate.spent += 1
            parent = 0
            for length in range(1, len(result.steps) + 1):
                prefix = result.steps[:length]
                if length == len(result.steps):  # the whole solution: judged directly
                    right = judge(result.answer, seed.correct_answer, seed.question)
                    node = Node(prefix, parent, length - 1, correct=int(right), total=1, leaf=True)
                else:
                    _, verdicts = estimate(seed, prefix)
                    node = Node(prefix, parent, length - 1, correct=sum(verdicts), total=len(verdicts))
                nodes.append(node)
                nodes[parent].children.append(len(nodes) - 1)
                parent = len(nodes) - 1
        return {
            "seed": asdict(seed),
            "nodes": [asdict(n) for n in nodes],
            "rollouts": estimate.spent,
            "searches": 0,
        }


def node_value(node: dict) -> float | None:
    return node["correct"] / node["total"] if node["total"] else None


def sample_paths(tree: dict, rng: random.Random, per_seed: int) -> list[tuple[list[list[str]], list[float]]]:
    """Training paths: root to the first node with value 0 (negative) or to a leaf (positive); each
    node contributes its chunk and its value. Balanced: as many negatives as positives (seeded)."""
    nodes = tree["nodes"]
    positives, negatives = [], []

    def walk(index: int, chunks: list[list[str]], labels: list[float]) -> None:
        node = nodes[index]
        value = node_value(node)
        if index != 0:
            if value is None:
                return
            chunks = chunks + [node["steps"][node["chunk_start"] :]]
            labels = labels + [value]
            if value == 0:
                negatives.append((chunks, labels))
                return
            if not node["children"]:
                positives.append((chunks, labels))
                return
        for child in node["children"]:
            walk(child, chunks, labels)

    walk(0, [], [])
    take = min(len(positives), len(negatives), max(1, per_seed // 2))
    if take == 0:  # one kind only: keep up to per_seed of it
        chosen = rng.sample(positives or negatives, min(per_seed, len(positives or negatives)))
    else:
        chosen = rng.sample(positives, take) + rng.sample(negatives, take)
    return chosen
