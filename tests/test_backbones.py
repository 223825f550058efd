"""Backbones: one family spec each, built offline, saved and reloaded with identical logits, real
checkpoint layouts, chains formatted by chat templates (token ids unchanged for the tiny families),
any local causal LM, GGUF files."""

import importlib.util
import json
import logging
import re
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import (
    AddedToken,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    Qwen2Tokenizer,
)

from prm.model import families
from prm.model.backbones import build_backbone
from prm.model.chat import chatml_template
from prm.model.families import FamilySpec, TinySize, family_names, get_family
from prm.model.gguf_export import export
from prm.model.prm import ProcessRewardModel
from prm.model.tokenizer import (
    ExpectedToken,
    TokenizerError,
    build_tokenizer,
    check_special_tokens,
    expected_special_tokens,
    load_shipped_vocab,
    single_token_id,
)

PROCESSOR_KWARGS = {"internvl": {"crop_to_patches": False}}
TINY_FAMILIES = family_names(tiny=True)
MULTIMODAL_TINY_FAMILIES = family_names(tiny=True, multimodal=True)
STEPS = ["The top left tile is red.", "So 1 tile is red.", "Final answer: 1"]


def _inputs(backbone, num_images=1):
    images = [Image.new("RGB", (56, 56), "red")] * num_images if backbone.is_multimodal else []
    text = backbone.format_chain("How many tiles are red?", STEPS, len(images))
    if backbone.is_multimodal:
        return dict(
            backbone.processor(
                text=[text],
                images=images or None,
                return_tensors="pt",
                add_special_tokens=False,
                **backbone.processor_kwargs,
            )
        )
    return dict(backbone.tokenizer([text], return_tensors="pt", add_special_tokens=False))


def _old_chatml_text(family, question, steps, step_marker, num_images):
    """The hand-built string every chain was formatted with before chat templates (the reference)."""
    placeholder = get_family(family).image_placeholder or ""
    body = "".join(f"{step.strip()}{step_marker}\n" for step in steps)
    return (
        f"<|im_start|>user\n{placeholder * num_images}{question.strip()}<|im_end|>\n"
        f"<|im_start|>assistant\n{body}"
    )


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def backbone(request):
    return build_backbone(request.param, processor_kwargs=PROCESSOR_KWARGS.get(request.param))


def test_tiny_backbone_is_small_and_has_label_tokens(backbone):
    assert 50_000 < backbone.num_parameters() < 1_000_000
    tokenizer = backbone.tokenizer
    plus, minus = backbone.label_token_ids
    assert plus != minus
    assert tokenizer.decode([plus]) == "+" and tokenizer.decode([minus]) == "-"
    assert backbone.step_marker_id == tokenizer.convert_tokens_to_ids("<step>")
    inputs = _inputs(backbone)
    assert int((inputs["input_ids"] == backbone.step_marker_id).sum()) == 3


def test_saved_and_reloaded_backbone_gives_identical_logits(backbone, tmp_path):
    backbone.model.eval()
    inputs = _inputs(backbone)
    with torch.no_grad():
        before = backbone.model(**inputs).logits
    backbone.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    reloaded = build_backbone(backbone.family, path=str(tmp_path), processor_kwargs=backbone.processor_kwargs)
    reloaded.model.eval()
    assert reloaded.label_token_ids == backbone.label_token_ids
    assert reloaded.step_marker_id == backbone.step_marker_id
    reloaded_inputs = _inputs(reloaded)
    assert torch.equal(reloaded_inputs["input_ids"], inputs["input_ids"])
    with torch.no_grad():
        after = reloaded.model(**reloaded_inputs).logits
    assert torch.equal(before, after)


