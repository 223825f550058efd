"""The demo benchmark: a small multimodal step-verification task that a tiny model learns on a CPU.

**Task.** Each image is a 2x2 grid of large coloured tiles (red, green, blue, yellow), one colour patch
per quadrant, so a vision encoder with 28-pixel cells sees one tile per cell at the default 56 px.
A question asks either for the total worth of the tiles in a region (red 1, green 2, blue 3,
yellow 4; the region is a row, a column or the whole grid) or for how many tiles have a colour,
multiplied by 2 or 3. The question never says which colours the tiles have: only the image does.
A solution reads the tiles it needs, one step per tile, computes, and ends with the final answer::

    Q: Tiles are worth red 1, green 2, blue 3, yellow 4. What is the total worth of the tiles in the top row?
    The top left tile is blue, worth 3.
    The top right tile is red, worth 1.
    3 + 1 = 4.
    Final answer: 4

**Errors.** A simulated policy makes at most one error per chain and computes on consistently from
it, so a chain's final answer is wrong exactly when it has an error. Kinds: ``misread`` (a tile's
colour stated wrongly: only the image shows it), ``value`` (a colour's worth stated wrongly),
``arithmetic`` (a wrong sum or product), ``count`` (a wrong count of the colours just stated) and
``answer`` (a final answer that differs from the last result); the last four show in the text alone.
``first_error`` is the index of the wrong step, -1 for a correct chain; the chain is wrong from the
first error on, so every later step is unsupported.

**Step labels** (training chains, :class:`StepChain`) are simulated Monte Carlo values. Each chain
has a true success probability q (the chance that the policy solves its problem), so a correct
prefix with r steps left succeeds with probability q ** (r / steps); a step's label is the share of
``rollouts`` (default 16) simulated continuations from its prefix that reach the right answer, and
0 at and after the first error. ``meta["true_labels"]`` holds these noise-free labels.

**Domains** (training; names are the kinds below, sizes per domain configurable):

- ``clean``: every error kind; labels are the true labels.
- ``noisy``: the same task; a share ``noise_rate`` (default 0.4) of chains get corrupted labels
  (``noisy_domains``, default ``["noisy"]``, names the domains corrupted this way: every training
  domain scatters the bad labels over the whole set, so no per-domain weight can single them out).
  ``corruption="mixed"`` (default): flipped (1 - label) or shifted (the labels of a different first
  error, or of none), half and half: noise without a direction. ``corruption="false_positive"``:
  a wrong chain is labelled as if it had no error (what Monte Carlo labels give when the policy
  recovers from a wrong step), so the noise teaches the PRM to accept errors; only wrong chains can
  be corrupted this way, so ``noise_rate`` is then the share of the domain's wrong chains.
  ``corrupted_kinds`` (e.g. ``["arithmetic"]``) restricts the corruption to chains whose error is of
  those kinds: a labeller that always accepts one kind of error (``data=demo_shift``).
  ``meta["corrupted"]`` says which, so experiments can measure whether reweighting found them.
- ``easy``: text-visible errors only (no misreads): a model can label it without the image.
- ``visual``: misreads only: a model must read the image to label it.

``domain_kind_weights`` gives a domain its own odds of each error kind (default: ``kind_weights``
for every domain, and always within the kinds the domain allows): e.g. a noisy domain whose errors
are all arithmetic. Meta and test sets always use ``kind_weights``.

Every chain's ``meta`` has ``corrupted``, ``corruption`` (None, "flip" or "shift"), ``first_error``,
``true_labels``, ``error_kind``, ``final_answer``, ``answer`` and ``tiles``.

**Meta set** (:class:`LabelledChain`, domain ``demo``): chains with every error kind, half of them
correct, label 1 exactly when ``first_error == -1``, with their final answer.

**Test set** (:class:`BestOfNProblem`, domain ``demo``): N candidates per problem (default 8).
Problem success probabilities are spread evenly over [0, 1], so some problems have no correct
candidate and some only correct ones; wrong candidates share a problem's typical mistake at a
problem-specific rate, so majority vote is a fair but beatable baseline. Meta and test layouts
(tile colourings) are held out of training, and of each other.

**Files.** :func:`build_demo` writes ``train.jsonl``, ``meta.jsonl``, ``test.jsonl`` (native format),
``images/`` (record image paths are relative to it) and ``manifest.json`` (parameters and counts)
into ``root/<hash of the parameters>/``, once: a later call with the same parameters reuses them.
The same parameters always give the same bytes in every file.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from prm.answers import is_correct
from prm.data.native import atomic_write_text, write_native
from prm.data.records import BestOfNProblem, Candidate, LabelledChain, StepChain

GENERATOR_VERSION = 3

COLOURS = ("red", "green", "blue", "yellow")
WORTH = {"red": 1, "green": 2, "blue": 3, "yellow": 4}
RGB = {"red": (215, 45, 40), "green": (40, 165, 70), "blue": (45, 80, 215), "yellow": (235, 205, 45)}
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
REGIONS = {
    "top row": (0, 1),
    "bottom row": (2, 3),
    "left column": (0, 2),
    "right column": (1, 3),
    "whole grid": (0, 1, 2, 3),
}
FACTORS = (2, 3)
QUESTIONS = [("sum", region, 1) for region in REGIONS] + [
    ("count", colour, factor) for colour in COLOURS for factor in FACTORS
]

ERROR_KINDS = ("misread", "value", "arithmetic", "count", "answer")
DOMAIN_ERRORS = {
    "clean": ERROR_KINDS,
    "noisy": ERROR_KINDS,
    "easy": ("value", "arithmetic", "count", "answer"),
    "visual": ("misread",),
}
DEFAULT_DOMAINS = ("clean", "noisy", "easy")
# How often each kind of error is drawn, relative to the others. Misreads (visible only in the image)
# are rarer by default: a tiny model trained for minutes learns text-visible errors, and a demo where
# most errors need vision it has not learned would measure nothing. Raise it for a harder benchmark.
DEFAULT_KIND_WEIGHTS = {"misread": 0.25, "value": 1.0, "arithmetic": 1.0, "count": 1.0, "answer": 1.0}
HELD_OUT_LAYOUTS = 32  # tile colourings kept for the meta set, and as many again for the test set
EVAL_DOMAIN = "demo"


@dataclass(frozen=True)
class Problem:
    """A question about one tile layout: ``kind`` "sum" (``target`` a region) or "count" (a colour)."""

    tiles: tuple[str, ...]
    kind: str
    target: str
    factor: int

    @property
    def question(self) -> str:
        if self.kind == "sum":
            return (
                "Tiles are worth red 1, green 2, blue 3, yellow 4. "
                f"What is the total worth of the tiles in the {self.target}?"
            )
        return f"How many tiles are {self.target}? Multiply that number by {self.factor}."

    @property
    def answer(self) -> int:
        return solve(self).answer


@dataclass(frozen=True)
class Slip:
    """One error: which step, which kind, and ``pick`` to choose the wrong value, so it replays exactly."""

    step: int
    kind: str
    pick: int


@dataclass
class Solution:
    steps: list[str]
    answer: int
    slots: list[tuple[str, ...]]  # the error kinds each step can carry


# Phrasings of each kind of step: a policy's samples differ in wording, as real ones do, so two
# correct candidates of a problem are rarely the same text (identical candidates tie, which would
# hand the multiplicity of correct answers to the random baseline and hide it from a PRM).
TEMPLATES = {
    "worth": (
        "The {pos} tile is {colour}, worth {worth}.",
        "{Pos} tile: {colour}, worth {worth}.",
        "I see a {colour} tile at the {pos}, worth {worth}.",
    ),
    "tile": ("The {pos} tile is {colour}.", "{Pos} tile: {colour}.", "I see a {colour} tile at the {pos}."),
    "add": ("{a} + {b} = {c}.", "Adding: {a} + {b} = {c}.", "So {a} + {b} = {c}."),
    "count": (
        "So {n} {tiles} {target}.",
        "Counting: {n} {tiles} {target}.",
        "That makes {n} {target} {noun}.",
    ),
    "times": ("{a} x {b} = {c}.", "Multiplying: {a} x {b} = {c}.", "So {a} x {b} = {c}."),
    "final": ("Final answer: {answer}",),
}


def solve(
    problem: Problem, slip: Slip | None = None, style: random.Random | None = None, later: Sequence[Slip] = ()
) -> Solution:
    """Write the chain for ``problem``, with ``slip`` applied and every later step computed from it.

    ``later`` are further slips after the first (errors compounding). Wrong alternatives are chosen
    so that a single slip always changes the final answer. ``style`` picks a
    phrasing per step (the first phrasing of each step without it); it never changes the content.
    """
    steps: list[str] = []
    slots: list[tuple[str, ...]] = []

    def state(kind: str, right, wrong: list):
        for error in (slip, *later):
            if error is not None and error.step == len(steps) and error.kind == kind:
                return wrong[error.pick % len(wrong)]
        return right

    def emit(template: str, kinds: tuple[str, ...], **fields) -> None:
        options = TEMPLATES[template]
        text = options[style.randrange(len(options)) if style is not None else 0]
        if "pos" in fields:
            fields["Pos"] = fields["pos"][0].upper() + fields["pos"][1:]
        steps.append(text.format(**fields))
        slots.append(kinds)

    if problem.kind == "sum":
        worths = []
        for tile in REGIONS[problem.target]:
            true = problem.tiles[tile]
            colour = state("misread", true, [c for c in COLOURS if c != true])
            worth = state("value", WORTH[colour], [w for w in WORTH.values() if w != WORTH[colour]])
            emit("worth", ("misread", "value"), pos=POSITIONS[tile], colour=colour, worth=worth)
            worths.append(worth)
        result = worths[0]
        for worth in worths[1:]:
            total = state("arithmetic", result + worth, _near(result + worth))
            emit("add", ("arithmetic",), a=result, b=worth, c=total)
            result = total
    else:
        target, count = problem.target, 0
        for tile, true in enumerate(problem.tiles):
            # a misread must change the count: a target tile read as another colour, or the reverse
            colour = state("misread", true, [c for c in COLOURS if c != true] if true == target else [target])
            emit("tile", ("misread",), pos=POSITIONS[tile], colour=colour)
            count += colour == target
        count = state("count", count, [n for n in range(len(POSITIONS) + 1) if n != count])
        emit(
            "count",
            ("count",),
            n=count,
            tiles="tile is" if count == 1 else "tiles are",
            target=target,
            noun="tile" if count == 1 else "tiles",
        )
        result = state("arithmetic", count * problem.factor, _near(count * problem.factor))
        emit("times", ("arithmetic",), a=count, b=problem.factor, c=result)
    answer = state("answer", result, _near(result))
    emit("final", ("answer",), answer=answer)
    return Solution(steps, answer, slots)


def _near(value: int) -> list[int]:
    return [value + delta for delta in (-2, -1, 1, 2) if value + delta >= 0]


def _problems(layouts: Iterable[tuple[str, ...]]) -> list[Problem]:
    return [Problem(tuple(tiles), *question) for tiles in layouts for question in QUESTIONS]


def _layout_pools(seed: int) -> dict[str, list[Problem]]:
    """Problems per split; splits get disjoint tile layouts, so no test image repeats a training one."""
    layouts = list(itertools.product(COLOURS, repeat=len(POSITIONS)))
    random.Random(f"{seed}:layouts").shuffle(layouts)
    return {
        "meta": _problems(layouts[:HELD_OUT_LAYOUTS]),
        "test": _problems(layouts[HELD_OUT_LAYOUTS : 2 * HELD_OUT_LAYOUTS]),
        "train": _problems(layouts[2 * HELD_OUT_LAYOUTS :]),
    }


def _sample_slip(
    problem: Problem, kinds: Sequence[str], rng: random.Random, weights: Mapping[str, float] | None = None
) -> Slip | None:
    """A (step, kind) pair among those the chain can carry, drawn with probability proportional to the
    kind's weight (uniform without weights); None when no step can carry any of ``kinds``."""
    options = [
        (step, kind) for step, slot in enumerate(solve(problem).slots) for kind in slot if kind in kinds
    ]
    odds = [1.0 if weights is None else float(weights.get(kind, 1.0)) for _, kind in options]
    if not options or sum(odds) <= 0:
        return None
    step, kind = rng.choices(options, weights=odds)[0]
    return Slip(step, kind, rng.randrange(1 << 16))


