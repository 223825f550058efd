"""Turn the real ProcessBench gsm8k/math files into PRM training chains and a held-out split by problem.

    python experiments/real_text_prm/prepare.py --out DIR [--data DIR] [--seed 0]
        [--test-problems 150] [--threshold-problems 100] [--meta-problems 40]
        [--model DIR --max-length 384]

ProcessBench records are ``id, generator, problem, steps, final_answer_correct, label`` with
``label`` the index of the first wrong step (-1: every step is right). Several records share a
problem (one per generator), so the split is made over distinct problems: the problem texts
(whitespace-normalised) are sorted, shuffled with ``--seed``, and the first ``--test-problems`` go
to the test split, the next ``--threshold-problems`` to the threshold split (where the ProcessBench
threshold is tuned), the next ``--meta-problems`` to the meta split (train.py's validation set),
and every other problem to training. No problem is in two splits.

Files written into ``--out`` (never into the repository):

- ``train.json``: training chains in TRL's stepwise-supervision format (``id, prompt, completions,
  labels``), which both this suite (``data=files``, detected as ``trl``) and TRL's PRMTrainer read:
  a chain keeps its steps up to and including the first wrong one, labelled ``true`` before it and
  ``false`` at it; a correct chain keeps every step, all ``true``.
- ``test.json``, ``threshold.json``, ``meta.json``: the held-out records unchanged (full chains with
  their first-error labels), ProcessBench format, so ``evaluate.py data=processbench`` applies.
- ``split.json``: counts per split, the seed, the input files' sha256, the fitting counts and (with
  ``--model``) the token count of the longest held-out chain.

With ``--model`` (a ``save_pretrained`` folder with a chat template) and ``--max-length``, every
training chain is cut to its longest prefix of whole steps that fits ``--max-length`` tokens both
in this suite's layout (the model's chat template, step marker ``<step>`` after each step) and in
TRL's (chat-template prompt, BOS, each step followed by a newline), so neither trainer truncates
anything and both train on the same steps. A chain cut before its wrong step keeps only correct
steps (labels all ``true``); a chain whose question alone does not fit is dropped. Both are counted
in ``split.json``. Everything is deterministic: the same inputs and flags give the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = os.environ.get("PRM_PROCESSBENCH")  # a folder with ProcessBench gsm8k.json, math.json
SUBSETS = ("gsm8k", "math")
STEP_MARKER = "<step>"
FIELDS = ("id", "problem", "steps", "label")

LengthFn = Callable[[str, list[str]], int]


def read_subset(path: Path, subset: str) -> list[dict]:
    """ProcessBench records of one file, each with ``subset`` added. Raises ValueError naming the file,
    record and field when a record lacks a field or has a first-error label outside its steps."""
    records = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of ProcessBench records")
    for index, record in enumerate(records):
        for field in FIELDS:
            if field not in record:
                raise ValueError(f"{path}: record {index}: missing field {field!r}")
        steps, label = record["steps"], record["label"]
        where = f"{path}: record {index} (id {record['id']!r})"
        if not (isinstance(steps, list) and steps and all(isinstance(x, str) and x.strip() for x in steps)):
            raise ValueError(f"{where}: field 'steps' must be a list of non-empty strings")
        if not isinstance(label, int) or not -1 <= label < len(steps):
            raise ValueError(f"{where}: field 'label' {label!r} outside [-1, {len(steps) - 1}]")
    return [{**record, "subset": subset} for record in records]


def problem_key(problem: str) -> str:
    """The key records are grouped by: the problem text with whitespace runs collapsed."""
    return " ".join(problem.split())


def split_by_problem(records: Sequence[dict], seed: int, counts: dict[str, int]) -> dict[str, list[dict]]:
    """Records grouped into the named splits of ``counts`` (number of distinct problems each, in
    order) plus ``train`` (every other problem). Problems are sorted, then shuffled with ``seed``;
    each split's records are shuffled with ``seed`` too (the source files put erroneous chains
    first). Raises ValueError when the counts ask for more problems than there are."""
    keys = sorted({problem_key(r["problem"]) for r in records})
    if sum(counts.values()) >= len(keys):
        raise ValueError(f"{sum(counts.values())} held-out problems asked for, only {len(keys)} exist")
    random.Random(seed).shuffle(keys)
    owner: dict[str, str] = {}
    start = 0
    for name, count in counts.items():
        for key in keys[start : start + count]:
            owner[key] = name
        start += count
    splits: dict[str, list[dict]] = {name: [] for name in [*counts, "train"]}
    for record in sorted(records, key=lambda r: (r["subset"], str(r["id"]))):
        splits[owner.get(problem_key(record["problem"]), "train")].append(record)
    for name, rows in splits.items():
        random.Random(f"{seed}-{name}").shuffle(rows)
    return splits


def training_chain(record: dict) -> dict:
    """One ProcessBench record as a TRL stepwise-supervision chain: steps up to and including the
    first wrong one (``labels`` true before it, false at it); every step, all true, when ``label``
    is -1. Steps are stripped of surrounding whitespace."""
    first_error = record["label"]
    steps = [step.strip() for step in record["steps"]]
    if first_error >= 0:
        steps = steps[: first_error + 1]
    labels = [True] * len(steps)
    if first_error >= 0:
        labels[-1] = False
    return {
        "id": _chain_id(record),
        "prompt": record["problem"],
        "completions": steps,
        "labels": labels,
    }


def _chain_id(record: dict) -> str:
    """The record's id, prefixed with its subset unless it already is (ProcessBench's ids are)."""
    record_id, subset = str(record["id"]), record["subset"]
    return record_id if record_id.startswith(f"{subset}-") else f"{subset}-{record_id}"


def fit_chain(chain: dict, lengths: Sequence[LengthFn], max_length: int) -> dict | None:
    """``chain`` cut to its longest prefix of whole steps whose every ``lengths`` measure is at most
    ``max_length`` tokens; None when not even one step fits."""
    keep = len(chain["completions"])
    while (
        keep and max(length(chain["prompt"], chain["completions"][:keep]) for length in lengths) > max_length
    ):
        keep -= 1
    if keep == 0:
        return None
    return {**chain, "completions": chain["completions"][:keep], "labels": chain["labels"][:keep]}


def model_lengths(model_dir: str | Path) -> tuple[LengthFn, LengthFn]:
    """Token counts of a chain in this suite's layout and in TRL's, with the model's tokenizer."""
    sys.path.insert(0, str(ROOT))
    from transformers import AddedToken, AutoTokenizer

    from prm.model.chat import render_chain

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    separator = len(tokenizer.encode("\n", add_special_tokens=False))
    bos = int(tokenizer.bos_token_id is not None)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    # The suite's copy of the tokenizer has the step marker as one special token (the backbone adds
    # it when it loads a checkpoint without it); TRL's copy is the checkpoint's own.
    marked = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    marked.add_tokens([AddedToken(STEP_MARKER, special=True, normalized=False)], special_tokens=True)

    def suite(question: str, steps: list[str]) -> int:
        text = render_chain(marked, question, steps, STEP_MARKER, 0, False)
        return len(marked(text, add_special_tokens=False)["input_ids"])

    def trl(question: str, steps: list[str]) -> int:
        prompt = trl_prompt(tokenizer, question)
        return bos + count(prompt) + sum(count(step) + separator for step in steps)

    return suite, trl


