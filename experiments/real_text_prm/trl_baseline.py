"""TRL's PRMTrainer on the same model, chains, truncation, batches and steps; scored by the suite's metric.

    python experiments/real_text_prm/trl_baseline.py --model DIR --data DIR --out DIR \\
        [--steps 150] [--batch 4] [--max-length 384] [--eval-max-length 2048] [--lr 2e-5] \\
        [--seed 0] [--precision bf16] [--threads N]

Training (trl 1.13.0, ``pip install '.[bench]'``): ``AutoModelForTokenClassification`` over the
model (2 labels, a new randomly initialised score layer, as TRL's PRM recipe does), float32
weights with bf16 autocast (``--precision bf16``), AdamW (weight decay 0.01), gradient clipping
1.0, cosine schedule with 5% warmup, ``--steps`` optimiser steps of ``--batch`` chains. The
training file is ``--data``/train.json (written by prepare.py, already fitted to
``--max-length`` in TRL's layout, so TRL truncates nothing); the prompt is the model's chat
template around the question (one user turn, generation prompt), steps separated by a newline,
the label on each step's last token, as TRL's ``tokenize_row`` builds it. The chains are fed in the
order this suite's seeded sampler draws them (same ``--seed``), so both trainers see the same
batches.

Scoring: every chain of ``test.json`` and ``threshold.json`` is laid out by TRL's own
``tokenize_row`` (at ``--eval-max-length``), and a step's score is the softmax probability of the
"correct" class at its label token. The ProcessBench threshold is chosen on threshold.json and
applied to test.json with the suite's own functions (``prm.evaluation.processbench``), exactly as
``evaluate.py ... processbench.threshold_split=threshold.json`` does for the suite's models. A
chain longer than ``--eval-max-length`` is an error (raise the limit): nothing is dropped.
Writes ``--out``/result.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from itertools import islice
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "experiments"))  # trl_prm.py: the PRMConfig shared with the benchmark


def suite_order(size: int, count: int, seed: int) -> list[int]:
    """The first ``count`` chain indices this suite's training sampler draws from ``size`` chains."""
    from prm.data.sampling import ResumableSampler

    return list(islice(iter(ResumableSampler(size, seed=seed)), count))


def train(args, tokenizer):
    import torch
    from datasets import Dataset
    from prepare import trl_prompt
    from transformers import AutoModelForTokenClassification
    from trl_prm import prm_config, prm_trainer_class

    model = AutoModelForTokenClassification.from_pretrained(
        args.model, num_labels=2, local_files_only=True, dtype=torch.float32
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    rows = json.loads((Path(args.data) / "train.json").read_text(encoding="utf-8"))
    order = suite_order(len(rows), args.steps * args.batch, args.seed)
    dataset = Dataset.from_list(
        [
            {
                "prompt": trl_prompt(tokenizer, rows[i]["prompt"]),
                "completions": rows[i]["completions"],
                "labels": rows[i]["labels"],
            }
            for i in order
        ]
    )
    use_cuda = torch.cuda.is_available()
    config = prm_config(
        Path(args.out) / "trainer",
        max_length=args.max_length,
        batch=args.batch,
        steps=args.steps,
        lr=args.lr,
        seed=args.seed,
        bf16=args.precision == "bf16",
        use_cpu=not use_cuda,
        warmup_steps=0.05,  # a float below 1: a share of the steps (the suite's schedule.warmup_ratio)
        optim="adamw_torch",  # torch.optim.AdamW, as the suite's train.optimizer
        logging_steps=10,
        disable_tqdm=False,
    )
    # the dataset is already in the suite's order: read it sequentially
    trainer = prm_trainer_class("file")(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer
    )
    start = time.perf_counter()
    output = trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    return model, {
        "train_seconds": time.perf_counter() - start,
        "train_loss": output.training_loss,
        "logged_losses": losses,
        "steps": trainer.state.global_step,
    }


def step_scores(model, tokenizer, records: list[dict], max_length: int, batch: int, precision: str):
    """P(correct) at every step's label token, TRL's layout; one tensor per record, in order."""
    import torch
    from prepare import trl_prompt
    from trl.experimental.prm import PRMTrainer

    rows = []
    for record in records:
        steps = [step.strip() for step in record["steps"]]
        features = {
            "prompt": trl_prompt(tokenizer, record["problem"]),
            "completions": steps,
            "labels": [True] * len(steps),
        }
        row = PRMTrainer.tokenize_row(features, tokenizer, "\n", max_length, None, False, True)
        positions = [i for i, label in enumerate(row["labels"]) if label != -100]
        if len(positions) != len(steps):
            raise ValueError(
                f"record id {record['id']!r}: {len(positions)} of {len(steps)} steps fit "
                f"--eval-max-length {max_length}; raise it"
            )
        rows.append((row["input_ids"], positions))
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    scores: list = [None] * len(rows)
    with torch.no_grad():
        for start in range(0, len(order), batch):
            chunk = order[start : start + batch]
            width = max(len(rows[i][0]) for i in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, i in enumerate(chunk):
                ids[r, : len(rows[i][0])] = torch.tensor(rows[i][0])
                mask[r, : len(rows[i][0])] = 1
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            probs = logits.float().softmax(-1)[..., 1].cpu()
            for r, i in enumerate(chunk):
                scores[i] = probs[r, rows[i][1]]
    return scores


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="prepare.py's output folder")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--eval-max-length", type=int, default=2048)
    parser.add_argument("--eval-batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

    import torch
    from transformers import AutoTokenizer

    from prm.evaluation.processbench import choose_threshold, processbench

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model, training = train(args, tokenizer)

    start = time.perf_counter()
    data = Path(args.data)
    splits = {
        name: json.loads((data / f"{name}.json").read_text(encoding="utf-8"))
        for name in ("threshold", "test")
    }
    scores = {
        name: step_scores(model, tokenizer, records, args.eval_max_length, args.eval_batch, args.precision)
        for name, records in splits.items()
    }
    threshold = choose_threshold(scores["threshold"], [r["label"] for r in splits["threshold"]])
    result = processbench(scores["test"], [r["label"] for r in splits["test"]], threshold)
    summary = {
        **result.to_dict(),
        "training": training,
        "eval_seconds": time.perf_counter() - start,
        "settings": {k: v for k, v in vars(args).items()},
    }
    (out / "result.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in summary.items() if k != "training"}, indent=1))
    return summary


if __name__ == "__main__":
    main()
