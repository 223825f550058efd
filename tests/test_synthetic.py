"""The demo benchmark: deterministic, cached atomically, and its labels say what its steps do."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from prm.data import synthetic
from prm.data.native import read_native
from prm.data.records import BestOfNProblem, LabelledChain, StepChain
from prm.data.synthetic import COLOURS, POSITIONS, REGIONS, RGB, WORTH, DemoBenchmark, build_demo, corpus_text

SMALL = dict(train_per_domain=40, meta_size=12, test_problems=10, n_candidates=6)


def digest(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def first_wrong_step(question: str, steps: list[str], tiles: list[str]) -> tuple[int, int]:
    """An independent checker: the first step that contradicts the image, the worth table, arithmetic or
    the steps before it (-1 if none), and the true answer of the question."""
    region = re.search(r"tiles in the (.+)\?", question)
    if region:
        answer = sum(WORTH[tiles[tile]] for tile in REGIONS[region.group(1)])
    else:
        count_question = re.fullmatch(r"How many tiles are (\w+)\? Multiply that number by (\d)\.", question)
        colour, factor = count_question.groups()
        answer = tiles.count(colour) * int(factor)
    stated_colours: list[str] = []
    last = None
    for index, step in enumerate(steps):
        read = (
            re.fullmatch(r"The (?P<pos>\w+ \w+) tile is (?P<colour>\w+)(?:, worth (?P<worth>\d))?\.", step)
            or re.fullmatch(r"(?P<pos>\w+ \w+) tile: (?P<colour>\w+)(?:, worth (?P<worth>\d))?\.", step)
            or re.fullmatch(
                r"I see a (?P<colour>\w+) tile at the (?P<pos>\w+ \w+)(?:, worth (?P<worth>\d))?\.", step
            )
        )
        count = re.fullmatch(
            r"(?:So|Counting:|That makes) (\d) (?:tiles? (?:is|are) )?(\w+)(?: tiles?)?\.", step
        )
        if read:
            position, colour, worth = read.group("pos").lower(), read.group("colour"), read.group("worth")
            stated_colours.append(colour)
            last = int(worth) if worth else None
            ok = tiles[POSITIONS.index(position)] == colour and (worth is None or int(worth) == WORTH[colour])
        elif count:
            last = int(count.group(1))
            ok = last == stated_colours.count(count.group(2))
        elif sums := re.fullmatch(r"(?:Adding: |Multiplying: |So )?(\d+) ([+x]) (\d+) = (\d+)\.", step):
            a, op, b, result = sums.groups()
            ok = (int(a) + int(b) if op == "+" else int(a) * int(b)) == int(result)
            last = int(result)
        else:
            final = re.fullmatch(r"Final answer: (\d+)", step)
            assert final and index == len(steps) - 1, step
            ok = int(final.group(1)) == last
        if not ok:
            return index, answer
    return -1, answer


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> synthetic.DemoFiles:
    return build_demo(tmp_path_factory.mktemp("demo"), seed=3, **SMALL)


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not(small, tmp_path):
    again = build_demo(tmp_path / "a", seed=3, **SMALL)
    other = build_demo(tmp_path / "b", seed=4, **SMALL)
    reference = digest(small.manifest.parent)
    assert len(reference) == 3 * 40 + 12 + 10 + 4  # images + three JSONL files + manifest
    assert digest(again.manifest.parent) == reference
    changed = digest(other.manifest.parent)
    assert changed["train.jsonl"] != reference["train.jsonl"]
    assert changed["test.jsonl"] != reference["test.jsonl"]
    assert changed["images/train/clean-00000.png"] != reference["images/train/clean-00000.png"]


def test_records_read_back_with_counts_and_images(small):
    train, meta, test = read_native(small.train), read_native(small.meta), read_native(small.test)
    assert all(isinstance(r, StepChain) for r in train)
    assert all(isinstance(r, LabelledChain) for r in meta)
    assert all(isinstance(r, BestOfNProblem) for r in test)
    assert {d: sum(c.domain == d for c in train) for d in ("clean", "noisy", "easy")} == dict.fromkeys(
        ("clean", "noisy", "easy"), 40
    )
    assert len(meta) == 12 and len(test) == 10
    ids = [r.id for r in train + meta + test]
    assert len(ids) == len(set(ids))
    for record in train + meta + test:
        assert len(record.images) == 1 and not Path(record.images[0]).is_absolute()
        assert (small.image_root / record.images[0]).is_file()


def test_images_show_the_tiles_the_steps_read(small):
    for chain in read_native(small.train)[:20]:
        image = Image.open(small.image_root / chain.images[0]).convert("RGB")
        size = image.width
        for index, colour in enumerate(chain.meta["tiles"]):
            centre = ((index % 2) * size // 2 + size // 4, (index // 2) * size // 2 + size // 4)
            pixel = image.getpixel(centre)
            nearest = min(COLOURS, key=lambda c: sum((a - b) ** 2 for a, b in zip(RGB[c], pixel)))
            assert nearest == colour


def test_first_error_and_labels_match_what_the_steps_do(small):
    for chain in read_native(small.train):
        first_error, answer = first_wrong_step(chain.question, chain.steps, chain.meta["tiles"])
        assert chain.meta["first_error"] == first_error
        assert chain.meta["answer"] == str(answer)
        assert (chain.meta["final_answer"] == str(answer)) == (first_error == -1)
        true = chain.meta["true_labels"]
        assert len(true) == len(chain.steps)
        if first_error >= 0:
            assert all(label == 0.0 for label in true[first_error:])
        else:
            assert true[-1] == 1.0  # every rollout from the complete correct chain is right
        if not chain.meta["corrupted"]:
            assert chain.labels == true
        if chain.domain == "easy":
            assert chain.meta["error_kind"] != "misread"


def test_noisy_domain_corrupts_its_share_and_only_it(tmp_path):
    files = build_demo(tmp_path, seed=1, train_per_domain=100, meta_size=2, test_problems=2, noise_rate=0.3)
    train = read_native(files.train)
    noisy = [c for c in train if c.domain == "noisy"]
    corrupted = [c for c in noisy if c.meta["corrupted"]]
    assert abs(len(corrupted) / len(noisy) - 0.3) <= 0.02
    assert all(c.labels != c.meta["true_labels"] for c in corrupted)
    assert {c.meta["corruption"] for c in corrupted} == {"flip", "shift"}
    assert not any(c.meta["corrupted"] for c in train if c.domain != "noisy")
    assert all(c.labels == c.meta["true_labels"] for c in train if c.domain == "clean")


def test_false_positive_corruption_labels_wrong_chains_as_right(tmp_path):
    files = build_demo(
        tmp_path,
        seed=1,
        train_per_domain=100,
        meta_size=2,
        test_problems=2,
        noise_rate=0.5,
        corruption="false_positive",
    )
    noisy = [c for c in read_native(files.train) if c.domain == "noisy"]
    corrupted = [c for c in noisy if c.meta["corrupted"]]
    wrong = [c for c in noisy if c.meta["first_error"] >= 0]
    assert corrupted and all(c.meta["first_error"] >= 0 for c in corrupted)  # only wrong chains
    assert abs(len(corrupted) / len(wrong) - 0.5) <= 0.15
    for chain in corrupted:
        assert chain.meta["corruption"] == "false_positive"
        # the labels of no error: the MC values before the first error agree, and none is zeroed after it
        first = chain.meta["first_error"]
        assert chain.labels[:first] == chain.meta["true_labels"][:first]
        assert all(value > 0 for value in chain.labels[first:]) and chain.labels != chain.meta["true_labels"]
    with pytest.raises(ValueError, match="corruption"):
        DemoBenchmark(tmp_path, corruption="sometimes")


def test_a_labeller_that_accepts_one_kind_of_error(tmp_path):
    """demo_shift's harmful domain: its errors are all arithmetic and every one is labelled as right."""
    files = build_demo(
        tmp_path,
        seed=1,
        train_per_domain=60,
        meta_size=2,
        test_problems=2,
        noise_rate=1.0,
        corruption="false_positive",
        corrupted_kinds=["arithmetic"],
        domain_kind_weights={"noisy": {"arithmetic": 1.0}},
    )
    train = read_native(files.train)
    noisy = [c for c in train if c.domain == "noisy"]
    wrong = [c for c in noisy if c.meta["first_error"] >= 0]
    assert wrong and {c.meta["error_kind"] for c in wrong} == {"arithmetic"}
    assert [c.id for c in noisy if c.meta["corrupted"]] == [c.id for c in wrong]  # every one, only them
    assert all(all(value > 0 for value in c.labels) for c in wrong)
    # the other domains keep the default odds of every kind, and their true labels
    assert len({c.meta["error_kind"] for c in train if c.domain == "clean"} - {None}) >= 4
    assert not any(c.meta["corrupted"] for c in train if c.domain != "noisy")
    manifest = json.loads(files.manifest.read_text())
    assert manifest["corrupted"] == {"clean": 0, "noisy": len(wrong), "easy": 0}
    assert manifest["params"]["corrupted_kinds"] == ["arithmetic"]
    assert manifest["params"]["domain_kind_weights"]["noisy"]["value"] == 0.0
    # unset, they leave the parameters (and so the cache key of earlier benchmarks) as they were
    assert "corrupted_kinds" not in DemoBenchmark(tmp_path).params
    with pytest.raises(ValueError, match="corrupted_kinds"):
        DemoBenchmark(tmp_path, corrupted_kinds=["typo"])
    with pytest.raises(ValueError, match="domain_kind_weights"):
        DemoBenchmark(tmp_path, domain_kind_weights={"visual": {"misread": 1.0}})


