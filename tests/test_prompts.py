"""Prompt formats: the conversation layout scored in one pass equals scoring each turn as its own prefix;
evaluate.py scores models train.py never wrote (a DreamPRM-1.5-style InternVL, a Llama-3-style LM)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose_config
from hydra.utils import instantiate
from numerics import FLOAT64_PATHS, assert_close_at_scale, decided
from omegaconf import OmegaConf
from PIL import Image
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from prm.config import ConfigError, validate_evaluate_config
from prm.data.dataset import ChainDataset, PRMCollator
from prm.data.records import LabelledChain, StepChain
from prm.evaluation import best_of_n, choose_threshold, processbench
from prm.evaluation.best_of_n import aggregate_all
from prm.model.backbones import build_backbone
from prm.model.prm import ProcessRewardModel
from prm.model.prompts import DREAMPRM15_SYSTEM, ConversationPrompt, MarkerPrompt, build_prompt

ROOT = Path(__file__).resolve().parent.parent
PROCESSBENCH = ROOT / "tests/fixtures/published/processbench_gsm8k_sample.json"
PROCESSOR_KWARGS = {"internvl": {"crop_to_patches": False}}
SYSTEM = "Judge each step: + or -."


def image_file(directory: Path, name: str = "img.png", colour=(200, 30, 30)) -> str:
    path = directory / name
    Image.new("RGB", (56, 56), colour).save(path)
    return str(path)


def chains(images: list[str]) -> list[StepChain]:
    return [
        StepChain(
            id="a",
            question="What is 2 + 3?",
            steps=["2 + 3 = 5.", "So the sum is 6.", "Final answer: 6"],
            labels=[1.0, 0.0, None],  # replies "+", "-", "+" (unlabelled: positive)
            images=images,
        ),
        StepChain(
            id="b", question="Count the tiles.", steps=["There are 4 tiles."], labels=[0.75], images=images
        ),
    ]


def by_hand_messages(question, steps, replies, num_images, multimodal, system=SYSTEM):
    """The VisualPRM / DreamPRM-1.5 conversation, written out independently of prm.model.prompts."""
    first = f"### Question:\n{question}\n\n### Solution Process:\n{steps[0]}"
    content = [{"type": "image"}] * num_images + [{"type": "text", "text": first}] if multimodal else first
    messages = [{"role": "system", "content": system}, {"role": "user", "content": content}]
    for index, step in enumerate(steps):
        if index:
            messages.append({"role": "user", "content": step})
        messages.append({"role": "assistant", "content": replies[index]})
    return messages


@torch.no_grad()
def turn_by_turn(model, owner, tokenizer, label_words, messages, images, processor_kwargs=None):
    """P(+) of each reply, one forward pass per reply: the conversation up to the user turn before it
    with the template's generation prompt, full-vocabulary logits at the last position, softmax over
    the two label words (in float64, so a float64 model's scores are not rounded to float32)."""
    ids = [tokenizer.convert_tokens_to_ids(word) for word in label_words]
    scores = []
    for end, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        text = owner.apply_chat_template(messages[:end], tokenize=False, add_generation_prompt=True)
        if images:
            inputs = owner(
                text=[text],
                images=[Image.open(p).convert("RGB") for p in images],
                return_tensors="pt",
                add_special_tokens=False,
                **(processor_kwargs or {}),
            )
        else:
            inputs = tokenizer([text], return_tensors="pt", add_special_tokens=False)
        logits = model(**inputs).logits[0, -1].double()
        scores.append(torch.softmax(logits[ids], -1)[0].item())
    return scores


def collate(backbone, items):
    dataset = ChainDataset(items)
    return PRMCollator(backbone)([dataset[i] for i in range(len(items))])


# ---------------------------------------------------------------------------------------------------
# The layout


def test_conversation_renders_the_visualprm_layout_with_label_replies():
    backbone = build_backbone("qwen2", prompt={"name": "conversation", "system": SYSTEM})
    rendered = backbone.prompt.render(
        backbone, "What is 2 + 3?", ["2 + 3 = 5.", "So 6.", "Final: 6"], 0, [1, 0, None]
    )
    assert rendered.text == (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
        "<|im_start|>user\n### Question:\nWhat is 2 + 3?\n\n### Solution Process:\n2 + 3 = 5.<|im_end|>\n"
        "<|im_start|>assistant\n+<|im_end|>\n<|im_start|>user\nSo 6.<|im_end|>\n"
        "<|im_start|>assistant\n-<|im_end|>\n<|im_start|>user\nFinal: 6<|im_end|>\n<|im_start|>assistant\n+"
    )
    assert [(r.word, rendered.text[r.start : r.end]) for r in rendered.replies] == [
        ("+", "+"),
        ("-", "-"),
        ("+", "+"),
    ]
    batch = collate(backbone, chains([])[:1])
    ids = batch["inputs"]["input_ids"][0]
    plus, minus = backbone.label_token_ids
    # Each score position is the token right before its teacher-forced reply.
    assert ids[batch["marker_positions"][0] + 1].tolist() == [plus, minus, plus]


def test_prompt_options():
    backbone = build_backbone("qwen2")
    assert isinstance(backbone.prompt, MarkerPrompt)  # the default: the one-pass marker layout
    positive = ConversationPrompt(system=None, replies="positive", first_step="own_turn")
    text = positive.render(backbone, "Q?", ["s1", "s2"], 0, [0.0, 0.0]).text
    assert text == (
        "<|im_start|>user\n### Question:\nQ?<|im_end|>\n<|im_start|>user\ns1<|im_end|>\n"
        "<|im_start|>assistant\n+<|im_end|>\n<|im_start|>user\ns2<|im_end|>\n<|im_start|>assistant\n+"
    )
    # Evaluation chains (no step labels) always get the positive word, whatever `replies` says.
    assert ConversationPrompt().reply_words(("+", "-"), 2, None) == ["+", "+"]
    assert ConversationPrompt().reply_words(("+", "-"), 3, [0.5, 0.49, None]) == ["+", "-", "+"]
    with pytest.raises(ValueError, match="prompt.first_step='first'"):
        ConversationPrompt(first_step="first")
    with pytest.raises(ValueError, match="unknown prompt format 'chat'"):
        build_prompt("chat")
    with pytest.raises(ValueError, match="prompt=marker has no field.s. system; its fields: name"):
        build_prompt({"name": "marker", "system": "x"})


def test_prompt_config_group():
    cfg = compose_config()
    assert cfg.prompt.name == "marker"
    assert isinstance(instantiate(cfg.prompt), MarkerPrompt)
    conversation = instantiate(compose_config("prompt=conversation").prompt)
    assert conversation == ConversationPrompt()
    assert conversation.system == DREAMPRM15_SYSTEM  # the YAML holds the published prompt verbatim
    backbone = instantiate(
        compose_config("prompt=conversation", "backbone=tiny_qwen2").backbone, prompt=cfg.prompt
    )
    assert isinstance(backbone.prompt, MarkerPrompt)


# ---------------------------------------------------------------------------------------------------
# One pass equals each turn alone


@pytest.mark.numerics
@pytest.mark.parametrize("family", ["qwen2", "causal_lm", "qwen2_vl", "internvl"])
def test_one_pass_conversation_equals_scoring_each_turn(family, tmp_path):
    """Float64, so the two paths agree to FLOAT64_PATHS of the scores' scale on any CPU."""
    prompt = ConversationPrompt(system=SYSTEM)
    backbone = build_backbone(
        family, processor_kwargs=PROCESSOR_KWARGS.get(family), prompt=prompt, dtype="float64"
    )
    images = [image_file(tmp_path)] if backbone.is_multimodal else []
    items = chains(images)
    prm = ProcessRewardModel(backbone, "token").eval()
    with torch.no_grad():
        scores = prm(collate(backbone, items))
    replies = [["+", "-", "+"], ["+"]]
    for row, chain in enumerate(items):
        messages = by_hand_messages(
            chain.question, chain.steps, replies[row], len(images), backbone.is_multimodal
        )
        expected = turn_by_turn(
            backbone.model,
            backbone.processor,
            backbone.tokenizer,
            backbone.label_words,
            messages,
            images,
            backbone.processor_kwargs,
        )
        got = scores.probs[row, : len(chain.steps)]
        assert_close_at_scale(got, torch.tensor(expected, dtype=torch.float64))
        assert all(abs(p - 0.5) > 1e-4 for p in expected)  # not a degenerate 0.5 everywhere
        assert scores.mask[row].sum() == len(chain.steps)
    # The loss sees the labels, not the replies: a soft 0.75 is still its own target.
    losses, has_label = prm.losses(scores, collate(backbone, items)["step_labels"])
    assert has_label.tolist() == [True, True] and torch.isfinite(losses).all()


def test_templates_that_break_one_pass_scoring_are_refused():
    # A space before each reply: the tokenizer reads " +" as one token, so "+" is not a token of its own.
    spaced = (
        "{%- for m in messages -%}{{ '<|im_start|>' + m['role'] + '\\n' }}"
        "{%- if m['role'] == 'assistant' -%}{{ ' ' }}{%- endif -%}{{ m['content'] + '<|im_end|>\\n' }}"
        "{%- endfor -%}"
    )
    backbone = build_backbone("qwen2", chat_template=spaced, prompt="conversation")
    assert backbone.tokenizer.tokenize(" +") == ["Ġ+"]
    with pytest.raises(
        ValueError, match=r"chain 'a' \(prompt=conversation\): reply 0 \('\+'\) is not one token"
    ):
        collate(backbone, chains([])[:1])
    # A template that writes earlier replies differently once later turns follow.
    rewriting = (
        "{%- for m in messages -%}{{ '<|im_start|>' + m['role'] + '\\n' }}"
        "{%- if m['role'] == 'assistant' and not loop.last -%}{{ 'done: ' }}{%- endif -%}"
        "{{ m['content'] + '<|im_end|>\\n' }}{%- endfor -%}"
    )
    backbone = build_backbone("qwen2", chat_template=rewriting, prompt="conversation")
    with pytest.raises(ValueError, match="renders the conversation up to reply 0 differently"):
        collate(backbone, chains([])[:1])


def test_chain_without_steps_scores_nothing():
    backbone = build_backbone("qwen2", prompt="conversation")
    empty = LabelledChain(id="e", question="Q?", steps=[], label=0)
    batch = collate(backbone, [empty, LabelledChain(id="f", question="Q?", steps=["s"], label=1)])
    assert batch["step_mask"].tolist() == [[False], [True]]


# ---------------------------------------------------------------------------------------------------
# Training in the conversation layout; the checkpoint keeps its prompt


def test_train_in_conversation_layout_and_evaluate_the_checkpoint(tmp_path, monkeypatch):
    from prm.checkpoint import latest_checkpoint
    from prm.evaluation.run import evaluate
    from prm.model.build import load_prm
    from prm.training import train

    monkeypatch.setenv("PRM_CACHE_DIR", str(tmp_path / "cache"))
    small = [
        "data.generator.train_per_domain=8",
        "data.generator.meta_size=8",
        "data.generator.test_problems=4",
    ]
    cfg = compose_config(
        "experiment=smoke",
        "backbone=tiny_qwen2",
        "prompt=conversation",
        f"prompt.system={SYSTEM}",
        "train.steps=2",
        *small,
    )
    metrics = train(cfg, run_dir=tmp_path / "run")
    assert "auroc" in metrics
    checkpoint = latest_checkpoint(tmp_path / "run")
    assert OmegaConf.load(checkpoint / "config.yaml").prompt.name == "conversation"
    assert isinstance(load_prm(checkpoint).backbone.prompt, ConversationPrompt)
    summary = evaluate(
        compose_config(f"checkpoint={tmp_path / 'run'}", "data.limit=2", *small, name="evaluate"),
        out_dir=tmp_path / "eval",
    )
    assert (tmp_path / "eval" / "best_of_n.json").is_file() and "aggregations" in summary


# ---------------------------------------------------------------------------------------------------
# evaluate.py on models train.py never wrote


def save_tiny_internvl(directory: Path) -> None:
    """A tiny random InternVL in the -hf layout (save_pretrained: config.json, weights, processor with
    its chat template), trained nowhere, no config.yaml: what a published DreamPRM-1.5 checkpoint is."""
    backbone = build_backbone("internvl", processor_kwargs=PROCESSOR_KWARGS["internvl"], seed=3)
    backbone.model.save_pretrained(directory)
    backbone.processor.save_pretrained(directory)


def write_bestofn(directory: Path) -> Path:
    """A DreamPRM-1.5 best-of-N test file with two images."""
    problems = [
        {
            "id": "p1",
            "question": "How many red tiles?",
            "image_path": Path(image_file(directory, "p1.png")).name,
            "candidates": [
                "[Reasoning]\n1. The image is red.\n\n2. So one tile.\n\nAnswer: 1",
                "[Reasoning]\nI see two tiles.\n\nAnswer: 2",
                "[Reasoning]\n1. Count.\n\n2. Three.\n\n3. Done.\n\nAnswer: 3",
            ],
            "true_false": [True, False, False],
        },
        {
            "id": "p2",
            "question": "Which colour?",
            "image_path": Path(image_file(directory, "p2.png", (20, 20, 220))).name,
            "candidates": ["[Reasoning]\nBlue.\n\nAnswer: blue", "[Reasoning]\nRed, surely.\n\nAnswer: red"],
            "true_false": [True, False],
        },
    ]
    path = directory / "bestofn.json"
    path.write_text(json.dumps(problems), encoding="utf-8")
    return path


@pytest.mark.numerics
def test_evaluate_a_dreamprm15_style_internvl_checkpoint_by_path(tmp_path):
    from prm.evaluation.run import evaluate

    model_dir = tmp_path / "internvl"
    save_tiny_internvl(model_dir)
    assert not (model_dir / "config.yaml").exists()
    test_file = write_bestofn(tmp_path)
    overrides = [
        "backbone=internvl3_1b",
        f"backbone.path={model_dir}",
        "backbone.dtype=float64",
        "backbone.processor_kwargs.crop_to_patches=false",
        "prompt=conversation",
        "data=dreamprm15",
        f"data.test={test_file}",
        "device=cpu",
    ]
    summary = evaluate(compose_config(*overrides, name="evaluate"), out_dir=tmp_path / "eval")

    # The same model loaded by transformers alone, each reply scored as its own prefix. Both paths run
    # in float64: their scores agree to FLOAT64_PATHS of their scale on any CPU (tests/numerics.py).
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float64).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    problems = instantiate(compose_config(*overrides, name="evaluate").data).load("test")
    grouped = []
    for problem in problems:
        grouped.append(
            [
                turn_by_turn(
                    model,
                    processor,
                    processor.tokenizer,
                    ("+", "-"),
                    by_hand_messages(
                        problem.question, c.steps, ["+"] * len(c.steps), 1, True, DREAMPRM15_SYSTEM
                    ),
                    problem.images,
                    PROCESSOR_KWARGS["internvl"],
                )
                for c in problem.candidates
            ]
        )
    # The picks are decided by margins. The paths' step scores differ by at most delta = FLOAT64_PATHS
    # of their scale, and every aggregation is non-decreasing in each step score, so a candidate's
    # value lies between its aggregates at scores - delta and scores + delta. In every problem and
    # aggregation the best candidate's lower end clears every other's upper end: both paths pick it.
    for group in grouped:
        steps = [torch.tensor(s, dtype=torch.float64) for s in group]
        delta = FLOAT64_PATHS * max(float(s.max()) for s in steps)
        undecided = [name for name, ok in decided([steps], delta).items() if not ok]
        assert not undecided, (undecided, aggregate_all(steps))
    expected = best_of_n(problems, grouped).to_dict()
    for name, result in expected["aggregations"].items():
        assert summary["aggregations"][name]["accuracy"] == pytest.approx(result["accuracy"]), name
    assert (tmp_path / "eval" / "best_of_n.json").is_file()