TEXT_KINDS = ("value", "arithmetic", "count", "answer")


def _write(problem: Problem, slip: Slip | None, cascade: float, rng: random.Random) -> Solution:
    """The chain with ``slip`` and, at each later step, with probability ``cascade`` another text-visible
    slip (a policy that has gone wrong tends to go on going wrong). Compounded slips that happen to
    land on the right final answer are dropped, so a chain is wrong exactly when it has a slip."""
    later = []
    if slip is not None and cascade > 0:
        for step, slot in enumerate(solve(problem).slots[slip.step + 1 :], start=slip.step + 1):
            kinds = [kind for kind in slot if kind in TEXT_KINDS]
            if kinds and rng.random() < cascade:
                later.append(Slip(step, rng.choice(kinds), rng.randrange(1 << 16)))
    solution = solve(problem, slip, style=rng, later=later)
    if later and solution.answer == problem.answer:
        solution = solve(problem, slip, style=rng)
    return solution


def _mc_values(n_steps: int, success: float, rollouts: int, rng: random.Random) -> list[float]:
    """Each prefix's Monte Carlo value as if it were correct: share of rollouts that reach the answer."""
    return [
        sum(rng.random() < success ** ((n_steps - 1 - step) / n_steps) for _ in range(rollouts)) / rollouts
        for step in range(n_steps)
    ]