def test_meta_labels_follow_first_error(small):
    meta = read_native(small.meta)
    assert sum(chain.label for chain in meta) == len(meta) // 2
    for chain in meta:
        first_error, answer = first_wrong_step(chain.question, chain.steps, chain.meta["tiles"])
        assert chain.first_error == first_error
        assert chain.label == int(first_error == -1) == int(chain.final_answer == str(answer))


def test_best_of_n_candidates_are_scored_against_the_answer(small, tmp_path):
    for problem in read_native(small.test):
        assert len(problem.candidates) == 6
        for candidate in problem.candidates:
            first_error, answer = first_wrong_step(problem.question, candidate.steps, problem.meta["tiles"])
            assert problem.answer == str(answer)
            assert candidate.first_error == first_error
            assert candidate.correct == (candidate.final_answer == problem.answer) == (first_error == -1)
    problems = read_native(build_demo(tmp_path, train_per_domain=1, meta_size=0, test_problems=60).test)
    correct = [sum(c.correct for c in problem.candidates) for problem in problems]
    assert 0 in correct and 8 in correct and any(0 < n < 8 for n in correct)
    wrong_answers = [[c.final_answer for c in problem.candidates if not c.correct] for problem in problems]
    assert any(len(set(answers)) < len(answers) for answers in wrong_answers)  # shared wrong answers
    assert any(len(set(answers)) == len(answers) > 1 for answers in wrong_answers)  # scattered ones