@pytest.mark.parametrize("num_images", [0, 1, 2])
def test_chain_token_ids_are_identical_to_the_old_chatml_string(backbone, num_images):
    """The shipped ChatML template reproduces the old layout token for token, images included."""
    if num_images and not backbone.is_multimodal:
        pytest.skip("text-only family")
    question, steps = "  How many tiles are red? ", [" a = 1 ", "b=2", "Final answer: 3"]
    text = backbone.format_chain(question, steps, num_images)
    old = _old_chatml_text(backbone.family, question, steps, backbone.step_marker, num_images)
    assert text == old
    images = [Image.new("RGB", (56, 56), "red")] * num_images or None
    if backbone.is_multimodal:
        kwargs = backbone.processor_kwargs
        new_ids = backbone.processor(text=[text], images=images, add_special_tokens=False, **kwargs)
        old_ids = backbone.processor(text=[old], images=images, **kwargs)  # the old call
    else:
        new_ids = backbone.tokenizer([text], add_special_tokens=False)
        old_ids = backbone.tokenizer([old])
    assert new_ids["input_ids"] == old_ids["input_ids"]
    assert new_ids["input_ids"][0].count(backbone.step_marker_id) == 3


def test_tiny_chat_template_is_saved_and_reloaded(backbone, tmp_path):
    backbone.save_pretrained(tmp_path)
    assert (tmp_path / "chat_template.jinja").is_file()
    reloaded = build_backbone(backbone.family, path=str(tmp_path), processor_kwargs=backbone.processor_kwargs)
    assert reloaded.chat_template == backbone.chat_template
    n = 1 if backbone.is_multimodal else 0
    assert reloaded.format_chain("Q?", STEPS, n) == backbone.format_chain("Q?", STEPS, n)


def test_special_token_strings_of_the_tiny_qwen2_vl():
    backbone = build_backbone("qwen2_vl")
    assert backbone.special_token_strings == [
        "<step>",
        "<|endoftext|>",
        "<|im_end|>",
        "<|im_start|>",
        "<|image_pad|>",
        "<|video_pad|>",
        "<|vision_end|>",
        "<|vision_start|>",
    ]
    internvl = build_tokenizer("internvl")
    assert {"<IMG_CONTEXT>", "<img>", "</img>", "<video>"} <= set(internvl.all_special_tokens)


# A Llama-3-style template (header tokens, trimmed content, end-of-turn token, BOS written by the template).
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{%- for message in messages -%}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim }}"
    "{{ '<|eot_id|>' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif -%}"
)
LLAMA3_TOKENS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def _save_tiny_llama(directory, chat_template=LLAMA3_TEMPLATE):
    """A tiny random LlamaForCausalLM with a Llama-3-style tokenizer (BOS added by the tokenizer too)."""
    tokenizer = build_tokenizer("qwen2")
    tokenizer.add_special_tokens({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"})
    tokenizer.add_tokens(LLAMA3_TOKENS[1:3], special_tokens=True)
    tokenizer.chat_template = chat_template
    size = TinySize()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        num_key_value_heads=size.num_kv_heads,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return tokenizer


@pytest.mark.parametrize("family", ["causal_lm", "auto"])
def test_any_local_causal_lm_with_a_llama3_template(family, tmp_path):
    _save_tiny_llama(tmp_path)
    backbone = build_backbone(family, path=str(tmp_path))
    assert backbone.family == "causal_lm" and backbone.model_type == "llama"
    assert type(backbone.model) is LlamaForCausalLM and not backbone.is_multimodal
    text = backbone.format_chain("What is 2 + 3?", ["2 + 3 = 5.", "Final answer: 5"])
    # Steps are the assistant content; the turn is left open (no <|eot_id|>); the template trims the
    # content, so the newline after the last marker goes.
    assert text == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2 + 3?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n2 + 3 = 5.<step>\nFinal answer: 5<step>"
    )
    ids = backbone.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids.count(backbone.tokenizer.bos_token_id) == 1  # the template's BOS only
    assert ids.count(backbone.step_marker_id) == 2
    assert {"<|begin_of_text|>", "<|eot_id|>", "<step>"} <= set(backbone.special_token_strings)


def test_causal_lm_without_chat_template_needs_one_configured(tmp_path):
    _save_tiny_llama(tmp_path, chat_template=None)
    with pytest.raises(ValueError, match="has no chat template and none is configured"):
        build_backbone("causal_lm", path=str(tmp_path))
    template = tmp_path / "llama3.jinja"
    template.write_text(LLAMA3_TEMPLATE)
    backbone = build_backbone("causal_lm", path=str(tmp_path), chat_template=str(template))
    assert backbone.format_chain("Q", ["s"]).endswith("<|end_header_id|>\n\ns<step>")
    chatml = build_backbone("causal_lm", path=str(tmp_path), chat_template="chatml")
    assert (
        chatml.format_chain("Q", ["s"]) == "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\ns<step>\n"
    )


# Qwen2-VL-style (a default system turn) and InternVL-style templates, as the real checkpoints ship
# them in spirit: the markers must survive and the assistant turn stay open.
QWEN_VL_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{%- endif -%}"
    "{%- for m in messages -%}{{ '<|im_start|>' + m['role'] + '\n' }}"
    "{%- if m['content'] is string -%}{{ m['content'] }}{%- else -%}{%- for c in m['content'] -%}"
    "{%- if c['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- else -%}{{ c['text'] }}{%- endif -%}{%- endfor -%}{%- endif -%}{{ '<|im_end|>\n' }}{%- endfor -%}"
)
INTERNVL_TEMPLATE = QWEN_VL_TEMPLATE.replace(
    "<|vision_start|><|image_pad|><|vision_end|>", "<IMG_CONTEXT>\\n"
)


