"""Native record types: one dataclass per use of data.

Every reader in :mod:`prm.data.formats` turns a published format into these, and the native JSONL
format (:mod:`prm.data.native`) is exactly their ``to_dict`` form, so generated data, demo data and
converted published data all look the same to the rest of the suite.

A step label is a float in [0, 1]: 1.0 / 0.0 for hard "+" / "-" labels, anything in between for a
soft Monte Carlo value (the share of rollouts from that prefix that reached the right answer), and
``None`` for a step that carries no supervision (it is still scored, it just adds no loss).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class StepChain:
    """A step-labelled reasoning chain: one training instance of the lower level."""

    id: str
    question: str
    steps: list[str]
    labels: list[float | None]
    images: list[str] = field(default_factory=list)
    domain: str = "default"
    meta: dict[str, Any] = field(default_factory=dict)

    kind = "step_chain"

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.steps):
            raise ValueError(f"chain {self.id!r}: {len(self.steps)} steps but {len(self.labels)} labels")
        for position, label in enumerate(self.labels):
            if label is not None and not 0.0 <= float(label) <= 1.0:
                raise ValueError(f"chain {self.id!r}: label {label!r} of step {position} is outside [0, 1]")

    @property
    def supervised_steps(self) -> int:
        """How many steps carry a label (not None)."""
        return sum(label is not None for label in self.labels)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


@dataclass
class LabelledChain:
    """A whole chain with one 0/1 correctness label: the meta set of the upper level.

    ``first_error`` is the index of the first wrong step when it is known (ProcessBench, the demo
    benchmark), ``-1`` when every step is right, ``None`` when unknown.
    """

    id: str
    question: str
    steps: list[str]
    label: int
    images: list[str] = field(default_factory=list)
    domain: str = "default"
    final_answer: str | None = None
    first_error: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    kind = "labelled_chain"

    def __post_init__(self) -> None:
        if self.label not in (0, 1):
            raise ValueError(f"chain {self.id!r}: label must be 0 or 1, got {self.label!r}")
        if self.first_error is not None and not -1 <= self.first_error < max(len(self.steps), 1):
            raise ValueError(
                f"chain {self.id!r}: first_error {self.first_error} outside [-1, {len(self.steps) - 1}]"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


@dataclass
class Candidate:
    """One candidate solution of a best-of-N problem."""

    steps: list[str]
    final_answer: str | None
    correct: bool
    first_error: int | None = None


@dataclass
class BestOfNProblem:
    """A test problem: N candidate chains for one question, each marked right or wrong."""

    id: str
    question: str
    candidates: list[Candidate]
    images: list[str] = field(default_factory=list)
    domain: str = "default"
    answer: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    kind = "best_of_n"

    def __post_init__(self) -> None:
        self.candidates = [c if isinstance(c, Candidate) else Candidate(**c) for c in self.candidates]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


RECORD_TYPES: dict[str, type] = {cls.kind: cls for cls in (StepChain, LabelledChain, BestOfNProblem)}
Record = StepChain | LabelledChain | BestOfNProblem