def test_meta_and_test_layouts_are_held_out_of_training(small):
    layouts = {
        name: {tuple(r.meta["tiles"]) for r in read_native(path)}
        for name, path in (("train", small.train), ("meta", small.meta), ("test", small.test))
    }
    assert not layouts["train"] & layouts["meta"]
    assert not layouts["train"] & layouts["test"]
    assert not layouts["meta"] & layouts["test"]


def test_second_build_reuses_the_cache(tmp_path):
    first = build_demo(tmp_path, **SMALL)
    stamps = {path: path.stat().st_mtime_ns for path in first.manifest.parent.rglob("*")}
    second = DemoBenchmark(tmp_path, **SMALL).build()
    assert second == first
    assert {path: path.stat().st_mtime_ns for path in first.manifest.parent.rglob("*")} == stamps
    assert [p.name for p in tmp_path.iterdir()] == [first.manifest.parent.name]  # no temporary folder left
    assert DemoBenchmark(tmp_path, **{**SMALL, "seed": 1}).directory != first.manifest.parent


def test_interrupted_build_leaves_no_cache(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "write_native", fail)
    with pytest.raises(KeyboardInterrupt):
        build_demo(tmp_path, **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_manifest_counts(small):
    manifest = json.loads(small.manifest.read_text())
    assert manifest["counts"]["train"] == {"clean": 40, "noisy": 40, "easy": 40}
    assert manifest["corrupted"] == {"clean": 0, "noisy": 16, "easy": 0}
    assert manifest["params"]["seed"] == 3 and manifest["generator_version"] == synthetic.GENERATOR_VERSION


def test_bad_parameters_are_refused(tmp_path):
    with pytest.raises(ValueError, match="domains"):
        DemoBenchmark(tmp_path, domains=["clean", "muddy"])
    with pytest.raises(ValueError, match="train_per_domain"):
        DemoBenchmark(tmp_path, train_per_domain={"clean": 3})
    with pytest.raises(ValueError, match="noise_rate"):
        DemoBenchmark(tmp_path, noise_rate=1.5)


def test_hydra_instantiate_and_per_domain_sizes(tmp_path):
    instantiate = pytest.importorskip("hydra.utils").instantiate
    benchmark = instantiate(
        {
            "_target_": "prm.data.synthetic.DemoBenchmark",
            "root": str(tmp_path),
            "domains": ["clean", "visual"],
            "train_per_domain": {"clean": 5, "visual": 7},
            "meta_size": 2,
            "test_problems": 2,
        }
    )
    train = read_native(benchmark.files.train)
    assert [c.domain for c in train] == ["clean"] * 5 + ["visual"] * 7
    assert {c.meta["error_kind"] for c in train if c.domain == "visual"} <= {None, "misread"}


def test_corpus_text_is_deterministic_and_covers_the_templates():
    text = corpus_text(seed=0, chains=300)
    assert text == corpus_text(seed=0, chains=300) != corpus_text(seed=1, chains=300)
    for word in ("Final answer:", "worth", " x ", " + ", "tiles are", "whole grid", *COLOURS, *POSITIONS):
        assert word in text