@pytest.mark.parametrize(
    "family, template, image",
    [
        ("qwen2_vl", QWEN_VL_TEMPLATE, "<|vision_start|><|image_pad|><|vision_end|>"),
        ("internvl", INTERNVL_TEMPLATE, "<IMG_CONTEXT>\n"),
    ],
)
def test_vlm_templates_keep_markers_and_leave_the_turn_open(family, template, image):
    backbone = build_backbone(family, chat_template=template, processor_kwargs=PROCESSOR_KWARGS.get(family))
    text = backbone.format_chain("How many?", ["one", "two"], 2)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{image}{image}How many?<|im_end|>\n<|im_start|>assistant\none<step>\ntwo<step>\n"
    )
    inputs = _inputs(backbone, num_images=2)
    assert int((inputs["input_ids"] == backbone.step_marker_id).sum()) == 3


def test_a_template_that_drops_markers_is_refused():
    dropping = LLAMA3_TEMPLATE.replace("| trim", "| replace('<step>', '') | trim")
    backbone = build_backbone("qwen2", chat_template=dropping)
    with pytest.raises(ValueError, match="rewrites the assistant turn .the steps and their 2 step markers"):
        backbone.format_chain("Q", ["a", "b"])
    # A template that writes the marker elsewhere: the count catches it.
    extra = "{{ '<|im_start|>system\\nEnd each step with <step>.<|im_end|>\\n' }}" + chatml_template(None)
    backbone = build_backbone("qwen2", chat_template=extra)
    with pytest.raises(ValueError, match="holds 3 step markers, not 2"):
        backbone.format_chain("Q", ["a", "b"])


def test_adding_a_family_is_one_spec(monkeypatch):
    def tiny_mistral(size, tokenizer):
        return MistralConfig(
            vocab_size=len(tokenizer),
            hidden_size=size.hidden_size,
            intermediate_size=size.intermediate_size,
            num_hidden_layers=size.num_layers,
            num_attention_heads=size.num_heads,
            num_key_value_heads=size.num_kv_heads,
            eos_token_id=tokenizer.eos_token_id,
        )

    monkeypatch.setattr(families, "_REGISTRY", dict(families._REGISTRY))
    families.register_family(
        FamilySpec(
            name="mistral",
            model_class=AutoModelForCausalLM,
            model_types=("mistral",),
            tiny_config=tiny_mistral,
        )
    )
    with pytest.raises(ValueError, match="already registered"):
        families.register_family(get_family("mistral"))
    backbone = build_backbone("mistral")
    assert backbone.model_type == "mistral" and backbone.family == "mistral"
    assert int((_inputs(backbone)["input_ids"] == backbone.step_marker_id).sum()) == 3
    with pytest.raises(ValueError, match="unknown backbone family 'nope'"):
        build_backbone("nope")