def trl_prompt(tokenizer, question: str) -> str:
    """TRL's prompt for a question: the model's chat template, one user turn, generation prompt."""
    messages = [{"role": "user", "content": question.strip()}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def prepare(
    data: str | Path,
    out: str | Path,
    seed: int = 0,
    test_problems: int = 150,
    threshold_problems: int = 100,
    meta_problems: int = 40,
    model: str | Path | None = None,
    max_length: int | None = None,
) -> dict:
    """Write train/test/threshold/meta files and ``split.json`` into ``out``; returns the summary.

    Raises FileNotFoundError when ``data`` lacks gsm8k.json or math.json, ValueError for a malformed
    record (file, record, field named) or impossible split counts.
    """
    data, out = Path(data), Path(out)
    records = []
    for subset in SUBSETS:
        path = data / f"{subset}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (ProcessBench's dataset/{subset}.json)")
        records += read_subset(path, subset)
    counts = {"test": test_problems, "threshold": threshold_problems, "meta": meta_problems}
    splits = split_by_problem(records, seed, counts)
    chains = [training_chain(record) for record in splits["train"]]
    fitted = dict(cut=0, cut_before_wrong_step=0, dropped=0, steps_dropped=0, held_out_max_tokens=None)
    if model is not None:
        if max_length is None:
            raise ValueError("--model needs --max-length")
        lengths = model_lengths(model)
        kept = []
        for chain in chains:
            fit = fit_chain(chain, lengths, max_length)
            if fit is None:
                fitted["dropped"] += 1
                continue
            cut = len(chain["completions"]) - len(fit["completions"])
            if cut:
                fitted["cut"] += 1
                fitted["steps_dropped"] += cut
                fitted["cut_before_wrong_step"] += int(not chain["labels"][-1])
            kept.append(fit)
        chains = kept
        fitted["held_out_max_tokens"] = max(  # the longest held-out chain in either layout
            length(r["problem"], [step.strip() for step in r["steps"]])
            for name in counts
            for r in splits[name]
            for length in lengths
        )
    out.mkdir(parents=True, exist_ok=True)

    def write(name: str, rows: list) -> None:
        lines = ",\n".join(json.dumps(row, ensure_ascii=False) for row in rows)  # one record a line
        (out / name).write_text(f"[\n{lines}\n]\n", encoding="utf-8")

    write("train.json", chains)
    for name in counts:
        write(f"{name}.json", [{k: v for k, v in r.items() if k != "subset"} for r in splits[name]])

    def describe(rows: list[dict]) -> dict:
        return {
            "problems": len({problem_key(r["problem"]) for r in rows}),
            "records": len(rows),
            "erroneous": sum(r["label"] >= 0 for r in rows),
            "correct": sum(r["label"] == -1 for r in rows),
            "gsm8k": sum(r["subset"] == "gsm8k" for r in rows),
            "math": sum(r["subset"] == "math" for r in rows),
        }

    summary = {
        "seed": seed,
        "inputs": {subset: _sha256(data / f"{subset}.json") for subset in SUBSETS},
        "splits": {name: describe(rows) for name, rows in splits.items()},
        "train_chains": {
            "chains": len(chains),
            "steps": sum(len(c["completions"]) for c in chains),
            "with_wrong_step": sum(not c["labels"][-1] for c in chains),
        },
        "fit": {"model": str(model) if model else None, "max_length": max_length, **fitted},
    }
    (out / "split.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (outside the repository)")
    parser.add_argument("--data", default=DEFAULT_DATA, required=not DEFAULT_DATA, help="ProcessBench folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-problems", type=int, default=150)
    parser.add_argument("--threshold-problems", type=int, default=100)
    parser.add_argument("--meta-problems", type=int, default=40)
    parser.add_argument("--model", default=None, help="model folder whose tokenizer fits the training chains")
    parser.add_argument("--max-length", type=int, default=None)
    args = parser.parse_args(argv)
    summary = prepare(
        args.data,
        args.out,
        args.seed,
        args.test_problems,
        args.threshold_problems,
        args.meta_problems,
        args.model,
        args.max_length,
    )
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
