"""GPU check: throughput, memory and bf16 agreement of the real training and scoring paths, one table.

    python experiments/gpu_check.py [--size auto|real|tiny] [--rows ...] [--out DIR]

On a CUDA machine (``--size auto`` picks ``real``) each model is a randomly initialised model of the
published size, written once as a ``save_pretrained`` folder and loaded by the suite's own backbone
config (``conf/backbone/qwen2_vl_2b.yaml``, ``internvl3_1b.yaml``) with ``backbone.path``: Qwen2-VL-2B
(the DreamPRM backbone) and InternVL3-1B (the DreamPRM-1.5 backbone), with configs written below from
the published ``config.json`` values and the project's offline tokenizer (no weights, no download).
Without CUDA it runs the same rows on the tiny random backbones (``tiny_qwen2_vl``, ``tiny_internvl``)
in fp32, 4 steps of 4 chains, in about a minute on 2 CPU cores. The data is the demo benchmark
(``data=demo``; ``data.limit`` keeps ``steps x batch`` training chains, ``4 x batch`` meta chains and
``--test-problems`` best-of-8 problems).

Rows, per model (``--rows`` picks some; every row fails soft: an exception is reported in the status
column, the rest continue, and the exit status is 1 when any row failed or was skipped):

- ``plain``, ``domain_table``, ``instance_table``, ``instance_net``: ``--steps`` optimiser steps of
  ``reweight=<row>`` (``plain`` is ``reweight=none``) through the training recipe's named steps
  (``prm.training``: setup_model, setup_data, setup_problems, setup_engine, Betty's engine, finish),
  as ``train.py`` runs them but without checkpoints (a real-size model and its optimiser state would
  take longer to write than to train). The bi-level rows (these three and the ZeRO rows) run at
  each strategy's own ``reweight.hypergradient.unroll_steps`` (domain_table 1; instance_table and
  instance_net 10, so a check of fewer timed steps times no upper step of theirs and their ``vs
  plain`` is the weighted lower step alone), or at ``--unroll-steps`` (1: an upper step after every
  lower step, the whole bi-level cost per step);
- ``zero2``, ``zero3``: ``distributed=zero2|zero3 reweight=instance_table`` in a subprocess (DeepSpeed
  keeps a process group and its accelerator choice for the life of a process). Without a launcher
  the suite starts a process group of world size 1 from environment variables (prm/distributed.py):
  nccl on one GPU, gloo on CPU. Not run on CPU unless named in ``--rows`` (DeepSpeed's CPU path is slow
  to start);
- ``bon_shared``, ``bon_unshared``: best-of-N scoring of the test candidates with and without prefix
  sharing (``prm.evaluation.scoring.score_chains``, what evaluate.py runs), timed in ``--precision``
  (auto: bf16 on CUDA, fp32 on CPU, where bf16 autocast is slower) after one untimed problem, then
  scored again in the other precision for the agreement columns.

Columns:

- tokens/s: training rows: the lower level's training tokens (attention-mask sum of its batches, image
  tokens included) over the time of the timed steps: the first ``--warmup`` steps are left out, and
  so is the last one (it also validates on the meta set). Every step boundary waits for the device
  (``torch.cuda.synchronize``). Scoring rows: every candidate's full token count over the scoring time.
- MFU (model FLOPs utilisation) = k * N * T / t / peak, with k = 6 for a training step (forward 2,
  backward 4 FLOPs per parameter and token; Kaplan et al. 2020, "Scaling laws for neural language
  models", section 2.1) and k = 2 for scoring (forward only); N the parameters outside the token
  embedding and the LM head (the embedding is a lookup and the token head reads two rows of the LM
  head), the vision tower included; T tokens, t seconds; peak the GPU's dense bf16 TFLOP/s, looked up
  by device name (:data:`PEAK_BF16_TFLOPS`) or given with ``--peak-tflops``. It is the usual
  approximation: attention's own FLOPs are left out, and the vision tower really runs on the image
  patches, not on every token. Bi-level rows count the lower level's tokens only (the useful work),
  so their MFU falls by the hypergradient's overhead. With prefix sharing T still counts every
  candidate's full chain, so its MFU is an effective figure that can pass the hardware's.
- peak memory: ``torch.cuda.max_memory_allocated`` after ``torch.cuda.reset_peak_memory_stats`` at the
  start of the timed part of the row (model weights included); on CPU the process's peak resident
  memory so far (not resettable: it only grows across rows).
- s/step and vs plain: mean seconds per timed step (scoring rows: the whole scoring pass), and its
  ratio to the model's ``plain`` row: the bi-level (and DeepSpeed) over plain step-time ratio.
- max abs dp bf16-fp32: the largest difference between the step probabilities scored under bf16
  autocast and in fp32; pick agreement: the share of problems whose best-of-N pick (argmax of the
  ``aggregation`` config's chain score, ``mean`` by default) is the same in both.

Results go to ``<out>/gpu_check.md`` and ``<out>/gpu_check.json`` (rewritten after every row, so a run cut
short keeps what it measured), logs to ``<out>/logs/``; the table is printed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from betty.logging import get_logger as betty_logger  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForImageTextToText,
    InternVLConfig,
    PretrainedConfig,
    Qwen2VLConfig,
)

from prm.aggregation import pad_ragged  # noqa: E402
from prm.bilevel import hypergradient  # noqa: E402
from prm.config import validate_evaluate_config, validate_train_config  # noqa: E402
from prm.data.dataset import ChainDataset, PRMCollator, flatten_candidates  # noqa: E402
from prm.device import pick_device  # noqa: E402
from prm.evaluation.run import load_model, load_test  # noqa: E402
from prm.evaluation.scoring import score_chains  # noqa: E402
from prm.model.backbones import TinySize, build_backbone  # noqa: E402
from prm.training.problems import setup_engine, setup_problems  # noqa: E402
from prm.training.recipe import finish  # noqa: E402
from prm.training.run import TrainingRun  # noqa: E402
from prm.training.setup import (  # noqa: E402
    seed_everything,
    setup_data,
    setup_device,
    setup_model,
    setup_tracker,
)
from prm.training.validation import validate  # noqa: E402

log = logging.getLogger("gpu_check")
CONF = ROOT / "conf"

# Dense (no sparsity) bf16 tensor-core peak, TFLOP/s, from NVIDIA's data sheets; the first name that
# occurs in torch.cuda.get_device_name() wins, so the more specific names come first.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200 NVL", 835.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989.0),  # SXM, and GH200
    ("H800", 989.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("B200", 2250.0),
)
TRAINING_ROWS = ("plain", "domain_table", "instance_table", "instance_net")
DEEPSPEED_ROWS = ("zero2", "zero3")
SCORING_ROWS = ("bon_shared", "bon_unshared")
ALL_ROWS = TRAINING_ROWS + DEEPSPEED_ROWS + SCORING_ROWS
BILEVEL_ROWS = ("domain_table", "instance_table", "instance_net", "zero2", "zero3")  # get --unroll-steps
ROW_OVERRIDES = {
    "plain": ["reweight=none"],
    "domain_table": ["reweight=domain_table"],
    "instance_table": ["reweight=instance_table"],
    "instance_net": ["reweight=instance_net"],
    "zero2": ["distributed=zero2", "reweight=instance_table"],
    "zero3": ["distributed=zero3", "reweight=instance_table"],
}
FLOPS_PER_TOKEN_AND_PARAMETER = {"train": 6, "score": 2}
COLUMNS = (
    "model", "row", "status", "tokens/s", "MFU", "peak mem (GB)", "s/step", "vs plain",
    "max abs dp bf16-fp32", "pick agreement", "wall (s)",
)  # fmt: skip


# ------------------------------------------------------------------------------------ the models


def qwen2_vl_2b_config(tokenizer) -> Qwen2VLConfig:
    """Qwen2-VL-2B-Instruct's architecture (its published config.json: 1536 wide, 28 layers, 12 heads,
    2 key-value heads, MLP 8960, vocabulary 151936, tied embeddings, M-RoPE sections 16/24/24, rope
    theta 1e6; a 32-layer, 1280-wide vision tower), with the special-token ids of ``tokenizer``."""
    eos = tokenizer.eos_token_id
    return Qwen2VLConfig(
        text_config=dict(
            vocab_size=151936,
            hidden_size=1536,
            intermediate_size=8960,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
            hidden_act="silu",
            max_position_embeddings=32768,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
            bos_token_id=None,
            eos_token_id=eos,
            pad_token_id=eos,
        ),
        vision_config=dict(
            depth=32,
            embed_dim=1280,
            hidden_size=1536,
            mlp_ratio=4,
            num_heads=16,
            in_channels=3,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        tie_word_embeddings=True,
        image_token_id=tokenizer.image_token_id,
        video_token_id=tokenizer.video_token_id,
        vision_start_token_id=tokenizer.convert_tokens_to_ids(tokenizer.vision_start_token),
        vision_end_token_id=tokenizer.convert_tokens_to_ids(tokenizer.vision_end_token),
    )


def internvl3_1b_config(tokenizer) -> InternVLConfig:
    """InternVL3-1B-hf's architecture: InternViT-300M (1024 wide, 24 layers, 16 heads, MLP 4096, qkv
    bias, 448 px tiles of 14 px patches), a 0.5 pixel-shuffle projector (256 tokens per tile) and
    Qwen2.5-0.5B (896 wide, 24 layers, 14 heads, 2 key-value heads, MLP 4864, vocabulary 151674,
    untied embeddings: 938M parameters in all), with the image-token id of ``tokenizer``."""
    eos = tokenizer.eos_token_id
    return InternVLConfig(
        text_config=dict(
            model_type="qwen2",
            vocab_size=151674,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            hidden_act="silu",
            max_position_embeddings=32768,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6},
            bos_token_id=None,
            eos_token_id=eos,
            pad_token_id=eos,
        ),
        vision_config=dict(
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            intermediate_size=4096,
            attention_bias=True,
            use_qk_norm=False,
            norm_type="layer_norm",
            image_size=[448, 448],
            patch_size=[14, 14],
        ),
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=256,
        downsample_ratio=0.5,
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )


@dataclass(frozen=True)
class ModelSpec:
    """One model of the check: its suite backbone configs (real size and tiny) and its real config."""

    name: str
    family: str
    real_backbone: str  # conf/backbone/<name>.yaml that loads it from backbone.path
    tiny_backbone: str
    real_config: Callable[[Any], PretrainedConfig]  # (tokenizer) -> the published architecture
    image_size: int = 56  # TinySize.image_size of the processor built for the real size (InternVL's tile)


MODELS = {
    "qwen2_vl_2b": ModelSpec("qwen2_vl_2b", "qwen2_vl", "qwen2_vl_2b", "tiny_qwen2_vl", qwen2_vl_2b_config),
    "internvl3_1b": ModelSpec(
        "internvl3_1b", "internvl", "internvl3_1b", "tiny_internvl", internvl3_1b_config, image_size=448
    ),
}


def matmul_parameters(model: torch.nn.Module) -> int:
    """Parameters of ``model`` outside its input embedding and its LM head (each counted once when
    they are tied): the N of the MFU formula, see the module docstring."""
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    left_out = embedding.numel()
    if head is not None and head.weight is not embedding:
        left_out += head.weight.numel()
    return total - left_out


def compose_config(name: str, overrides: list[str]) -> DictConfig:
    """``conf/<name>.yaml`` composed with ``overrides``, as train.py / evaluate.py would (no Hydra run)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=overrides)


