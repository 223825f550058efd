"""The throughput benchmark's example preparation (experiments/benchmarks/throughput.py): both trainers
get the same chains, cut after the first wrong step, within the same token budget, in the same order."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from prm.data.readers import read_processbench, read_trl

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks" / "throughput.py"
spec = importlib.util.spec_from_file_location("throughput_benchmark", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

TINY = dict(
    hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64
)


def _records() -> list[dict]:
    words = "Natalia sold clips to 48 of her friends in April and then half as many in May".split()
    records = []
    for index in range(12):
        steps = [f"Step {k}: {' '.join(words[: 3 + (index + k) % 10])} = {k * 7}." for k in range(4)]
        if index == 11:  # far too long for the budget unless cut
            steps = [" ".join(words * 3) + f" {k}." for k in range(8)]
        label = [-1, 0, 1, 2, 3][index % 5] if index != 11 else -1
        records.append(
            {
                "id": f"gsm8k-{index}",
                "generator": "test",
                "problem": f"Problem {index}: how many clips did Natalia sell?",
                "steps": steps,
                "final_answer_correct": label == -1,
                "label": label,
            }
        )
    return records


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    data = root / "data"
    data.mkdir()
    (data / "gsm8k.json").write_text(json.dumps(_records()), encoding="utf-8")
    bench.MODEL = TINY
    model_dir = bench.build_model(data, root / "model", vocab_size=400, seed=0)
    args = SimpleNamespace(data=data, seed=0, max_length=96, chains=8, meta_chains=3)
    summary = bench.prepare_examples(args, model_dir, root / "examples")
    return SimpleNamespace(root=root, model_dir=model_dir, out=root / "examples", summary=summary, args=args)


def test_model_and_tokenizer_have_the_chat_template_and_the_step_marker(prepared):
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(prepared.model_dir, local_files_only=True)
    # the tiny corpus runs out of merges before 400; the model's vocabulary is the tokenizer's
    assert (
        256 < len(tokenizer) <= 400
        and len(tokenizer) == AutoConfig.from_pretrained(prepared.model_dir).vocab_size
    )
    assert len(tokenizer.encode("<step>", add_special_tokens=False)) == 1
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Q?"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n"


def test_both_files_hold_the_same_chains_cut_after_the_first_error(prepared):
    suite = json.loads((prepared.out / "suite_train.json").read_text())
    trl = json.loads((prepared.out / "trl_train.json").read_text())
    assert len(suite) == len(trl) == 8
    # TRL's file is the suite's file in the order the suite's sampler draws it.
    from itertools import islice

    from prm.data.sampling import ResumableSampler

    order = list(islice(iter(ResumableSampler(8, seed=0)), 8))
    assert [r["completions"] for r in trl] == [suite[i]["completions"] for i in order]
    assert [r["labels"] for r in trl] == [suite[i]["labels"] for i in order]
    by_id = {r["id"]: r for r in _records()}
    for row in suite:
        record = by_id[row["id"]]
        first_error = record["label"]
        # steps up to and including the first wrong one, labelled False there; trailing steps dropped to fit
        full = [True] * first_error + [False] if first_error >= 0 else [True] * len(record["steps"])
        assert 1 <= len(row["labels"]) <= len(full) and row["labels"] == full[: len(row["labels"])]
        assert row["completions"] == [step.strip() for step in record["steps"][: len(row["labels"])]]
    kept_whole = [row for row in suite if by_id[row["id"]]["label"] >= 0 and row["labels"][-1] is False]
    assert kept_whole  # at least one wrong chain kept its wrong step
    assert all(row["prompt"] == by_id[row["id"]]["problem"] for row in suite)
    for position, row in enumerate(trl):  # TRL's prompt: the suite's own ChatML user turn of that problem
        question = suite[order[position]]["prompt"]
        assert row["prompt"] == f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def test_no_trainer_truncates_a_prepared_chain(prepared):
    from transformers import AutoTokenizer

    from prm.model.chat import render_chain

    tokenizer = AutoTokenizer.from_pretrained(prepared.model_dir, local_files_only=True)
    assert prepared.summary["cut"] >= 1  # the long chain lost trailing steps
    assert prepared.summary["max_tokens"] <= prepared.args.max_length
    for chain in read_trl(prepared.out / "suite_train.json"):
        text = render_chain(tokenizer, chain.question, chain.steps, "<step>", 0, multimodal=False)
        assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= prepared.args.max_length
    meta = read_processbench(prepared.out / "meta.json")
    assert len(meta) >= 1 and all(chain.label in (0, 1) for chain in meta)


def test_trl_tokenises_every_step_label_without_truncation(prepared):
    pytest.importorskip("trl")
    from transformers import AutoTokenizer
    from trl.experimental.prm import PRMTrainer

    tokenizer = AutoTokenizer.from_pretrained(prepared.model_dir, local_files_only=True)
    for row in json.loads((prepared.out / "trl_train.json").read_text()):
        limit = prepared.args.max_length
        full = PRMTrainer.tokenize_row(row, tokenizer, "\n", None, None, False, False)
        cut = PRMTrainer.tokenize_row(row, tokenizer, "\n", limit, None, False, False)
        assert full == cut and len(full["input_ids"]) <= limit
        assert [label for label in full["labels"] if label != -100] == [int(x) for x in row["labels"]]


def test_suite_overrides_name_the_learning_rate_key_of_this_checkout(tmp_path):
    from omegaconf import OmegaConf

    args = SimpleNamespace(batch=4, max_length=512, steps=30, lr=1e-3, device="cpu", seed=0)
    overrides = bench.suite_overrides(
        args, tmp_path, tmp_path / "t.json", tmp_path / "m.json", tmp_path / "run"
    )
    base = OmegaConf.load(SCRIPT.parents[2] / "conf" / "config.yaml")
    key = "train.optimizer.lr" if OmegaConf.select(base, "train.optimizer") is not None else "train.lr"
    assert f"{key}=0.001" in overrides
    assert "data=trl" in overrides and "data.batch_size=4" in overrides and "train.steps=30" in overrides


def test_table_prints_medians_and_per_repeat_ratios(capsys):
    def run(tokens_per_s):
        seconds = {"seconds": 10.0, "cpu_seconds": 10.0}
        return {"tokens": tokens_per_s * 10, "chains": 10, "peak_memory_gb": 1, **seconds}

    results = {
        "suite": [run(900), run(1000), run(1200)],
        "suite_full": [],
        "trl": [],
        "trl_default": [run(600), run(500), run(1000)],
    }
    assert bench.paired_ratios(results["suite"], results["trl_default"]) == pytest.approx([1.5, 2.0, 1.2])
    args = SimpleNamespace(device="cpu", steps=30, batch=4, max_length=512, threads=1, repeats=3)
    bench.print_table(args, results)
    out = capsys.readouterr().out
    assert "| this suite (train.py) | 1000 |" in out
    assert "suite / TRL (its own batches): 1.67x real tokens/s" in out  # 1000 / 600
    assert "1.50, 2.00, 1.20; median 1.50x, lowest 1.20x" in out