def test_family_specs_are_consistent():
    for name in family_names():
        spec = get_family(name)
        assert spec.multimodal == (spec.processor_class is not None) == (spec.image_placeholder is not None)
        assert spec.rope in ("default", "mrope")
    assert [n for n in family_names() if get_family(n).rope == "mrope"] == ["qwen2_vl", "qwen2_5_vl"]
    # the README's recipe: every family with a tiny model has its conf/backbone/tiny_<name>.yaml
    conf = Path(__file__).resolve().parents[1] / "conf" / "backbone"
    assert [n for n in TINY_FAMILIES if not (conf / f"tiny_{n}.yaml").is_file()] == []
    with pytest.raises(ValueError, match="needs a processor_class"):
        FamilySpec(name="x", model_class=AutoModelForCausalLM, multimodal=True)
    with pytest.raises(ValueError, match="reads the family from backbone.path"):
        build_backbone("auto")


@pytest.mark.parametrize("family", MULTIMODAL_TINY_FAMILIES)
def test_auto_classes_reload_a_saved_tiny_model(family, tmp_path):
    backbone = build_backbone(family, processor_kwargs=PROCESSOR_KWARGS.get(family))
    backbone.save_pretrained(tmp_path)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path, local_files_only=True)
    processor = AutoProcessor.from_pretrained(tmp_path, local_files_only=True)
    assert type(model) is type(backbone.model)
    assert "video_processor" not in processor.get_attributes()
    assert single_token_id(AutoTokenizer.from_pretrained(tmp_path), "+") == backbone.label_token_ids[0]


def _write_real_layout(backbone, directory):
    """Rewrite a saved tiny model into the file layout of the published checkpoints."""
    backbone.save_pretrained(directory)
    processor_config = json.loads((directory / "processor_config.json").read_text())
    (directory / "processor_config.json").unlink()
    image_config = processor_config["image_processor"]
    if backbone.family == "internvl":
        # InternVL3-1B-hf: fast image processor class name, processor_config.json, a video config.
        image_config.update(
            image_processor_type="GotOcr2ImageProcessorFast", processor_class="InternVLProcessor"
        )
        (directory / "processor_config.json").write_text(
            json.dumps(
                {
                    "image_seq_length": processor_config["image_seq_length"],
                    "processor_class": "InternVLProcessor",
                }
            )
        )
        (directory / "video_preprocessor_config.json").write_text(
            json.dumps(
                {"video_processor_type": "InternVLVideoProcessor", "processor_class": "InternVLProcessor"}
            )
        )
    else:
        # Qwen2-VL-2B-Instruct: legacy preprocessor_config.json with min_pixels / max_pixels.
        image_config = {
            "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": "Qwen2VLProcessor",
            "min_pixels": 3136,
            "max_pixels": 12544,
            "patch_size": 14,
            "merge_size": 2,
            "temporal_patch_size": 2,
            "image_mean": image_config["image_mean"],
            "image_std": image_config["image_std"],
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "do_resize": True,
        }
    (directory / "preprocessor_config.json").write_text(json.dumps(image_config))
    tokenizer_config = json.loads((directory / "tokenizer_config.json").read_text())
    tokenizer_config["tokenizer_class"] = "Qwen2Tokenizer"
    tokenizer_config["processor_class"] = image_config["processor_class"]
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))


@pytest.mark.parametrize("family", MULTIMODAL_TINY_FAMILIES)
def test_loads_real_checkpoint_layout_without_torchvision(family, tmp_path):
    backbone = build_backbone(family, processor_kwargs=PROCESSOR_KWARGS.get(family))
    backbone.model.eval()
    with torch.no_grad():
        expected = backbone.model(**_inputs(backbone)).logits
    _write_real_layout(backbone, tmp_path)
    loaded = build_backbone(family, path=str(tmp_path), processor_kwargs=PROCESSOR_KWARGS.get(family))
    loaded.model.eval()
    with torch.no_grad():
        assert torch.equal(loaded.model(**_inputs(loaded)).logits, expected)