def materialise(spec: ModelSpec, size: str, device: str, directory: Path) -> tuple[str, dict]:
    """Write the model of ``spec`` as a ``save_pretrained`` folder in ``directory``; returns the
    backbone config name that loads it (with ``backbone.path=<directory>``) and its parameter counts.

    ``tiny``: the suite's tiny backbone config, instantiated and saved. ``real``: the published
    architecture (``spec.real_config``), randomly initialised in bf16 on ``device``, with the
    project's offline tokenizer in the processor the family's tiny builder makes, at the image
    settings of the real backbone config (``min_pixels`` / ``max_pixels`` for Qwen2-VL, a 448 px tile
    for InternVL). Counts: ``parameters`` (all) and ``matmul_parameters`` (:func:`matmul_parameters`).
    Errors of transformers (out of memory, disk full) pass through; the caller marks the model's rows."""
    directory.mkdir(parents=True, exist_ok=True)
    if size == "tiny":
        backbone = instantiate(compose_config("config", [f"backbone={spec.tiny_backbone}"]).backbone)
        backbone.save_pretrained(directory)
        model = backbone.model
        counts = dict(parameters=backbone.num_parameters(), matmul_parameters=matmul_parameters(model))
        return spec.tiny_backbone, counts
    settings = compose_config("config", [f"backbone={spec.real_backbone}", "backbone.path=unused"]).backbone
    processor = build_backbone(
        family=spec.family,
        tiny=TinySize(image_size=spec.image_size),
        min_pixels=settings.get("min_pixels", 56 * 56),
        max_pixels=settings.get("max_pixels", 112 * 112),
        chat_template="chatml",
    ).processor
    config = spec.real_config(processor.tokenizer)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    counts = dict(
        parameters=sum(p.numel() for p in model.parameters()), matmul_parameters=matmul_parameters(model)
    )
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    del model
    release_memory()
    return spec.real_backbone, counts