def _mask(values: list[float], first_error: int) -> list[float]:
    """Labels of a chain whose first error is ``first_error``: no continuation of a wrong prefix is right."""
    if first_error < 0:
        return list(values)
    return values[:first_error] + [0.0] * (len(values) - first_error)


CORRUPTIONS = ("mixed", "false_positive")


def _corrupt(
    values: list[float], first_error: int, rng: random.Random, mode: str = "mixed"
) -> tuple[str, list[float]] | None:
    """Flipped labels, or the labels of another first error (or of none) that differ from the true ones;
    with ``mode="false_positive"`` the labels of no error, and None for a chain that has none."""
    if mode == "false_positive":
        return ("false_positive", list(values)) if first_error >= 0 else None
    true = _mask(values, first_error)
    if rng.random() < 0.5:
        return "flip", [1.0 - value for value in true]
    shifted = [_mask(values, step) for step in range(-1, len(values))]
    return "shift", rng.choice([labels for labels in shifted if labels != true])


def _draw(tiles: Sequence[str], size: int, rng: random.Random) -> Image.Image:
    """Flat colour patches, one per quadrant, jittered a little so no two images are identical."""
    grey = 235 + rng.randint(-12, 12)
    image = Image.new("RGB", (size, size), (grey, grey, grey))
    draw = ImageDraw.Draw(image)
    half, gap = size // 2, max(1, size // 28)
    for index, colour in enumerate(tiles):
        top, left = (index // 2) * half, (index % 2) * half
        fill = tuple(min(255, max(0, channel + rng.randint(-20, 20))) for channel in RGB[colour])
        draw.rectangle((left + gap, top + gap, left + half - 1 - gap, top + half - 1 - gap), fill=fill)
    return image


def _save_image(problem: Problem, relative: str, image_root: Path, size: int, rng: random.Random) -> str:
    path = image_root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    _draw(problem.tiles, size, rng).save(path, format="PNG")
    return relative


def _record_meta(problem: Problem, slip: Slip | None, solution: Solution) -> dict:
    return {
        "first_error": -1 if slip is None else slip.step,
        "error_kind": None if slip is None else slip.kind,
        "final_answer": str(solution.answer),
        "answer": str(problem.answer),
        "tiles": list(problem.tiles),
    }


@dataclass(frozen=True)
class DemoFiles:
    """Paths of one built demo benchmark; image paths in the records are relative to ``image_root``."""

    train: Path
    meta: Path
    test: Path
    image_root: Path
    manifest: Path

    @classmethod
    def in_dir(cls, directory: Path) -> DemoFiles:
        return cls(
            train=directory / "train.jsonl",
            meta=directory / "meta.jsonl",
            test=directory / "test.jsonl",
            image_root=directory / "images",
            manifest=directory / "manifest.json",
        )


class DemoBenchmark:
    """The demo benchmark for one set of parameters, built once into ``root/<hash of the parameters>/``.

    Arguments are plain values so Hydra can build it from a ``_target_`` config. ``train_per_domain``
    is one size for every domain or a mapping domain -> size. Building is atomic: files are written
    into a temporary folder that is renamed into place, so an interrupted build leaves no half cache.
    """

    def __init__(
        self,
        root: str | Path,
        seed: int = 0,
        train_per_domain: int | Mapping[str, int] = 300,
        meta_size: int = 120,
        test_problems: int = 60,
        n_candidates: int = 8,
        image_size: int = 56,
        domains: Sequence[str] = DEFAULT_DOMAINS,
        noise_rate: float = 0.4,
        rollouts: int = 16,
        error_rate: float = 0.5,
        success_min: float = 0.5,
        kind_weights: Mapping[str, float] | None = None,
        cascade: float = 1.0,
        corruption: str = "mixed",
        corrupted_kinds: Sequence[str] | None = None,
        domain_kind_weights: Mapping[str, Mapping[str, float]] | None = None,
        noisy_domains: Sequence[str] | None = None,
    ) -> None:
        domains = [str(domain) for domain in domains]
        unknown = [domain for domain in domains if domain not in DOMAIN_ERRORS]
        if not domains or unknown or len(set(domains)) != len(domains):
            raise ValueError(f"domains must be distinct names from {sorted(DOMAIN_ERRORS)}, got {domains}")
        if isinstance(train_per_domain, Mapping):
            sizes = {str(domain): int(size) for domain, size in train_per_domain.items()}
            if set(sizes) != set(domains):
                raise ValueError(f"train_per_domain names {sorted(sizes)} but domains are {domains}")
            sizes = {domain: sizes[domain] for domain in domains}
        else:
            sizes = {domain: int(train_per_domain) for domain in domains}
        capacity = HELD_OUT_LAYOUTS * len(QUESTIONS)
        checks = {
            "train_per_domain >= 0": min(sizes.values()) >= 0,
            "meta_size >= 0": meta_size >= 0,
            f"0 <= test_problems <= {capacity}": 0 <= test_problems <= capacity,
            "n_candidates >= 1": n_candidates >= 1,
            "image_size >= 8": image_size >= 8,
            "0 <= noise_rate <= 1": 0.0 <= noise_rate <= 1.0,
            "rollouts >= 1": rollouts >= 1,
            "0 <= error_rate <= 1": 0.0 <= error_rate <= 1.0,
            "0 <= success_min <= 1": 0.0 <= success_min <= 1.0,
            "0 <= cascade <= 1": 0.0 <= cascade <= 1.0,
            f"corruption in {CORRUPTIONS}": corruption in CORRUPTIONS,
            "kind_weights >= 0 with known kinds": kind_weights is None
            or (set(kind_weights) <= set(ERROR_KINDS) and min(map(float, kind_weights.values())) >= 0),
        }
        if corrupted_kinds is not None:
            corrupted_kinds = [str(kind) for kind in corrupted_kinds]
            checks[f"corrupted_kinds from {list(ERROR_KINDS)}"] = bool(corrupted_kinds) and set(
                corrupted_kinds
            ) <= set(ERROR_KINDS)
        domain_kind_weights = {
            str(domain): {str(kind): float(odds) for kind, odds in weights.items()}
            for domain, weights in (domain_kind_weights or {}).items()
        }
        checks["domain_kind_weights name training domains, known kinds, odds >= 0"] = all(
            domain in domains and set(weights) <= set(ERROR_KINDS) and min(weights.values(), default=0) >= 0
            for domain, weights in domain_kind_weights.items()
        )
        if noisy_domains is not None:
            noisy_domains = [str(domain) for domain in noisy_domains]
            checks["noisy_domains name training domains"] = set(noisy_domains) <= set(domains)
        failed = [rule for rule, ok in checks.items() if not ok]
        if failed:
            raise ValueError(f"demo benchmark parameters break: {', '.join(failed)}")
        self.root = Path(root).expanduser()
        self.params = {
            "generator_version": GENERATOR_VERSION,
            "seed": int(seed),
            "domains": domains,
            "train_per_domain": sizes,
            "meta_size": int(meta_size),
            "test_problems": int(test_problems),
            "n_candidates": int(n_candidates),
            "image_size": int(image_size),
            "noise_rate": float(noise_rate),
            "rollouts": int(rollouts),
            "error_rate": float(error_rate),
            "success_min": float(success_min),
            "cascade": float(cascade),
            "corruption": str(corruption),
            "kind_weights": {
                kind: float((kind_weights or DEFAULT_KIND_WEIGHTS).get(kind, 0.0)) for kind in ERROR_KINDS
            },
        }
        # Added only when set, so the benchmarks of earlier settings keep their hash (and cache).
        if corrupted_kinds is not None:
            self.params["corrupted_kinds"] = sorted(corrupted_kinds)
        if noisy_domains is not None and noisy_domains != ["noisy"]:
            self.params["noisy_domains"] = sorted(noisy_domains)
        if domain_kind_weights:
            self.params["domain_kind_weights"] = {
                domain: {kind: weights.get(kind, 0.0) for kind in ERROR_KINDS}
                for domain, weights in sorted(domain_kind_weights.items())
            }
        self.key = hashlib.sha1(json.dumps(self.params, sort_keys=True).encode()).hexdigest()[:12]
        self.directory = self.root / self.key

    @property
    def files(self) -> DemoFiles:
        """The built files (built on first use)."""
        return self.build()

    def build(self) -> DemoFiles:
        """Return the cached files, generating them first if no valid cache exists."""
        files = DemoFiles.in_dir(self.directory)
        if self._cached():
            return files
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.key}.", suffix=".tmp", dir=self.root))
        try:
            self._generate(DemoFiles.in_dir(tmp))
            tmp.chmod(0o755)
            if self.directory.exists() and not self._cached():
                shutil.rmtree(self.directory)  # a stale folder without a valid manifest
            try:
                os.rename(tmp, self.directory)
            except OSError:  # another process finished the same build first
                if not self._cached():
                    raise
                shutil.rmtree(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return files

    def _cached(self) -> bool:
        try:
            manifest = json.loads(DemoFiles.in_dir(self.directory).manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return manifest.get("params") == self.params

    def _generate(self, files: DemoFiles) -> None:
        p = self.params
        pools = _layout_pools(p["seed"])
        train = [
            chain
            for domain, size in p["train_per_domain"].items()
            for chain in self._train_domain(domain, size, pools["train"], files.image_root)
        ]
        meta = self._meta_chains(pools["meta"], files.image_root)
        test = self._test_problems(pools["test"], files.image_root)
        write_native(files.train, train)
        write_native(files.meta, meta)
        write_native(files.test, test)
        per_domain = {domain: [c for c in train if c.domain == domain] for domain in p["domains"]}
        correct = [sum(candidate.correct for candidate in problem.candidates) for problem in test]
        manifest = {
            "generator_version": GENERATOR_VERSION,
            "key": self.key,
            "params": p,
            "files": {name: getattr(files, name).name for name in ("train", "meta", "test", "image_root")},
            "counts": {
                "train": {domain: len(chains) for domain, chains in per_domain.items()},
                "meta": len(meta),
                "test_problems": len(test),
                "test_candidates": len(test) * p["n_candidates"],
            },
            "corrupted": {d: sum(c.meta["corrupted"] for c in cs) for d, cs in per_domain.items()},
            "incorrect": {
                "train": {d: sum(c.meta["first_error"] >= 0 for c in cs) for d, cs in per_domain.items()},
                "meta": sum(chain.label == 0 for chain in meta),
                "test_candidates": len(test) * p["n_candidates"] - sum(correct),
            },
            "test_problems_all_correct": correct.count(p["n_candidates"]),
            "test_problems_none_correct": correct.count(0),
        }
        atomic_write_text(files.manifest, json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    def _train_domain(self, domain: str, size: int, pool: list[Problem], image_root: Path) -> list[StepChain]:
        p = self.params
        rng = random.Random(f"{p['seed']}:train:{domain}")
        share = p["noise_rate"] if domain in p.get("noisy_domains", ["noisy"]) else 0.0
        corrupted = set(rng.sample(range(size), round(share * size)))
        kind_weights = p.get("domain_kind_weights", {}).get(domain, p["kind_weights"])
        corrupted_kinds = p.get("corrupted_kinds")
        chains = []
        for index in range(size):
            problem = rng.choice(pool)
            success = rng.uniform(p["success_min"], 1.0)
            wrong = rng.random() < p["error_rate"]
            slip = _sample_slip(problem, DOMAIN_ERRORS[domain], rng, kind_weights) if wrong else None
            solution = _write(problem, slip, p["cascade"], rng)
            record_meta = _record_meta(problem, slip, solution)
            values = _mc_values(len(solution.steps), success, p["rollouts"], rng)
            true_labels = _mask(values, record_meta["first_error"])
            corruption, labels = None, true_labels
            accepted = corrupted_kinds is None or record_meta["error_kind"] in corrupted_kinds
            if index in corrupted and accepted:
                corrupted_labels = _corrupt(values, record_meta["first_error"], rng, p["corruption"])
                if corrupted_labels is not None:
                    corruption, labels = corrupted_labels
            chain_id = f"{domain}-{index:05d}"
            chains.append(
                StepChain(
                    id=chain_id,
                    question=problem.question,
                    steps=solution.steps,
                    labels=labels,
                    images=[_save_image(problem, f"train/{chain_id}.png", image_root, p["image_size"], rng)],
                    domain=domain,
                    meta={
                        "corrupted": corruption is not None,
                        "corruption": corruption,
                        "true_labels": true_labels,
                        **record_meta,
                    },
                )
            )
        return chains

    def _meta_chains(self, pool: list[Problem], image_root: Path) -> list[LabelledChain]:
        p = self.params
        rng = random.Random(f"{p['seed']}:meta")
        labels = [1 - index % 2 for index in range(p["meta_size"])]
        rng.shuffle(labels)
        chains = []
        for index, label in enumerate(labels):
            problem = rng.choice(pool)
            slip = None if label else _sample_slip(problem, ERROR_KINDS, rng, p["kind_weights"])
            solution = _write(problem, slip, p["cascade"], rng)
            record_meta = _record_meta(problem, slip, solution)
            chain_id = f"meta-{index:05d}"
            chains.append(
                LabelledChain(
                    id=chain_id,
                    question=problem.question,
                    steps=solution.steps,
                    label=label,
                    images=[_save_image(problem, f"meta/{chain_id}.png", image_root, p["image_size"], rng)],
                    domain=EVAL_DOMAIN,
                    final_answer=record_meta["final_answer"],
                    first_error=record_meta["first_error"],
                    meta=record_meta,
                )
            )
        return chains

    def _test_problems(self, pool: list[Problem], image_root: Path) -> list[BestOfNProblem]:
        p = self.params
        rng = random.Random(f"{p['seed']}:test")
        count = p["test_problems"]
        problems = rng.sample(pool, count)
        # evenly spread success rates: some problems get no correct candidate, some only correct ones
        successes = [index / (count - 1) for index in range(count)] if count > 1 else [0.5] * count
        rng.shuffle(successes)
        records = []
        for index, (problem, success) in enumerate(zip(problems, successes)):
            typical = _sample_slip(
                problem, ERROR_KINDS, rng, p["kind_weights"]
            )  # the mistake wrong candidates tend to share
            shared = rng.random()
            candidates = []
            for _ in range(p["n_candidates"]):
                slip = None
                if rng.random() >= success:
                    slip = (
                        typical
                        if rng.random() < shared
                        else _sample_slip(problem, ERROR_KINDS, rng, p["kind_weights"])
                    )
                solution = _write(problem, slip, p["cascade"], rng)
                candidates.append(
                    Candidate(
                        steps=solution.steps,
                        final_answer=str(solution.answer),
                        correct=is_correct(str(solution.answer), str(problem.answer)),
                        first_error=-1 if slip is None else slip.step,
                    )
                )
            problem_id = f"test-{index:05d}"
            records.append(
                BestOfNProblem(
                    id=problem_id,
                    question=problem.question,
                    candidates=candidates,
                    images=[_save_image(problem, f"test/{problem_id}.png", image_root, p["image_size"], rng)],
                    domain=EVAL_DOMAIN,
                    answer=str(problem.answer),
                    meta={"tiles": list(problem.tiles), "success_rate": success, "shared_slip_rate": shared},
                )
            )
        return records


def build_demo(root: str | Path, **params) -> DemoFiles:
    """Build (or reuse) the demo benchmark under ``root``; ``params`` are :class:`DemoBenchmark`'s."""
    return DemoBenchmark(root, **params).build()


def corpus_text(seed: int = 0, chains: int = 2000) -> str:
    """Questions and steps of ``chains`` sampled chains (every error kind), one per line, for training a
    tokenizer offline on exactly the benchmark's vocabulary."""
    rng = random.Random(f"{seed}:corpus")
    pool = _problems(itertools.product(COLOURS, repeat=len(POSITIONS)))
    lines: list[str] = []
    for _ in range(chains):
        problem = rng.choice(pool)
        slip = None if rng.random() < 0.5 else _sample_slip(problem, ERROR_KINDS, rng)
        lines += [problem.question, *_write(problem, slip, 0.5, rng).steps]
    return "\n".join(lines) + "\n"