def test_missing_step_marker_is_added_and_embeddings_resized(tmp_path):
    backbone = build_backbone("qwen2")
    backbone.save_pretrained(tmp_path)
    reloaded = build_backbone("qwen2", path=str(tmp_path), step_marker="<verify>")
    assert reloaded.step_marker_id == len(reloaded.tokenizer) - 1
    assert reloaded.model.get_input_embeddings().weight.shape[0] >= len(reloaded.tokenizer)


def test_wrong_family_and_multi_token_label_words_are_refused(tmp_path):
    build_backbone("qwen2").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="holds a 'qwen2' model but backbone.family is 'qwen2_vl'"):
        build_backbone("qwen2_vl", path=str(tmp_path))
    with pytest.raises(ValueError, match="not a single token"):
        build_backbone("qwen2", label_words=["correct step", "-"])
    with pytest.raises(FileNotFoundError, match="no config.json"):
        build_backbone("qwen2", path=str(tmp_path / "nowhere"))
    assert build_backbone("auto", path=str(tmp_path)).family == "qwen2"


def _smollm2_or_skip():
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("GGUF loading needs the optional gguf package: pip install '.[gguf]'")
    from prm.model.gguf_export import smollm2_gguf_path

    try:
        return smollm2_gguf_path()
    except FileNotFoundError as error:
        pytest.skip(f"no SmolLM2 GGUF file: {error}")


def test_gguf_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "gguf" else real_find_spec(name)
    )
    with pytest.raises(ImportError, match="needs the gguf package"):
        build_backbone("causal_lm", path=str(tmp_path), gguf_file="model.gguf")


@pytest.mark.slow
def test_smollm2_gguf_loads_scores_a_chain_and_saves_plainly(tmp_path):
    """SmolLM2-135M-Instruct from its Q4_1 GGUF file (dequantised), through backbone=hf_causal_lm."""
    gguf = _smollm2_or_skip()
    start = time.perf_counter()
    backbone = build_backbone("causal_lm", path=str(gguf.parent), gguf_file=gguf.name)
    print(f"GGUF load {time.perf_counter() - start:.1f} s, {backbone.num_parameters():,} parameters")
    assert backbone.model_type == "llama"
    assert 134_000_000 < backbone.num_parameters() < 135_000_000
    assert backbone.model.dtype == torch.float32
    text = backbone.format_chain("What is 2 + 3?", ["2 + 3 = 5.", "Final answer: 5"])
    assert text.startswith("<|im_start|>system\n") and text.endswith(
        "<|im_start|>assistant\n2 + 3 = 5.<step>\nFinal answer: 5<step>\n"
    )
    assert {"<|im_start|>", "<|im_end|>", "<step>"} <= set(backbone.special_token_strings)
    inputs = backbone.tokenizer([text], return_tensors="pt", add_special_tokens=False)
    positions = (inputs["input_ids"][0] == backbone.step_marker_id).nonzero().flatten()
    batch = {
        "inputs": dict(inputs),
        "marker_positions": positions[None],
        "step_mask": torch.ones(1, 2, dtype=torch.bool),
    }
    prm = ProcessRewardModel(backbone).eval()
    with torch.no_grad():
        probs = prm(batch).probs
    assert probs.shape == (1, 2) and torch.isfinite(probs).all()
    backbone.save_pretrained(tmp_path)  # the GGUF quantiser is gone: it saves as a plain checkpoint
    reloaded = build_backbone("causal_lm", path=str(tmp_path))
    assert reloaded.step_marker_id == backbone.step_marker_id
    with torch.no_grad():
        assert torch.equal(ProcessRewardModel(reloaded).eval()(batch).probs, probs)