# ------------------------------------------------------------------------------------ measuring


def synchronize(device) -> None:
    """Wait for every kernel queued on ``device`` (CUDA); nothing to wait for on CPU."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def reset_peak_memory(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device) -> float:
    """``torch.cuda.max_memory_allocated`` on CUDA, else the process's peak resident memory, in GB."""
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kilobytes on Linux


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak TFLOP/s of a GPU from its name (:data:`PEAK_BF16_TFLOPS`); None if unknown."""
    for key, value in PEAK_BF16_TFLOPS:
        if key in device_name:
            return value
    return None


def mfu(kind: str, parameters: int, tokens: float, seconds: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation k * N * T / t / (peak * 1e12), k = 6 (``train``) or 2 (``score``);
    None when the peak is unknown. Raises ValueError for a non-positive time."""
    if seconds <= 0:
        raise ValueError(f"mfu: seconds must be > 0, got {seconds}")
    if peak is None:
        return None
    return FLOPS_PER_TOKEN_AND_PARAMETER[kind] * parameters * tokens / seconds / (peak * 1e12)


class StepClock:
    """Wraps the engine's ``log_metrics(metrics, step)``: at every optimiser step it waits for the
    device and records the time and the step's training tokens (``prm/tokens``), then logs."""

    def __init__(self, log_fn, device):
        self.log_fn, self.device = log_fn, device
        self.times: list[float] = []
        self.tokens: list[int] = []

    def start(self) -> None:
        synchronize(self.device)
        self.times = [time.perf_counter()]
        self.tokens = []

    def __call__(self, metrics: dict, step: int) -> None:
        synchronize(self.device)
        self.times.append(time.perf_counter())
        self.tokens.append(int(metrics.get("prm/tokens", 0)))
        if self.log_fn is not None:
            self.log_fn(metrics, step)


