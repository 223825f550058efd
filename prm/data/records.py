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


# Step-level benchmarks. Their records are scored, never trained on, so they are not native record
# kinds (RECORD_TYPES): readers build them and prm.evaluation scores them.

PRMBENCH_CLASSES: tuple[str, ...] = (
    "redundency",
    "circular",
    "counterfactual",
    "step_contradiction",
    "domain_inconsistency",
    "confidence",
    "missing_condition",
    "deception",
    "multi_solutions",
)
"""PRMBench's nine error classes, spelled as in its published ``classification`` field (sic)."""

PRMBENCH_CORRECT = "correct"
"""The class of an unmodified PRMBench process (its ``original_process``), which the reference
evaluation adds once per problem; it has no erroneous step."""


@dataclass
class PRMBenchRecord:
    """One PRMBench chain: a question, a process (its steps), the erroneous steps and the error class.

    ``error_steps`` are 0-based step indices; the published JSONL numbers them from 1, so a reader
    subtracts 1. ``classification`` is one of :data:`PRMBENCH_CLASSES` or :data:`PRMBENCH_CORRECT`.
    Raises ValueError naming the record for an unknown class or an error step outside the process.
    """

    id: str
    question: str
    steps: list[str]
    error_steps: list[int]
    classification: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.classification not in (*PRMBENCH_CLASSES, PRMBENCH_CORRECT):
            raise ValueError(
                f"PRMBench record {self.id!r}: classification {self.classification!r} is not one of "
                f"{', '.join((*PRMBENCH_CLASSES, PRMBENCH_CORRECT))}"
            )
        for step in self.error_steps:
            if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < len(self.steps):
                raise ValueError(
                    f"PRMBench record {self.id!r}: error step {step!r} is not a 0-based index of its "
                    f"{len(self.steps)} steps"
                )

    @classmethod
    def from_chain(cls, chain: StepChain) -> PRMBenchRecord:
        """The scoring record of a chain read by the ``prmbench`` reader
        (:mod:`prm.data.formats.prmbench`): same id, question and steps; ``error_steps`` = the
        0-based steps labelled 0.0; class and meta from ``chain.meta``.

        Raises ValueError naming the chain when its meta lacks ``benchmark: prmbench`` or a
        ``classification``, or a label is neither 0.0 nor 1.0 (None or a soft value included).
        """
        if chain.meta.get("benchmark") != "prmbench":
            raise ValueError(
                f"chain {chain.id!r} is not a PRMBench chain: meta['benchmark'] is "
                f"{chain.meta.get('benchmark')!r}, expected 'prmbench' (read it with format=prmbench)"
            )
        if "classification" not in chain.meta:
            raise ValueError(f"PRMBench chain {chain.id!r}: meta has no 'classification'")
        for position, label in enumerate(chain.labels):
            if label is None or float(label) not in (0.0, 1.0):
                raise ValueError(
                    f"PRMBench chain {chain.id!r}: label {label!r} of step {position} is neither 0.0 "
                    "(error step) nor 1.0 (correct step)"
                )
        return cls(
            id=chain.id,
            question=chain.question,
            steps=list(chain.steps),
            error_steps=[position for position, label in enumerate(chain.labels) if float(label) == 0.0],
            classification=chain.meta["classification"],
            meta=dict(chain.meta),
        )

    @property
    def step_correct(self) -> list[bool]:
        """Per step: True when the step is not an error step."""
        errors = set(self.error_steps)
        return [index not in errors for index in range(len(self.steps))]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


VISUALPROCESSBENCH_LABELS: dict[int, bool | None] = {1: True, 0: None, -1: False}
"""VisualProcessBench's ``process_correctness`` values: 1 correct, 0 neutral (no reasoning, left out
of the F1), -1 incorrect; mapped to the step's correctness (None: not counted)."""


@dataclass
class VisualProcessBenchRecord:
    """One VisualProcessBench sample: image paths, question, the response's steps with a human label
    each (``process_correctness``: 1 / 0 / -1, see :data:`VISUALPROCESSBENCH_LABELS`) and the
    benchmark the question came from (``data_source``). The published rows have no id; a reader
    assigns one. Raises ValueError naming the record for a label outside {1, 0, -1} or a count
    mismatch between steps and labels.
    """

    id: str
    question: str
    steps: list[str]
    process_correctness: list[int]
    data_source: str
    images: list[str] = field(default_factory=list)
    answer: str | None = None
    policy_model: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.process_correctness) != len(self.steps):
            raise ValueError(
                f"VisualProcessBench record {self.id!r}: {len(self.steps)} steps but "
                f"{len(self.process_correctness)} process_correctness labels"
            )
        for position, label in enumerate(self.process_correctness):
            if isinstance(label, bool) or label not in VISUALPROCESSBENCH_LABELS:
                raise ValueError(
                    f"VisualProcessBench record {self.id!r}: process_correctness {label!r} of step "
                    f"{position} is not one of 1, 0, -1"
                )

    @classmethod
    def from_chain(cls, chain: StepChain) -> VisualProcessBenchRecord:
        """The scoring record of a chain read by the ``visualprocessbench`` reader
        (:mod:`prm.data.formats.visualprocessbench`): same id, question, steps and images;
        ``process_correctness`` from the labels (1.0 -> 1, 0.0 -> -1, None -> 0); ``data_source``,
        ``answer``, ``policy_model`` and meta from ``chain.meta``.

        Raises ValueError naming the chain when its meta lacks ``benchmark: visualprocessbench`` or a
        ``data_source``, or a label is not 1.0, 0.0 or None.
        """
        if chain.meta.get("benchmark") != "visualprocessbench":
            raise ValueError(
                f"chain {chain.id!r} is not a VisualProcessBench chain: meta['benchmark'] is "
                f"{chain.meta.get('benchmark')!r}, expected 'visualprocessbench' "
                "(read it with format=visualprocessbench)"
            )
        if not isinstance(chain.meta.get("data_source"), str):
            raise ValueError(f"VisualProcessBench chain {chain.id!r}: meta has no 'data_source' string")
        marks = []
        for position, label in enumerate(chain.labels):
            if label is None:
                marks.append(0)
            elif float(label) in (0.0, 1.0):
                marks.append(1 if float(label) == 1.0 else -1)
            else:
                raise ValueError(
                    f"VisualProcessBench chain {chain.id!r}: label {label!r} of step {position} is not "
                    "1.0 (correct), 0.0 (incorrect) or None (neutral)"
                )
        return cls(
            id=chain.id,
            question=chain.question,
            steps=list(chain.steps),
            process_correctness=marks,
            data_source=chain.meta["data_source"],
            images=list(chain.images),
            answer=chain.meta.get("answer"),
            policy_model=chain.meta.get("policy_model"),
            meta=dict(chain.meta),
        )

    @property
    def step_correct(self) -> list[bool | None]:
        """Per step: True (label 1), False (label -1) or None (neutral, label 0)."""
        return [VISUALPROCESSBENCH_LABELS[label] for label in self.process_correctness]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