# GGUF files with DeepSeek-style special tokens: non-ASCII text (U+FF5C full-width bar, U+2581) in a
# byte-level vocabulary, as BOS / EOS and in the chat template. Written with the gguf package the way
# llama.cpp's converter writes a byte-level model: the vocabulary in the GPT-2 byte spelling, added
# tokens as their text, typed CONTROL.
DS_BOS, DS_EOS, DS_USER, DS_ASSISTANT = (
    "<｜begin▁of▁sentence｜>",
    "<｜end▁of▁sentence｜>",
    "<｜User｜>",
    "<｜Assistant｜>",
)
DEEPSEEK_TEMPLATE = (
    "{{ bos_token }}{%- for m in messages -%}{%- if m['role'] == 'user' -%}{{ '<｜User｜>' + m['content'] }}"
    "{%- else -%}{{ '<｜Assistant｜>' + m['content'] + '<｜end▁of▁sentence｜>' }}{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<｜Assistant｜>' }}{%- endif -%}"
)
DS_SPECIALS = [DS_BOS, DS_EOS, DS_USER, DS_ASSISTANT, "<step>"]
DS_IDS = dict(zip(DS_SPECIALS, range(465, 470)))  # after the 465 tokens of the shipped BPE


def _deepseek_tokenizer():
    vocab, merges = load_shipped_vocab()
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tokenizer.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in DS_SPECIALS], special_tokens=True
    )
    tokenizer.add_special_tokens({"bos_token": DS_BOS, "eos_token": DS_EOS})
    tokenizer.chat_template = DEEPSEEK_TEMPLATE
    return tokenizer