LLAMA3_TEMPLATE = (
    "{{ bos_token }}{%- for message in messages -%}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim }}"
    "{{ '<|eot_id|>' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif -%}"
)


def save_tiny_llama(directory: Path) -> None:
    """A tiny random LlamaForCausalLM whose tokenizer carries a Llama-3-style chat template. Weights of
    std 0.1 (not transformers' 0.02): the ProcessBench sample's 102 step scores then spread over
    [0.27, 0.6], every two of them over 5e-5 apart, where std 0.02 packs them into [0.430, 0.443]
    with pairs 1.6e-6 apart, a threshold's side decided by float rounding."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from prm.model.tokenizer import build_tokenizer

    tokenizer = build_tokenizer("qwen2")
    tokenizer.add_special_tokens({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"})
    tokenizer.add_tokens(["<|start_header_id|>", "<|end_header_id|>"], special_tokens=True)
    tokenizer.chat_template = LLAMA3_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.1,
    )
    torch.manual_seed(1)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def llama_overrides(model_dir: Path, dtype: str = "float32") -> list[str]:
    return [
        "backbone=hf_causal_lm",
        f"backbone.path={model_dir}",
        f"backbone.dtype={dtype}",
        "prompt=conversation",
        "data=processbench",
        f"data.test={PROCESSBENCH}",
    ]


@pytest.mark.numerics
def test_evaluate_a_llama_checkpoint_with_its_own_template(tmp_path):
    from prm.evaluation.run import evaluate

    model_dir = tmp_path / "llama"
    save_tiny_llama(model_dir)
    overrides = llama_overrides(model_dir, dtype="float64")
    summary = evaluate(compose_config(*overrides, name="evaluate"), out_dir=tmp_path / "eval")

    # Both paths in float64: their scores agree to FLOAT64_PATHS (of scores <= 1) on any CPU.
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    records = instantiate(compose_config(*overrides, name="evaluate").data).load("test")
    scores = []
    for chain in records:
        messages = by_hand_messages(
            chain.question, chain.steps, ["+"] * len(chain.steps), 0, False, DREAMPRM15_SYSTEM
        )
        scores.append(turn_by_turn(model, tokenizer, tokenizer, ("+", "-"), messages, []))
    # The threshold and F1 depend only on the order of the scores: every two are over twice the paths'
    # difference apart (no ties either), so both paths order them, and decide every chain, alike.
    ordered = sorted(score for chain in scores for score in chain)
    assert min(b - a for a, b in zip(ordered, ordered[1:])) > 2 * FLOAT64_PATHS
    first_errors = [chain.first_error for chain in records]
    expected = processbench(scores, first_errors, choose_threshold(scores, first_errors)).to_dict()
    assert {k: v for k, v in summary.items() if k != "preflight"} == pytest.approx(expected)
    assert (tmp_path / "eval" / "processbench.json").is_file()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["checkpoint=run", "backbone=hf_causal_lm", "backbone.path=x"], "exclude each other"),
        (["checkpoint=run", "prompt=conversation"], "prompt= goes with backbone="),
        (["backbone=hf_causal_lm"], "backbone.path is not set"),
        ([], "checkpoint is not set"),
    ],
)
def test_evaluate_config_rules(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_evaluate_config(compose_config(*overrides, name="evaluate"))
    validate_evaluate_config(
        compose_config("backbone=hf_causal_lm", "backbone.path=x", "prompt=conversation", name="evaluate")
    )


@pytest.mark.slow
def test_cli_evaluates_a_model_by_path(tmp_path):
    model_dir = tmp_path / "llama"
    save_tiny_llama(model_dir)
    out = tmp_path / "eval"
    result = subprocess.run(
        [sys.executable, "evaluate.py", *llama_overrides(model_dir), f"hydra.run.dir={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "WANDB_MODE": "disabled"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((out / "processbench.json").read_text())
    assert "f1" in json.dumps(saved) and "prompt=conversation" in (out / "report.md").read_text()


# ---------------------------------------------------------------------------------------------------
# Best-of-N prefix sharing works in the conversation layout


@pytest.mark.numerics
@pytest.mark.parametrize("first_step", ["with_question", "own_turn"])
@pytest.mark.parametrize("family", ["qwen2", "qwen2_vl", "internvl"])
def test_prefix_sharing_in_the_conversation_layout(family, first_step, tmp_path):
    from prm.data.dataset import flatten_candidates
    from prm.data.records import BestOfNProblem, Candidate
    from prm.evaluation.scoring import SharingReport, score_chains, score_chains_shared

    prompt = ConversationPrompt(system=SYSTEM, first_step=first_step)
    backbone = build_backbone(
        family, processor_kwargs=PROCESSOR_KWARGS.get(family), prompt=prompt, dtype="float64"
    )
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # larger random weights: scores spread over [0, 1], a wrong position shows
        for parameter in backbone.model.parameters():
            if parameter.dim() >= 2:
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    prm = ProcessRewardModel(backbone, "token")
    images = [image_file(tmp_path)] if backbone.is_multimodal else []
    problems = [
        BestOfNProblem(
            id=f"p{p}",
            question=f"Problem {p}: how many tiles?",
            candidates=[
                Candidate(
                    steps=[f"Row {s} has {s + c} tiles." for s in range(c)],
                    final_answer=str(c),
                    correct=c == 1,
                )
                for c in range(4)  # 0 to 3 steps
            ],
            images=images,
        )
        for p in range(2)
    ]
    chains = flatten_candidates(problems)
    report = SharingReport()
    shared = score_chains_shared(prm, chains, batch_size=3, report=report)
    whole = score_chains(prm, chains, batch_size=3)
    assert report.shared_chains == len(chains), report
    assert [len(s) for s in shared] == [len(c.steps) for c in chains]
    assert_close_at_scale(torch.cat(shared), torch.cat(whole))  # float64 paths, rounded to float32
    assert max(float(s.max()) - float(s.min()) for s in whole if len(s) > 1) > 0.01  # scores spread
