"""Training throughput of this suite against TRL's PRMTrainer on the same model and the same chains.

    python experiments/benchmarks/throughput.py [--data DIR] [--repeats 3] [--steps 30] [--batch 4]
                                                [--max-length 512] [--threads N] [--profile]

1. Builds offline, once (cached under ``--cache``): a byte-level BPE tokenizer of ``--vocab`` tokens
   trained with the ``tokenizers`` library on the ProcessBench gsm8k text (problems and steps), with
   a ChatML chat template and the suite's step marker as special tokens, and a randomly initialised
   Qwen2 causal LM (hidden 512, 4 layers, 8 heads, MLP 1024, tied embeddings: 11.5M parameters),
   both written with ``save_pretrained``.
2. Prepares the same examples for both trainers: ``--chains`` gsm8k chains (the file shuffled with a
   fixed seed; its erroneous chains come first), each cut after its first wrong step (TRL's stepwise
   supervision: prompt, completions, labels = True up to the first error, False at it), and trailing
   steps dropped until the chain fits ``--max-length`` tokens in *both* trainers' layouts, so neither
   trainer truncates anything and both train on exactly the same steps. TRL's prompt is the ChatML
   user turn the suite itself writes, so the two token streams differ only by the suite's step
   marker (one token per step). TRL gets the chains in the order the suite's sampler draws them, with
   a sequential sampler, so both see the same batches.
3. Runs the two trainers alternately, ``--repeats`` times each, each run in a fresh process with the
   same thread count: TRL 1.13.0's ``PRMTrainer`` (a ``Qwen2ForTokenClassification`` on the same
   weights, fp32, AdamW, no gradient checkpointing; skipped with a message when trl is absent) and
   this suite's ``train.py`` (``backbone.path=`` the model as a text backbone, ``data=trl``).
4. Prints real (non-pad) tokens/s and chains/s of each (steps 2..N: step 1 is warm-up), the
   suite/TRL ratio, and peak memory (the process's peak RSS on CPU, ``max_memory_allocated`` on CUDA).

``--full-last-layer`` adds a suite row with ``prm.last_layer=full`` (the last decoder layer at every
token, as TRL runs it), which isolates what computing it at the score positions only gains.

``--profile`` adds one profiled suite run (cProfile of ``train.py``) and the padding share of both
trainers' batches: where the suite's step time goes (collator, forward, backward, optimiser, the
Betty loop around them).

The data: ``--data <folder>`` or ``$PRM_PROCESSBENCH``, any folder with ProcessBench's ``gsm8k.json``
(QwenLM/ProcessBench ``dataset/gsm8k.json``, Apache-2.0).
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))  # trl_prm.py: the PRMConfig shared with real_text_prm

DEFAULT_DATA = os.environ.get("PRM_PROCESSBENCH")  # a folder with ProcessBench gsm8k.json
DEFAULT_CACHE = ROOT / "outputs" / "benchmarks" / "throughput"

# Model size (11.5M parameters with the 2,000-token vocabulary).
MODEL = dict(
    hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=8, intermediate_size=1024
)
STEP_MARKER = "<step>"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WARMUP_STEPS = 1  # steps left out of the rates (the first step builds the autograd/allocator caches)


# ---------------------------------------------------------------------------------------------------
# The suite's command line: every override name the benchmark uses is here (the config keys move).
def suite_overrides(args, model_dir: Path, train_file: Path, meta_file: Path, run_dir: Path) -> list[str]:
    """``train.py`` overrides of one benchmark run (lr under ``train.optimizer.lr`` once that exists)."""
    from omegaconf import OmegaConf

    base = OmegaConf.load(ROOT / "conf" / "config.yaml")
    lr_key = "train.optimizer.lr" if OmegaConf.select(base, "train.optimizer") is not None else "train.lr"
    return [
        "backbone=tiny_qwen2",
        f"backbone.path={model_dir}",
        "data=trl",
        f"data.train={train_file}",
        f"data.meta={meta_file}",
        f"data.batch_size={args.batch}",
        f"data.max_length={args.max_length}",
        f"train.steps={args.steps}",
        f"{lr_key}={args.lr}",
        "train.validate_every=0",
        "train.save_every=0",
        f"train.device={args.device}",
        "train.precision=fp32",
        f"seed={args.seed}",
        "logger=jsonl",
        f"hydra.run.dir={run_dir}",
    ]


def speed_overrides(args) -> list[str]:
    """The suite's speed options of a benchmark run (``--no-speed``: none, the plain padded loader)."""
    if not getattr(args, "speed", False):  # callers without the option: the plain suite
        return []
    return [
        "data.group_by_length=true",
        f"data.length_window={args.length_window}",
        "data.packing=true",
        "+train.optimizer.fused=true",
    ]