def timed_steps(times: list[float], tokens: list[int], warmup: int) -> tuple[int, float, int]:
    """(steps, seconds, tokens) of the timed steps of a run: ``times[0]`` is the start and
    ``times[k]`` the end of step k (k = 1..n), ``tokens[k - 1]`` the tokens of step k. Steps
    ``warmup + 1 .. n - 1`` are timed: the warm-up and the last step (which validates) are not.
    Raises ValueError when no step is left."""
    if len(times) != len(tokens) + 1:
        raise ValueError(f"{len(times)} times for {len(tokens)} steps: expected one more time than steps")
    last = len(tokens)
    steps = last - 1 - warmup
    if steps < 1:
        raise ValueError(
            f"{last} steps with {warmup} warm-up steps leave no timed step (the last one validates)"
        )
    return steps, times[last - 1] - times[warmup], sum(tokens[warmup : last - 1])


# ------------------------------------------------------------------------------------ the rows


@dataclass
class Row:
    """One line of the table; numbers are None where they do not apply."""

    model: str
    row: str
    status: str = "not run"
    tokens_per_s: float | None = None
    mfu: float | None = None
    peak_memory_gb: float | None = None
    step_s: float | None = None
    vs_plain: float | None = None
    max_abs_prob_diff: float | None = None
    pick_agreement: float | None = None
    wall_s: float | None = None
    details: dict = field(default_factory=dict)


def train_overrides(args, backbone: str, path: Path, row: str) -> list[str]:
    """The Hydra overrides of one training row: the written model, the row's reweighting (and ZeRO
    stage), steps, precision, batch size, the data subsets, no checkpoints, metrics to JSONL only."""
    return [
        f"backbone={backbone}",
        f"backbone.path={path}",
        *ROW_OVERRIDES[row],
        *(
            [f"reweight.hypergradient.unroll_steps={args.unroll_steps}"]
            if row in BILEVEL_ROWS and args.unroll_steps is not None
            else []
        ),
        f"train.steps={args.steps}",
        "train.validate_every=0",
        "train.save_every=0",
        f"train.precision={args.precision}",
        f"data.batch_size={args.batch_size}",
        f"data.limit={{train:{args.train_chains},meta:{args.meta_chains},test:{args.test_problems}}}",
        "logger=jsonl",
        *args.override,
    ]


def run_training(cfg: DictConfig, run_dir: Path, warmup: int) -> dict:
    """One training job through the recipe's named steps (``prm.training.recipe.train`` without resume
    and checkpoints), every optimiser step timed by a :class:`StepClock`. Returns the measurements:
    steps, seconds, tokens of the timed steps, peak memory (GB), parameter counts, final validation."""
    validate_train_config(cfg)
    seed_everything(cfg.seed)
    device, world = setup_device(cfg)
    hypergradient.register()
    tracker = setup_tracker(cfg, run_dir, world, None)
    try:
        run = TrainingRun(cfg, run_dir, device, world, tracker)
        setup_model(run)
        setup_data(run)
        setup_problems(run)
        setup_engine(run, validate=lambda step: validate(run, step), save=lambda step: None)
        clock = StepClock(run.engine.log_fn, device)
        run.engine.log_fn = clock
        reset_peak_memory(device)
        clock.start()
        run.engine.run()
        peak = peak_memory_gb(device)
        final = finish(run)
        steps, seconds, tokens = timed_steps(clock.times, clock.tokens, warmup)
        model = run.prm.backbone.model
        return dict(
            device=str(device),
            steps=steps,
            seconds=seconds,
            tokens=tokens,
            peak_memory_gb=peak,
            parameters=sum(p.numel() for p in model.parameters()),
            matmul_parameters=matmul_parameters(model),
            final_validation={k: v for k, v in final.items() if isinstance(v, int | float)},
        )
    finally:
        tracker.finish()