def _llama_permute(weight, heads):
    """llama.cpp's convert_hf_to_gguf.py permutation of a q/k projection (transformers undoes it)."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _write_gguf(path, model, tokens, token_types, template=DEEPSEEK_TEMPLATE, bos=465, eos=466):
    """``model`` (a LlamaForCausalLM) as an F32 GGUF file with this vocabulary and chat template."""
    gguf = pytest.importorskip(
        "gguf", reason="writing GGUF files needs the optional gguf package: pip install '.[gguf]'"
    )
    config = model.config
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges([" ".join(pair) for pair in load_shipped_vocab()[1]])
    writer.add_bos_token_id(bos)
    writer.add_eos_token_id(eos)
    writer.add_add_bos_token(False)
    writer.add_chat_template(template)
    weights = {name: tensor.numpy() for name, tensor in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    writer.add_tensor("output.weight", weights["lm_head.weight"])
    gguf_names = {
        "attn_norm": "input_layernorm", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
        "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }  # fmt: skip
    for layer in range(config.num_hidden_layers):
        hf = f"model.layers.{layer}."
        for gguf_name, hf_name in gguf_names.items():
            writer.add_tensor(f"blk.{layer}.{gguf_name}.weight", weights[hf + hf_name + ".weight"])
        q, k = weights[hf + "self_attn.q_proj.weight"], weights[hf + "self_attn.k_proj.weight"]
        writer.add_tensor(f"blk.{layer}.attn_q.weight", _llama_permute(q, config.num_attention_heads))
        writer.add_tensor(f"blk.{layer}.attn_k.weight", _llama_permute(k, config.num_key_value_heads))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def deepseek_files(tmp_path_factory):
    """One tiny random Llama with a DeepSeek-style tokenizer, saved as safetensors (``st/``, the
    reference) and as GGUF files: ``model.gguf`` (the same vocabulary), ``no_step.gguf`` (another
    control token where ``<step>`` was) and ``eos_twice.gguf`` (the EOS text also at id 468)."""
    pytest.importorskip("gguf", reason="GGUF files need the optional gguf package: pip install '.[gguf]'")
    directory = tmp_path_factory.mktemp("deepseek")
    tokenizer = _deepseek_tokenizer()
    size = TinySize()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        num_key_value_heads=size.num_kv_heads,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory / "st")
    tokenizer.save_pretrained(directory / "st")
    by_id = {token_id: text for text, token_id in tokenizer.get_vocab().items()}
    tokens = [by_id[i] for i in range(len(tokenizer))]
    added = {token.content for token in tokenizer.added_tokens_decoder.values()}
    types = [3 if text in added else 1 for text in tokens]  # 3: CONTROL, 1: NORMAL (gguf.TokenType)
    _write_gguf(directory / "model.gguf", model, tokens, types)
    _write_gguf(directory / "no_step.gguf", model, tokens[:469] + ["<｜place▁holder｜>"], types)
    _write_gguf(directory / "eos_twice.gguf", model, tokens[:468] + [DS_EOS] + tokens[469:], types)
    return directory, model


def _marker_batch(backbone, steps=("2 + 3 = 5.", "Final answer: 5")):
    text = backbone.format_chain("What is 2 + 3?", list(steps))
    inputs = backbone.tokenizer([text], return_tensors="pt", add_special_tokens=False)
    positions = (inputs["input_ids"][0] == backbone.step_marker_id).nonzero().flatten()
    batch = {
        "inputs": dict(inputs),
        "marker_positions": positions[None],
        "step_mask": torch.ones(1, len(steps), dtype=torch.bool),
    }
    return text, batch


def test_gguf_non_ascii_special_tokens_keep_their_ids_and_score_like_safetensors(deepseek_files, caplog):
    directory, model = deepseek_files
    caplog.set_level(logging.INFO, logger="prm.model")
    loaded = build_backbone("causal_lm", path=str(directory), gguf_file="model.gguf")
    reference = build_backbone("causal_lm", path=str(directory / "st"))
    tokenizer = loaded.tokenizer
    for text, token_id in DS_IDS.items():  # each one token, at the id of the GGUF vocabulary
        assert tokenizer.encode(text, add_special_tokens=False) == [token_id]
        assert reference.tokenizer.encode(text, add_special_tokens=False) == [token_id]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (465, 466, 466)
    assert len(tokenizer) == 470 and loaded.step_marker_id == 469
    assert {DS_USER, DS_ASSISTANT, DS_BOS, DS_EOS} <= set(loaded.special_token_strings)
    # No resize: the embedding rows and the LM head are the written weights.
    assert loaded.new_token_ids == () and "vocabulary grew" not in caplog.text
    assert torch.equal(loaded.model.get_input_embeddings().weight, model.model.embed_tokens.weight)
    assert torch.equal(loaded.model.lm_head.weight, model.lm_head.weight)
    for name, parameter in reference.model.named_parameters():  # the F32 GGUF holds the same weights
        assert torch.equal(loaded.model.get_parameter(name), parameter), name
    assert "re-registered 4 GGUF token(s)" in caplog.text
    text, batch = _marker_batch(loaded)
    assert text == f"{DS_BOS}{DS_USER}What is 2 + 3?{DS_ASSISTANT}2 + 3 = 5.<step>\nFinal answer: 5<step>\n"
    reference_text, reference_batch = _marker_batch(reference)
    assert reference_text == text
    assert torch.equal(batch["inputs"]["input_ids"], reference_batch["inputs"]["input_ids"])
    assert batch["inputs"]["input_ids"][0, :2].tolist() == [465, 467]
    # The same weights, the same ids and the same operations on one machine: bit-identical outputs
    # (before the repair the BOS / EOS rows were new random ones and the scores moved).
    with torch.no_grad():
        logits = loaded.model(**batch["inputs"]).logits
        assert torch.equal(logits, reference.model(**reference_batch["inputs"]).logits)
        probs = ProcessRewardModel(loaded).eval()(batch).probs
        assert torch.equal(probs, ProcessRewardModel(reference).eval()(reference_batch).probs)
    assert probs.shape == (1, 2) and torch.isfinite(probs).all()


def test_gguf_resize_log_names_the_tokens_it_adds(deepseek_files, caplog):
    directory, model = deepseek_files
    caplog.set_level(logging.INFO, logger="prm.model.backbones")
    loaded = build_backbone("causal_lm", path=str(directory), gguf_file="no_step.gguf")
    assert loaded.new_token_ids == (470,) and loaded.step_marker_id == 470
    (message,) = [
        record.getMessage() for record in caplog.records if "vocabulary grew" in record.getMessage()
    ]
    assert message.startswith("vocabulary grew from 470 to 471 tokens, adding '<step>': resizing")
    assert loaded.tokenizer.encode(DS_BOS, add_special_tokens=False) == [465]
    embeddings = loaded.model.get_input_embeddings().weight
    assert embeddings.shape == (471, model.config.hidden_size)
    assert torch.equal(embeddings[:470], model.model.embed_tokens.weight)  # only the marker's row is new


def test_gguf_token_on_two_ids_is_a_clear_error(deepseek_files):
    directory, _ = deepseek_files
    # The EOS text is token 466 and token 468: the tokenizer can give it only one id.
    expected = (
        "EOS '<｜end▁of▁sentence｜>': expected id 466 (tokenizer.ggml.eos_token_id of the GGUF file), "
        "encodes to [468] ['<｜end▁of▁sentence｜>']"
    )
    with pytest.raises(TokenizerError, match=re.escape(expected)) as error:
        build_backbone("causal_lm", path=str(directory), gguf_file="eos_twice.gguf")
    assert str(error.value).startswith(f"backbone.gguf_file={directory / 'eos_twice.gguf'}: ")


def test_gguf_export_writes_the_repaired_tokenizer(deepseek_files, tmp_path):
    directory, model = deepseek_files
    facts = export(directory / "model.gguf", tmp_path)
    assert facts["model_type"] == "llama"
    exported = build_backbone("causal_lm", path=str(tmp_path))
    assert exported.new_token_ids == () and len(exported.tokenizer) == 470
    for text, token_id in DS_IDS.items():
        assert exported.tokenizer.encode(text, add_special_tokens=False) == [token_id]


def test_checkpoint_whose_bos_is_not_the_models_is_a_clear_error(tmp_path):
    """A saved tokenizer whose BOS text is not in the vocabulary (transformers appends it as a new
    token) while config.json says BOS is token 465: refused, naming both ids."""
    tokenizer = _deepseek_tokenizer()
    size = TinySize()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=1,
        num_attention_heads=size.num_heads,
        num_key_value_heads=size.num_kv_heads,
        bos_token_id=465,
        eos_token_id=466,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert build_backbone("causal_lm", path=str(tmp_path)).new_token_ids == ()
    tokenizer_config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    tokenizer_config["bos_token"] = "<｜bos｜>"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    expected = (
        f"backbone.path={tmp_path}: the tokenizer does not encode the model's special tokens as the model "
        "was trained: BOS '<｜bos｜>': expected id 465 (the model config's bos_token_id), encodes to [470] "
        "['<｜bos｜>'] (past the model's 470 embedding rows: a new, untrained row). Scores would read"
    )
    with pytest.raises(TokenizerError, match=re.escape(expected)):
        build_backbone("causal_lm", path=str(tmp_path))


def test_expected_special_tokens_of_a_tiny_backbone():
    backbone = build_backbone("qwen2")
    tokenizer = backbone.tokenizer
    expected = expected_special_tokens(tokenizer, backbone.chat_template, backbone.model.config)
    ids = tokenizer.convert_tokens_to_ids
    assert [(t.text, t.role, t.ids) for t in expected] == [
        ("<|endoftext|>", "EOS", (ids("<|endoftext|>"),)),  # also the PAD token
        ("<|im_end|>", "chat-template token", (ids("<|im_end|>"),)),
        ("<|im_start|>", "chat-template token", (ids("<|im_start|>"),)),
    ]
    rows = backbone.model.get_input_embeddings().weight.shape[0]
    check_special_tokens(tokenizer, expected, rows, "tiny")
    wrong = [ExpectedToken("<|im_end|>", "EOS", (0,), "a test")]
    with pytest.raises(TokenizerError, match=r"EOS '<\|im_end\|>': expected id 0 \(a test\), encodes to \["):
        check_special_tokens(tokenizer, wrong, rows, "tiny")
    with pytest.raises(
        TokenizerError, match=r"chat-template token 'a b': expected one token with an id below"
    ):
        check_special_tokens(tokenizer, [ExpectedToken("a b", "chat-template token")], rows, "tiny")