def suite_order(args, model_dir: Path, train: list[dict]) -> list[int]:
    """The order in which the suite's sampler draws the training chains (its first epoch): seeded
    shuffle, length-grouped with the speed options (the TRL run gets the same batches)."""
    from itertools import islice

    from prm.data.sampling import LengthGroupedSampler, ResumableSampler

    if not getattr(args, "speed", False):  # callers without the option: the plain suite
        return list(islice(iter(ResumableSampler(len(train), seed=args.seed)), len(train)))
    from prm.data.dataset import chain_lengths
    from prm.data.records import StepChain
    from prm.model.backbones import build_backbone

    backbone = build_backbone(family="qwen2", path=str(model_dir))
    chains = [
        StepChain(id=c["id"], question=c["question"], steps=c["steps"], labels=c["labels"]) for c in train
    ]
    sampler = LengthGroupedSampler(
        chain_lengths(chains, backbone), args.batch, args.length_window, seed=args.seed
    )
    return list(islice(iter(sampler), len(train)))


FULL = ["prm.last_layer=full"]  # the --full-last-layer row: the whole last layer at every token
SUITE_TOKENS, SUITE_RATE = "prm/tokens", "throughput/tokens_per_s"  # metrics.jsonl keys per step
SUITE_CHAINS, SUITE_MEMORY = "prm/chains", "memory/peak_gb"


# ---------------------------------------------------------------------------------------------------
# Model and tokenizer
def gsm8k_records(data_dir: Path) -> list[dict]:
    path = Path(data_dir) / "gsm8k.json"
    if not path.is_file():
        raise FileNotFoundError(f"--data {data_dir}: no gsm8k.json there (ProcessBench's dataset/gsm8k.json)")
    return json.loads(path.read_text(encoding="utf-8"))