def fill_training(row: Row, measured: dict, peak: float | None) -> None:
    row.step_s = measured["seconds"] / measured["steps"]
    row.tokens_per_s = measured["tokens"] / measured["seconds"]
    row.mfu = mfu("train", measured["matmul_parameters"], measured["tokens"], measured["seconds"], peak)
    row.peak_memory_gb = measured["peak_memory_gb"]
    row.details.update(measured)


def run_isolated(args, overrides: list[str], run_dir: Path, log_file: Path) -> dict:
    """:func:`run_training` in a fresh process (``--worker``); its output goes to ``log_file``.
    Raises RuntimeError with the worker's last error line when it fails."""
    run_dir.mkdir(parents=True, exist_ok=True)
    job = run_dir / "worker.json"
    job.write_text(json.dumps({"overrides": overrides, "run_dir": str(run_dir), "warmup": args.warmup}))
    with log_file.open("w") as output:
        completed = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--worker", str(job)],
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            timeout=args.row_timeout,
            check=False,
        )
    result = run_dir / "result.json"
    if completed.returncode != 0 or not result.exists():
        lines = [line for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
        last = lines[-1] if lines else "(no output)"
        raise RuntimeError(f"worker exited with status {completed.returncode}: {last} (see {log_file})")
    return json.loads(result.read_text())


def worker(job_file: Path) -> int:
    """The ``--worker`` entry: compose the job's config, run it, write ``result.json`` next to it."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    job = json.loads(job_file.read_text())
    run_dir = Path(job["run_dir"])
    measured = run_training(compose_config("config", job["overrides"]), run_dir, job["warmup"])
    (run_dir / "result.json").write_text(json.dumps(measured))
    return 0


def chain_tokens(prm, chains, data) -> int:
    """Tokens the scorer reads without prefix sharing: the attention-mask sum of the collated chains
    (image tokens expanded), as the training metric counts them."""
    collator = PRMCollator(prm.backbone, data.max_length, data.packing)
    dataset = ChainDataset(chains)
    size = data.eval_batch_size
    return sum(
        collator([dataset[i] for i in range(start, min(start + size, len(chains)))])["num_tokens"]
        for start in range(0, len(chains), size)
    )


def picks(records, flat_scores, aggregation) -> list[int]:
    """Index of the best-of-N pick of every problem: argmax of the aggregation's chain scores."""
    chosen, start = [], 0
    for problem in records:
        group = flat_scores[start : start + len(problem.candidates)]
        start += len(problem.candidates)
        chosen.append(int(torch.argmax(aggregation(*pad_ragged(group, torch.float64)))))
    return chosen


def run_scoring(cfg: DictConfig, rows: dict[str, Row], args, peak: float | None) -> None:
    """The best-of-N rows of one model: load it once (evaluate.py's ``load_model`` / ``load_test``), then
    per row score every candidate in ``cfg.precision`` (timed, after one untimed problem as warm-up)
    and in the other of bf16 / fp32, and fill the row. A failing row is marked and the other still
    runs; an error while loading the model or the test set propagates (the caller marks both rows)."""
    validate_evaluate_config(cfg)
    device = pick_device(cfg.device)
    prm = load_model(cfg, None, device)
    data, records, _ = load_test(cfg, prm.backbone)
    chains = flatten_candidates(records)
    tokens = chain_tokens(prm, chains, data)
    aggregation = instantiate(cfg.aggregation)
    parameters = matmul_parameters(prm.backbone.model)
    for name, row in rows.items():
        started = time.perf_counter()
        try:
            sharing = name == "bon_shared"

            def score(precision, subset, sharing=sharing):
                return score_chains(
                    prm,
                    subset,
                    data.eval_batch_size,
                    data.max_length,
                    device,
                    precision,
                    packing=data.packing,
                    prefix_sharing=sharing,
                )

            score(cfg.precision, chains[: len(records[0].candidates)])  # warm-up: kernels, allocator
            synchronize(device)
            reset_peak_memory(device)
            begin = time.perf_counter()
            timed = score(cfg.precision, chains)
            synchronize(device)
            seconds = time.perf_counter() - begin
            row.peak_memory_gb = peak_memory_gb(device)
            other = score("fp32" if cfg.precision == "bf16" else "bf16", chains)
            low, full = (timed, other) if cfg.precision == "bf16" else (other, timed)
            row.tokens_per_s = tokens / seconds
            row.mfu = mfu("score", parameters, tokens, seconds, peak)
            row.step_s = seconds
            row.max_abs_prob_diff = max(
                (float((a.double() - b.double()).abs().max()) for a, b in zip(low, full) if len(a)),
                default=0.0,
            )
            low_picks, full_picks = picks(records, low, aggregation), picks(records, full, aggregation)
            row.pick_agreement = sum(a == b for a, b in zip(low_picks, full_picks)) / len(records)
            row.details.update(
                device=str(device), chains=len(chains), problems=len(records), tokens=tokens, seconds=seconds,
                matmul_parameters=parameters, aggregation=aggregation.name,
            )  # fmt: skip
            row.status = "ok"
        except Exception as error:  # noqa: BLE001 (fail soft: reported in the table)
            fail(row, error, args.out)
        row.wall_s = time.perf_counter() - started


def fail(row: Row, error: BaseException, out: Path) -> None:
    message = " ".join(str(error).split()) or type(error).__name__
    row.status = f"failed: {type(error).__name__}: {message}"[:300]
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (logs / f"{row.model}_{row.row}.traceback.txt").write_text(
        "".join(traceback.format_exception(error)), encoding="utf-8"
    )
    log.error("%s %s: %s", row.model, row.row, row.status)


# ------------------------------------------------------------------------------------ output


def number(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    magnitude = abs(value)
    if magnitude != 0 and (magnitude >= 1e5 or magnitude < 1e-3):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}" if magnitude < 1000 else f"{value:,.0f}"


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|---|---|" + "---:|" * (len(COLUMNS) - 3)]
    for r in rows:
        mfu_text = "n/a" if r.mfu is None else f"{100 * r.mfu:.3g}%"
        cells = [
            r.model, r.row, r.status, number(r.tokens_per_s, 4), mfu_text, number(r.peak_memory_gb),
            number(r.step_s), number(r.vs_plain), number(r.max_abs_prob_diff),
            number(r.pick_agreement), number(r.wall_s),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, header: dict, rows: list[Row], total_s: float) -> str:
    """Write gpu_check.json and gpu_check.md into ``out``; returns the markdown table."""
    markdown = table(rows)
    payload = {**header, "total_s": total_s, "rows": [asdict(r) for r in rows]}
    (out / "gpu_check.json").write_text(json.dumps(payload, indent=1, default=str), encoding="utf-8")
    text = (
        f"# GPU check ({header['size']} models, {header['device_name']})\n\n"
        f"{header['steps']} training steps per row ({header['warmup']} warm-up and the last, validating, "
        f"step untimed), batch {header['batch_size']}, {header['precision']}, bi-level rows at "
        f"unroll_steps={header.get('unroll_steps') or 'each strategy default'}; peak "
        f"{number(header['peak_tflops'])} TFLOP/s; total {total_s:.0f} s.\n\n{markdown}\n"
        "MFU = k * N * T / t / peak (k = 6 training, 2 scoring; N = parameters outside the token "
        "embedding and LM head; T tokens in t seconds). See experiments/gpu_check.py for every column.\n"
    )
    (out / "gpu_check.md").write_text(text, encoding="utf-8")
    return markdown


# ------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size", choices=("auto", "real", "tiny"), default="auto", help="auto: real on CUDA, tiny otherwise"
    )
    parser.add_argument(
        "--models", default=",".join(MODELS), help=f"comma-separated, among {', '.join(MODELS)}"
    )
    parser.add_argument(
        "--rows",
        default=None,
        help=f"comma-separated, among {', '.join(ALL_ROWS)}, or 'all' (default: all on CUDA; "
        "all but zero2,zero3 on CPU)",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="optimiser steps per training row (default 20 real, 4 tiny)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed first steps (default 2 real, 1 tiny)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="data.batch_size (default 8 real, 4 tiny)"
    )
    parser.add_argument(
        "--unroll-steps",
        type=int,
        default=None,
        help="lower steps per upper step of the bi-level rows (default: each strategy's own, as train.py "
        "runs it: domain_table 1, instance_table / instance_net 10, so 8 steps time no upper step of "
        "theirs; 1 times an upper step after every lower step: the bi-level cost in full)",
    )
    parser.add_argument(
        "--test-problems", type=int, default=None, help="best-of-N problems scored (default 16 real, 4 tiny)"
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="training and timed scoring (auto: bf16 on CUDA, fp32 on CPU, where bf16 autocast is slower)",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's dense bf16 peak (default: looked up by name)",
    )
    parser.add_argument("--out", type=Path, default=None, help="default: outputs/gpu_check/<date>_<time>")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=480.0,
        help="rows not started within this many seconds are skipped (0: no limit)",
    )
    parser.add_argument(
        "--row-timeout", type=float, default=600.0, help="seconds a DeepSpeed row's process may run"
    )
    parser.add_argument(
        "--keep-models", action="store_true", help="keep the written random models under <out>/models"
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="an extra Hydra override for every training row (repeatable)",
    )
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        return args
    cuda = torch.cuda.is_available()
    args.size = ("real" if cuda else "tiny") if args.size == "auto" else args.size
    if args.size == "real" and not cuda:
        parser.error(
            "--size real needs a CUDA GPU: the real-size models (2.2B and 0.9B parameters) do not fit a "
            "CPU check's memory or time; use --size tiny (the default without CUDA)"
        )
    args.precision = ("bf16" if cuda else "fp32") if args.precision == "auto" else args.precision
    real = args.size == "real"
    args.steps = args.steps if args.steps is not None else (20 if real else 4)
    args.warmup = args.warmup if args.warmup is not None else (2 if real else 1)
    args.batch_size = args.batch_size if args.batch_size is not None else (8 if real else 4)
    args.test_problems = args.test_problems if args.test_problems is not None else (16 if real else 4)
    args.train_chains = args.steps * args.batch_size
    args.meta_chains = 4 * args.batch_size
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = [name for name in models if name not in MODELS]
    if unknown or not models:
        parser.error(f"--models: unknown {unknown or '(none given)'}; expected among {', '.join(MODELS)}")
    args.models = models
    if args.rows in (None, ""):
        rows = list(ALL_ROWS) if cuda else [r for r in ALL_ROWS if r not in DEEPSPEED_ROWS]
    elif args.rows == "all":
        rows = list(ALL_ROWS)
    else:
        rows = [name.strip() for name in args.rows.split(",") if name.strip()]
        unknown = [name for name in rows if name not in ALL_ROWS]
        if unknown or not rows:
            parser.error(
                f"--rows: unknown {unknown or '(none given)'}; expected among {', '.join(ALL_ROWS)} or all"
            )
    args.rows = [r for r in ALL_ROWS if r in rows]
    if args.steps < args.warmup + 2:
        parser.error(f"--steps {args.steps} with --warmup {args.warmup}: need at least warmup + 2 steps "
                     "(the warm-up and the last, validating, step are not timed)")  # fmt: skip
    for key in ("batch_size", "test_problems", "unroll_steps"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        parser.error("--peak-tflops must be > 0")
    args.out = (args.out or ROOT / "outputs" / "gpu_check" / time.strftime("%Y-%m-%d_%H-%M-%S")).resolve()
    return args


@contextlib.contextmanager
def row_log(path: Path):
    """Send the suite's log records and Python warnings of one row to ``path``."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def main(argv: list[str] | None = None) -> int:
    """Run the check (``argv``: the command line without the program name; None: ``sys.argv``); returns
    the exit status: 0 when every row is ok, 1 when a row failed or was skipped. Bad arguments exit
    with status 2 (argparse's message names the option)."""
    args = parse_args(argv)
    os.environ.setdefault("PRM_CACHE_DIR", str(ROOT / ".cache"))  # the demo data, wherever we run from
    if args.worker is not None:
        return worker(args.worker)
    root, betty = logging.getLogger(), betty_logger()
    saved = root.level, list(betty.handlers), betty.propagate
    root.setLevel(logging.INFO)  # the suite's INFO records go to each row's log file (row_log)
    logging.captureWarnings(True)
    betty.handlers.clear()  # Betty prints its own records to stdout: send them to the row logs instead
    betty.propagate = True
    try:
        return check(args)
    finally:
        root.setLevel(saved[0])
        logging.captureWarnings(False)
        betty.handlers[:] = saved[1]
        betty.propagate = saved[2]


def check(args: argparse.Namespace) -> int:
    """The check itself (see :func:`main`); ``args`` from :func:`parse_args`."""
    started = time.perf_counter()
    out = args.out
    (out / "logs").mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    device_name = (
        torch.cuda.get_device_name(0)
        if device == "cuda"
        else f"CPU ({platform.processor() or platform.machine()})"
    )
    peak = (
        args.peak_tflops
        if args.peak_tflops is not None
        else (peak_tflops(device_name) if device == "cuda" else None)
    )
    header = dict(
        size=args.size, device_name=device_name, torch=torch.__version__, cuda=torch.version.cuda,
        peak_tflops=peak, steps=args.steps, warmup=args.warmup, batch_size=args.batch_size,
        unroll_steps=args.unroll_steps,
        precision=args.precision, models={}, rows_run=args.rows,
        formula="MFU = k * N * T / t / (peak TFLOP/s * 1e12); k = 6 training, 2 scoring; N = parameters "
        "outside the token embedding and LM head",
    )  # fmt: skip
    if device == "cuda" and peak is None:
        print(
            f"gpu_check: no peak bf16 TFLOP/s known for {device_name!r}: pass --peak-tflops for MFU",
            file=sys.stderr,
        )
    rows = [Row(model, row) for model in args.models for row in args.rows]
    by_key = {(r.model, r.row): r for r in rows}

    def over_budget() -> bool:
        return args.budget_s > 0 and time.perf_counter() - started > args.budget_s

    def save() -> None:
        write_outputs(out, header, rows, time.perf_counter() - started)

    for model_name in args.models:
        spec = MODELS[model_name]
        model_rows = [r for r in rows if r.model == model_name]
        directory = out / "models" / model_name
        if over_budget():
            for row in model_rows:
                row.status = f"skipped: over the {args.budget_s:.0f} s budget"
            continue
        print(f"gpu_check: {model_name}: writing the {args.size} model", file=sys.stderr, flush=True)
        try:
            with row_log(out / "logs" / f"{model_name}_model.log"):
                backbone, counts = materialise(spec, args.size, device, directory)
            header["models"][model_name] = {"backbone": backbone, **counts}
        except Exception as error:  # noqa: BLE001 (fail soft: every row of this model reports it)
            for row in model_rows:
                fail(row, error, out)
            save()
            continue
        for name in [r for r in args.rows if r not in SCORING_ROWS]:
            row = by_key[(model_name, name)]
            if over_budget():
                row.status = f"skipped: over the {args.budget_s:.0f} s budget"
                continue
            print(f"gpu_check: {model_name}: {name}", file=sys.stderr, flush=True)
            begin = time.perf_counter()
            run_dir = out / "runs" / f"{model_name}_{name}"
            overrides = train_overrides(args, backbone, directory, name)
            log_file = out / "logs" / f"{model_name}_{name}.log"
            try:
                if name in DEEPSPEED_ROWS:
                    release_memory()
                    measured = run_isolated(args, overrides, run_dir, log_file)
                else:
                    with row_log(log_file):
                        measured = run_training(compose_config("config", overrides), run_dir, args.warmup)
                fill_training(row, measured, peak)
                row.status = "ok"
            except Exception as error:  # noqa: BLE001 (fail soft: reported in the table)
                fail(row, error, out)
            release_memory()
            row.wall_s = time.perf_counter() - begin
            save()
        scoring = {name: by_key[(model_name, name)] for name in args.rows if name in SCORING_ROWS}
        if scoring and over_budget():
            for row in scoring.values():
                row.status = f"skipped: over the {args.budget_s:.0f} s budget"
        elif scoring:
            print(f"gpu_check: {model_name}: best-of-N scoring", file=sys.stderr, flush=True)
            overrides = [
                f"backbone={backbone}", f"backbone.path={directory}", f"precision={args.precision}",
                f"data.limit={{test:{args.test_problems}}}", "logger=none",
            ]  # fmt: skip
            try:
                with row_log(out / "logs" / f"{model_name}_best_of_n.log"):
                    run_scoring(compose_config("evaluate", overrides), scoring, args, peak)
            except Exception as error:  # noqa: BLE001 (loading failed: every scoring row reports it)
                for row in scoring.values():
                    if row.status == "not run":
                        fail(row, error, out)
            release_memory()
        plain = by_key.get((model_name, "plain"))
        if plain is not None and plain.step_s:
            for row in model_rows:
                if row.row not in SCORING_ROWS and row.step_s is not None:
                    row.vs_plain = row.step_s / plain.step_s
        save()
        if not args.keep_models:
            shutil.rmtree(directory, ignore_errors=True)
    if not args.keep_models:
        shutil.rmtree(out / "models", ignore_errors=True)
    markdown = write_outputs(out, header, rows, time.perf_counter() - started)
    print(markdown)
    print(f"results: {out / 'gpu_check.md'} and {out / 'gpu_check.json'}; logs: {out / 'logs'}")
    return 0 if all(r.status == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