def build_model(data_dir: Path, model_dir: Path, vocab_size: int, seed: int) -> Path:
    """Train the BPE on gsm8k and save tokenizer + random Qwen2 under ``model_dir`` (once)."""
    if (model_dir / "config.json").is_file():
        return model_dir
    import torch
    from transformers import AddedToken, Qwen2Config, Qwen2ForCausalLM
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    from prm.model.tokenizer import train_bpe

    texts = [r["problem"] for r in gsm8k_records(data_dir)] + [
        s for r in gsm8k_records(data_dir) for s in r["steps"]
    ]
    specials = ["<|im_start|>", "<|im_end|>", STEP_MARKER]
    vocab, merges = train_bpe(texts, vocab_size=vocab_size - len(specials))
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges])
    tokenizer.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in specials], special_tokens=True
    )
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "right"
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **MODEL,
    )
    model = Qwen2ForCausalLM(config)
    tmp = model_dir.with_name(model_dir.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(model_dir)
    return model_dir


# ---------------------------------------------------------------------------------------------------
# Examples
def prepare_examples(args, model_dir: Path, out: Path) -> dict:
    """Write ``suite_train.json`` / ``trl_train.json`` (same chains, same steps) and ``meta.json``."""
    from transformers import AutoTokenizer

    from prm.model.chat import render_chain

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    records = gsm8k_records(args.data)
    random.Random(args.seed).shuffle(records)
    separator = tokenizer.encode("\n", add_special_tokens=False)

    def trl_prompt(question: str) -> str:
        messages = [{"role": "user", "content": question.strip()}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def lengths(question: str, steps: list[str]) -> tuple[int, int]:
        # TRL's tokenize_row: prompt ids + (step ids + separator ids) per step (no BOS in this tokenizer).
        trl = len(tokenizer(trl_prompt(question), add_special_tokens=False)["input_ids"])
        trl += sum(len(tokenizer(s, add_special_tokens=False)["input_ids"]) + len(separator) for s in steps)
        chain = render_chain(tokenizer, question, steps, STEP_MARKER, 0, multimodal=False)
        suite = len(tokenizer(chain, add_special_tokens=False)["input_ids"])
        return trl, suite

    chains, dropped = [], 0
    for record in records:
        first_error = record["label"]
        steps = [s.strip() for s in record["steps"]]
        steps = steps[: first_error + 1] if first_error >= 0 else steps
        labels = [True] * len(steps)
        if first_error >= 0:
            labels[-1] = False
        kept = len(steps)
        while kept and max(lengths(record["problem"], steps[:kept])) > args.max_length:
            kept -= 1
        if kept == 0:
            dropped += 1
            continue
        chains.append(
            {
                "id": str(record["id"]),
                "question": record["problem"],
                "steps": steps[:kept],
                "labels": labels[:kept],
                "cut": kept < len(steps),
                "record": record,
            }
        )
    train, meta = chains[: args.chains], chains[args.chains : args.chains + args.meta_chains]
    if len(train) < args.chains or not meta:
        raise ValueError(
            f"only {len(chains)} gsm8k chains fit {args.max_length} tokens; need {args.chains} + meta"
        )

    # The suite's training order (its seeded sampler), so TRL can be fed the same batches.
    order = suite_order(args, model_dir, train)

    def suite_record(c):
        return {"id": c["id"], "prompt": c["question"], "completions": c["steps"], "labels": c["labels"]}

    def trl_record(c):
        return {"prompt": trl_prompt(c["question"]), "completions": c["steps"], "labels": c["labels"]}

    out.mkdir(parents=True, exist_ok=True)
    write = lambda name, rows: (out / name).write_text(json.dumps(rows), encoding="utf-8")  # noqa: E731
    write("suite_train.json", [suite_record(c) for c in train])
    # The meta set needs chain labels (a TRL file has none): ProcessBench records, kept whole.
    write("meta.json", [{**c["record"], "steps": c["steps"]} for c in meta if not c["cut"]])
    write("trl_train.json", [trl_record(train[i]) for i in order])
    token_lengths = [lengths(c["question"], c["steps"]) for c in train]
    return {
        "train": len(train),
        "meta": len(meta),
        "cut": sum(c["cut"] for c in train),
        "dropped": dropped,
        "mean_tokens_trl": statistics.mean(t for t, _ in token_lengths),
        "mean_tokens_suite": statistics.mean(s for _, s in token_lengths),
        "max_tokens": max(max(pair) for pair in token_lengths),
    }


# ---------------------------------------------------------------------------------------------------
# Runs (each in its own process; peak RSS from wait4)
def run_child(command: list[str], env: dict, log_path: Path) -> tuple[int, int, float, float]:
    """Run ``command`` (output to ``log_path``); returns (exit status, peak RSS in kB, wall s, CPU s)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            raise
        process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_maxrss, time.perf_counter() - start, usage.ru_utime + usage.ru_stime


def child_env(args) -> dict:
    threads = str(args.threads)
    return {
        **os.environ,
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TRL_EXPERIMENTAL_SILENCE": "1",
    }


def run_suite(
    args,
    model_dir: Path,
    data_dir: Path,
    run_dir: Path,
    profile: Path | None = None,
    extra: list[str] | None = None,
    window: int = WARMUP_STEPS,
) -> dict:
    """One ``train.py`` run; rates over steps ``window + 1``.. (``extra``: more overrides, after the
    benchmark's own and the speed options)."""
    from prm.tracking import read_metrics

    overrides = suite_overrides(
        args, model_dir, data_dir / "suite_train.json", data_dir / "meta.json", run_dir
    )
    extra = speed_overrides(args) if extra is None else extra
    replaced = {o.split("=", 1)[0] for o in extra}
    overrides = [o for o in overrides if o.split("=", 1)[0] not in replaced] + extra
    ticks = run_dir.with_suffix(".ticks.json")
    if profile:
        command = [sys.executable, "-m", "cProfile", "-o", str(profile), "train.py"] + overrides
    else:  # train.py with a clock on Betty's step (see suite_worker)
        command = [
            sys.executable,
            __file__,
            "--worker",
            "suite",
            "--worker-dir",
            str(ticks),
            "--",
        ] + overrides
    status, rss_kb, wall, cpu = run_child(command, child_env(args), run_dir.with_suffix(".log"))
    if status != 0:
        raise RuntimeError(f"suite run failed ({status}); see {run_dir.with_suffix('.log')}")
    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if SUITE_TOKENS in r and SUITE_RATE in r]
    rows = sorted(rows, key=lambda r: r["step"])[window:]
    tokens = sum(r[SUITE_TOKENS] for r in rows)
    seconds = sum(r[SUITE_TOKENS] / r[SUITE_RATE] for r in rows)  # the suite's own step clock
    cpu_seconds = float("nan")
    if ticks.is_file():  # Betty's step ends, wall and process CPU clock (steps 2..N)
        marks = json.loads(ticks.read_text())
        seconds = marks[-1][0] - marks[window - 1][0]
        cpu_seconds = marks[-1][1] - marks[window - 1][1]
    memory_gb = max(r.get(SUITE_MEMORY, 0.0) for r in rows)
    on_cuda = args.device == "cuda" or (args.device == "auto" and _cuda())
    return {
        "tokens": tokens,
        "chains": sum(r.get(SUITE_CHAINS, args.batch) for r in rows),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_memory_gb": memory_gb if on_cuda else rss_kb / 1e6,
        "wall_s": wall,
        "cpu_s": cpu,
    }


def run_trl(args, model_dir: Path, data_dir: Path, run_dir: Path, order: str = "suite") -> dict:
    """One TRL PRMTrainer run in a fresh process; ``order``: ``suite`` (the suite's batches) or
    ``default`` (TRL's own random sampler, as users run it)."""
    result = run_dir / "result.json"
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        __file__,
        "--worker",
        "trl",
        "--worker-dir",
        str(run_dir),
        "--model-dir",
        str(model_dir),
    ]
    command += ["--train-file", str(data_dir / "trl_train.json"), f"--trl-order={order}"]
    command += _passthrough(args)
    status, rss_kb, wall, cpu = run_child(command, child_env(args), run_dir.with_suffix(".log"))
    if status != 0:
        raise RuntimeError(f"TRL run failed ({status}); see {run_dir.with_suffix('.log')}")
    out = json.loads(result.read_text())
    if out["peak_memory_gb"] is None:
        out["peak_memory_gb"] = rss_kb / 1e6
    out["wall_s"], out["cpu_s"] = wall, cpu
    return out


def _passthrough(args) -> list[str]:
    return [
        f"--steps={args.steps}",
        f"--batch={args.batch}",
        f"--max-length={args.max_length}",
        f"--lr={args.lr}",
        f"--seed={args.seed}",
        f"--device={args.device}",
        f"--threads={args.threads}",
    ]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def suite_worker(args, overrides: list[str]) -> None:
    """``train.py overrides`` in this process, timing the end of each of Betty's steps.

    Betty's ``Engine.train_step`` (one lower-level step: batch, forward, backward, optimiser) is
    wrapped to record (wall clock, process CPU clock) after it returns, before the suite's own
    validation/logging/saving; written as JSON to ``--worker-dir`` at exit.
    """
    import atexit
    import runpy

    import torch
    from betty.engine import Engine

    marks: list[tuple[float, float]] = []
    step = Engine.train_step

    def timed_step(self, *a, **k):
        result = step(self, *a, **k)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        marks.append((time.perf_counter(), time.process_time()))
        return result

    Engine.train_step = timed_step
    atexit.register(lambda: Path(args.worker_dir).write_text(json.dumps(marks)))
    sys.argv = [str(ROOT / "train.py"), *overrides]
    runpy.run_path(str(ROOT / "train.py"), run_name="__main__")


def trl_worker(args) -> None:
    """One TRL PRMTrainer run in this process; writes ``result.json`` into ``--worker-dir``."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForTokenClassification, AutoTokenizer, TrainerCallback
    from trl_prm import prm_config, prm_trainer_class

    torch.set_num_threads(args.threads)
    out = Path(args.worker_dir)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir, local_files_only=True)
    model = AutoModelForTokenClassification.from_pretrained(
        args.model_dir, num_labels=2, local_files_only=True
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    rows = json.loads(Path(args.train_file).read_text())
    dataset = Dataset.from_list(rows)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    config = prm_config(
        out / "trainer",
        max_length=args.max_length,
        batch=args.batch,
        steps=args.steps,
        lr=args.lr,
        seed=args.seed,
        use_cpu=not use_cuda,
        logging_steps=10**6,
        disable_tqdm=True,
    )

    batches: list[tuple[int, int]] = []  # (real tokens, padded tokens) per collated batch, in order
    times: list[tuple[float, float]] = []  # (wall, process CPU) at each step end

    class Timer(TrainerCallback):
        def on_step_end(self, _args, state, control, **kwargs):
            if use_cuda:
                torch.cuda.synchronize()
            times.append((time.perf_counter(), time.process_time()))

    # --trl-order suite: the suite's batches (the file is in the suite's sampling order, read
    # sequentially); default: TRL as users run it (the Trainer's seeded random sampler).
    trainer_class = prm_trainer_class("file" if args.trl_order == "suite" else "default")
    trainer = trainer_class(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[Timer()]
    )
    collate = trainer.data_collator

    def counting(features):
        batch = collate(features)
        batches.append((int(batch["attention_mask"].sum()), batch["input_ids"].numel()))
        return batch

    trainer.data_collator = counting
    if use_cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    steps = len(times)
    window = batches[WARMUP_STEPS:steps]
    result = {
        "tokens": sum(real for real, _ in window),
        "padded_tokens": sum(padded for _, padded in window),
        "chains": args.batch * len(window),
        "seconds": times[-1][0] - times[WARMUP_STEPS - 1][0],
        "cpu_seconds": times[-1][1] - times[WARMUP_STEPS - 1][1],
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if use_cuda else None,
        "steps": steps,
    }
    (out / "result.json").write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------------
# Profile
# (file suffix, function) -> label: cumulative seconds of each in the profile of one suite run.
PROFILE_LOOP = ("betty/engine.py", "run")  # Betty's loop: every step, plus the suite's final validation
PROFILE_VALIDATION = ("train.py", "validate")
PROFILE_PARTS = {
    ("prm/data/dataset.py", "__call__"): "collator (tokenise, pad, find markers)",
    ("prm/bilevel/lower.py", "training_step"): "forward + loss (PRM forward at the markers)",
    ("torch/autograd/__init__.py", "backward"): "backward",
    ("torch/optim/optimizer.py", "wrapper"): "optimiser step (AdamW)",
}


def profile_suite(args, model_dir: Path, data_dir: Path, work: Path) -> dict[str, float]:
    """Profile one suite run (cProfile of ``train.py``) and print where its training loop's time goes."""
    profile = work / "suite_profile.prof"
    run_suite(args, model_dir, data_dir, work / "profile-run", profile=profile)
    stats = pstats.Stats(str(profile))
    wanted = {PROFILE_LOOP: "loop", PROFILE_VALIDATION: "validation", **PROFILE_PARTS}
    found: dict[str, float] = {}
    for (filename, _line, name), (_cc, _nc, _tt, cumulative, _callers) in stats.stats.items():
        for (suffix, function), label in wanted.items():
            if filename.endswith(suffix) and name == function:
                found[label] = max(found.get(label, 0.0), cumulative)
    loop = found.get("loop", float("nan")) - found.get("validation", 0.0)
    print(
        f"\nWhere the suite's training time goes (cProfile of one {args.steps}-step run; "
        "profiling slows Python):"
    )
    print(f"| part | seconds | share of {args.steps} training steps |\n|---|---:|---:|")
    parts = 0.0
    for label in PROFILE_PARTS.values():
        seconds = found.get(label, float("nan"))
        parts += seconds
        print(f"| {label} | {seconds:.2f} | {seconds / loop:.1%} |")
    rest = loop - parts
    print(
        f"| the rest: Betty's step logic, sampler, metrics, progress bar | {rest:.2f} | {rest / loop:.1%} |"
    )
    print(f"| all training steps (Betty's loop without the final validation) | {loop:.2f} | 100% |")
    padding = suite_padding(args, model_dir, data_dir)
    print(
        f"\nPadding share of the first {args.steps} batches in the plain order (seeded shuffle, no "
        f"length grouping, padded to the longest chain): {padding:.1%}"
    )
    return {**found, "padding": padding}


def suite_padding(args, model_dir: Path, data_dir: Path) -> float:
    """The share of pad tokens in the suite's first ``steps`` training batches (its sampler, its collator)."""
    from itertools import islice

    from prm.data.dataset import ChainDataset, PRMCollator
    from prm.data.readers import read_trl
    from prm.data.sampling import ResumableSampler
    from prm.model.backbones import build_backbone

    backbone = build_backbone(family="qwen2", path=str(model_dir))
    chains = read_trl(data_dir / "suite_train.json")
    dataset = ChainDataset(chains, sorted({c.domain for c in chains}))
    collator = PRMCollator(backbone, args.max_length)
    order = list(islice(iter(ResumableSampler(len(chains), seed=args.seed)), args.steps * args.batch))
    real = padded = 0
    for start in range(0, len(order), args.batch):
        batch = collator([dataset[i] for i in order[start : start + args.batch]])
        mask = batch["inputs"]["attention_mask"]
        real, padded = real + int(mask.sum()), padded + mask.numel()
    return 1 - real / padded


# ---------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(DEFAULT_DATA) if DEFAULT_DATA else None,
        help="folder with ProcessBench gsm8k.json (default: $PRM_PROCESSBENCH; required)",
    )
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="model, tokenizer, examples, runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--chains", type=int, default=200)
    parser.add_argument("--meta-chains", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of each run (1: robust on a shared CPU)"
    )
    parser.add_argument("--profile", action="store_true", help="also profile one suite run")
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument(
        "--no-speed",
        dest="speed",
        action="store_false",
        help="run the suite without its speed options (length grouping, packing, fused AdamW)",
    )
    parser.add_argument("--length-window", type=int, default=64, help="data.length_window of the suite")
    parser.add_argument(
        "--bilevel",
        action="store_true",
        help="also bi-level step time and memory over plain (instance_table, domain_table, instance_net "
        "at unroll 1 and 5) beside the compute limit",
    )
    parser.add_argument("--bilevel-steps", type=int, default=30)
    parser.add_argument(
        "--bilevel-strategies", default="instance_table,domain_table,instance_net", help="comma-separated"
    )
    parser.add_argument("--unrolls", default="1,5", help="comma-separated unroll steps of --bilevel")
    parser.add_argument(
        "--best-of-n",
        action="store_true",
        help="also best-of-N candidates/s with and without prefix sharing (N=8, 256 image tokens per image)",
    )
    parser.add_argument(
        "--full-last-layer",
        action="store_true",
        help="also run the suite with prm.last_layer=full (the whole last layer at every token)",
    )
    parser.add_argument("--only", choices=["bilevel", "best-of-n"], help="run only that part")
    parser.add_argument("--worker", choices=["trl", "suite"], help=argparse.SUPPRESS)
    parser.add_argument("--worker-dir", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--train-file", help=argparse.SUPPRESS)
    parser.add_argument("--trl-order", choices=["suite", "default"], default="suite", help=argparse.SUPPRESS)
    parser.add_argument(
        "--trl-default",
        action="store_true",
        help="also run TRL with its own random sampler (as users run it) beside TRL fed the suite's batches",
    )
    argv = sys.argv[1:] if argv is None else argv
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if args.worker == "trl":
        return trl_worker(args)
    if args.worker == "suite":
        return suite_worker(args, overrides)
    if args.data is None:
        parser.error("--data <folder with ProcessBench gsm8k.json> (or $PRM_PROCESSBENCH) is required")

    model_dir = build_model(args.data, args.cache / f"qwen2-h512-l4-v{args.vocab}", args.vocab, args.seed)
    grouping = f"-grouped{args.length_window}" if args.speed else ""
    data_dir = args.cache / f"examples-{args.chains}-{args.max_length}-seed{args.seed}{grouping}"
    prepared = prepare_examples(args, model_dir, data_dir)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    print(
        f"model: Qwen2 hidden {config.hidden_size}, {config.num_hidden_layers} layers, "
        f"vocab {config.vocab_size} "
        f"({_parameters(model_dir) / 1e6:.1f}M parameters) at {model_dir}"
    )
    print(
        f"examples: {prepared['train']} gsm8k chains (+{prepared['meta']} meta), "
        f"{prepared['cut']} cut to fit {args.max_length} tokens, {prepared['dropped']} dropped; "
        f"mean tokens TRL {prepared['mean_tokens_trl']:.0f}, "
        f"suite {prepared['mean_tokens_suite']:.0f}, max {prepared['max_tokens']}"
    )
    try:
        import trl

        have_trl = not args.skip_trl
        print(f"trl {trl.__version__}")
    except ImportError:
        have_trl = False
        print("TRL is not installed: only the suite runs (pip install -e '.[bench]' for trl==1.13.0)")

    stamp = time.strftime("%Y%m%d-%H%M%S")
    print(f"suite options: {' '.join(speed_overrides(args)) or 'none (--no-speed)'}")
    if args.only == "bilevel" or args.bilevel:
        from bilevel_overhead import measure

        measure(
            args,
            model_dir,
            data_dir,
            args.cache / "runs" / f"{stamp}-bilevel",
            run_suite,
            speed_overrides(args),
        )
    if args.only == "best-of-n" or args.best_of_n:
        best_of_n(args)
    if args.only:
        return
    results: dict[str, list[dict]] = {"suite": [], "suite_full": [], "trl": [], "trl_default": []}
    names = ["trl", "suite"] + (["trl_default"] if args.trl_default else [])
    names += ["suite_full"] if args.full_last_layer else []
    for repeat in range(args.repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            if name.startswith("trl") and not have_trl:
                continue
            run_dir = args.cache / "runs" / f"{stamp}-{name}-{repeat}"
            if name == "suite":
                result = run_suite(args, model_dir, data_dir, run_dir)
            elif name == "suite_full":
                result = run_suite(args, model_dir, data_dir, run_dir, extra=speed_overrides(args) + FULL)
            else:
                order = "default" if name == "trl_default" else "suite"
                result = run_trl(args, model_dir, data_dir, run_dir, order)
            results[name].append(result)
            print(
                f"  {name:11s} repeat {repeat}: {result['tokens'] / result['seconds']:7.0f} tokens/s, "
                f"{result['chains'] / result['seconds']:5.2f} chains/s, "
                f"peak {result['peak_memory_gb']:.2f} GB, "
                f"{result['tokens'] / result['cpu_seconds']:7.0f} tokens per CPU-s "
                f"(run wall {result['wall_s']:.0f} s)",
                flush=True,
            )
    print_table(args, results)
    for name, label in (("trl", "the suite's batches"), ("trl_default", "its own random batches")):
        if results[name]:
            trl = results[name][0]
            print(f"Padding share of TRL's batches ({label}): {1 - trl['tokens'] / trl['padded_tokens']:.1%}")
    if args.profile:
        profile_suite(args, model_dir, data_dir, args.cache / "runs" / f"{stamp}-profile")


def best_of_n(args) -> None:
    """Best-of-N candidates/s with and without prefix sharing: ``best_of_n_speed.py`` beside this
    script (N=8, tiny Qwen2-VL, 448 px images: 256 image tokens each), when prefix sharing exists."""
    script = Path(__file__).with_name("best_of_n_speed.py")
    try:
        from prm.evaluation.scoring import score_chains_shared  # noqa: F401
    except ImportError:
        print("\nbest-of-N: prefix sharing (scoring.score_chains_shared) is not in this tree; skipped")
        return
    command = [sys.executable, str(script), "--n", "8", "--image-side", "448", "--repeats", "3"]
    command += ["--threads", str(args.threads)]
    print(f"\nbest-of-N, with and without prefix sharing: {' '.join(command[1:])}", flush=True)
    subprocess.run(command, cwd=ROOT, env=child_env(args), check=True)


def _parameters(model_dir: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        return sum(_prod(f.get_slice(key).get_shape()) for key in f.keys())


def _prod(shape) -> int:
    out = 1
    for n in shape:
        out *= n
    return out


def paired_ratios(runs: list[dict], against: list[dict]) -> list[float]:
    """Real tokens/s of ``runs[i]`` over ``against[i]``: the two trainers' runs of repeat ``i``."""
    return [(a["tokens"] / a["seconds"]) / (b["tokens"] / b["seconds"]) for a, b in zip(runs, against)]


def print_table(args, results: dict[str, list[dict]]) -> None:
    device = "cuda" if (args.device == "cuda" or (args.device == "auto" and _cuda())) else "cpu"
    memory = "max_memory_allocated" if device == "cuda" else "peak RSS"
    print(
        f"\nThroughput, {args.steps} steps at batch {args.batch}, max length {args.max_length}, "
        f"fp32, {device}, "
        f"{args.threads} threads; median of {args.repeats} alternating runs (steps 2..{args.steps}):"
    )
    print(
        f"| trainer | real tokens/s | chains/s | tokens per CPU-second | peak memory ({memory}, GB) "
        "| runs (tokens/s) |"
    )
    print("|---|---:|---:|---:|---:|---|")
    medians = {}
    labels = (
        ("trl_default", "TRL 1.13.0 PRMTrainer, its own random batches"),
        ("trl", "TRL 1.13.0 PRMTrainer, the suite's batches"),
        ("suite_full", "this suite, prm.last_layer=full"),
        ("suite", "this suite (train.py)"),
    )
    for name, label in labels:
        runs = results[name]
        if not runs:
            continue
        rates = [r["tokens"] / r["seconds"] for r in runs]
        chains = [r["chains"] / r["seconds"] for r in runs]
        per_cpu = [r["tokens"] / r["cpu_seconds"] for r in runs]
        medians[name] = (statistics.median(rates), statistics.median(chains), statistics.median(per_cpu))
        print(
            f"| {label} | {medians[name][0]:.0f} | {medians[name][1]:.2f} | {medians[name][2]:.0f} | "
            f"{max(r['peak_memory_gb'] for r in runs):.2f} | {', '.join(f'{x:.0f}' for x in rates)} |"
        )
    for name, against in (("trl_default", "TRL (its own batches)"), ("trl", "TRL (the suite's batches)")):
        if name in medians and "suite" in medians:
            print(
                f"\nsuite / {against}: {medians['suite'][0] / medians[name][0]:.2f}x real tokens/s, "
                f"{medians['suite'][1] / medians[name][1]:.2f}x chains/s, "
                f"{medians['suite'][2] / medians[name][2]:.2f}x tokens per CPU-second"
            )
            pairs = paired_ratios(results["suite"], results[name])
            print(
                f"  per repeat (runs of one repeat are minutes apart, so a drifting machine speed "
                f"mostly cancels): {', '.join(f'{r:.2f}' for r in pairs)}; "
                f"median {statistics.median(pairs):.2f}x, lowest {min(pairs):.2f}x"
            )
    if "suite_full" in medians and "suite" in medians:
        print(
            f"\nlast layer at the score positions only / full last layer: "
            f"{medians['suite'][0] / medians['suite_full'][0]:.2f}x real tokens/s"
        )


if __name__ == "__main__":
    main()
