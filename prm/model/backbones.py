"""Backbones: tiny offline models of the real architecture classes, or real ones from a local path.

:func:`build_backbone` is what ``conf/backbone/*.yaml`` instantiates. With ``path`` it loads a
``save_pretrained`` directory (one of our checkpoints or a real checkpoint such as Qwen2-VL-2B or
InternVL3-1B-hf) with the Auto classes and the video-free processors; without it, it builds a
randomly initialised tiny model of ``family`` with the offline tokenizer and image processor. Either
way the step marker is one token (added and the embeddings resized when missing) and the label
words are looked up in the tokenizer. Nothing here touches the network.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoTokenizer,
    GotOcr2ImageProcessorPil,
    InternVLConfig,
    PreTrainedModel,
    Qwen2_5_VLConfig,
    Qwen2Config,
    Qwen2VLConfig,
    Qwen2VLImageProcessorPil,
)

from prm.model.processors import PROCESSOR_FOR_MODEL_TYPE
from prm.model.tokenizer import DEFAULT_STEP_MARKER, add_step_marker, build_tokenizer, single_token_id

log = logging.getLogger(__name__)

FAMILIES = ("qwen2", "qwen2_vl", "qwen2_5_vl", "internvl")
VISION_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "internvl")


@dataclass
class TinySize:
    """Sizes of a tiny random backbone (a few hundred thousand parameters by default)."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    vision_hidden_size: int = 32
    vision_layers: int = 1
    vision_heads: int = 2
    image_size: int = 56  # InternVL input side; Qwen image sides are set by min/max pixels
    max_position_embeddings: int = 2048


@dataclass
class Backbone:
    """A language model (multimodal or not) plus what the PRM needs to read its outputs."""

    model: PreTrainedModel
    processor: Any  # a ProcessorMixin for vision families, the tokenizer for text-only ones
    family: str
    step_marker: str
    step_marker_id: int
    label_words: tuple[str, str]
    label_token_ids: tuple[int, int]
    processor_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def is_multimodal(self) -> bool:
        return self.family in VISION_FAMILIES

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def save_pretrained(self, directory: str | Path) -> None:
        self.model.save_pretrained(directory, safe_serialization=True)
        self.processor.save_pretrained(directory)


def build_backbone(
    family: str = "qwen2_vl",
    path: str | None = None,
    tiny: dict | TinySize | None = None,
    step_marker: str = DEFAULT_STEP_MARKER,
    label_words: tuple[str, str] | list[str] = ("+", "-"),
    min_pixels: int = 56 * 56,
    max_pixels: int = 112 * 112,
    processor_kwargs: dict | None = None,
    dtype: str = "float32",
    seed: int = 0,
    attn_implementation: str = "sdpa",
) -> Backbone:
    """Load the backbone at ``path`` or, when ``path`` is None, build a tiny random one of ``family``."""
    if family not in FAMILIES:
        raise ValueError(f"unknown backbone family {family!r}; expected one of {FAMILIES}")
    torch_dtype = getattr(torch, dtype)
    if path is None:
        tiny = tiny if isinstance(tiny, TinySize) else TinySize(**(tiny or {}))
        model, processor = _build_tiny(
            family, tiny, step_marker, min_pixels, max_pixels, seed, attn_implementation
        )
        model = model.to(torch_dtype)
    else:
        model, processor = _load_from_path(family, Path(path), torch_dtype, attn_implementation)
    tokenizer = getattr(processor, "tokenizer", processor)
    marker_id = add_step_marker(tokenizer, step_marker)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        log.info("vocabulary grew to %d (step marker %r): resizing embeddings", len(tokenizer), step_marker)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    if len(label_words) != 2:
        raise ValueError(f"label_words must be two words (positive, negative), got {label_words!r}")
    positive, negative = (single_token_id(tokenizer, word) for word in label_words)
    return Backbone(
        model=model,
        processor=processor,
        family=family,
        step_marker=step_marker,
        step_marker_id=marker_id,
        label_words=(label_words[0], label_words[1]),
        label_token_ids=(positive, negative),
        processor_kwargs=dict(processor_kwargs or {}),
    )


def _text_config(size: TinySize, vocab_size: int, mrope: bool, eos_token_id: int) -> dict:
    head_dim = size.hidden_size // size.num_heads
    config = dict(
        vocab_size=vocab_size,
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        num_key_value_heads=size.num_kv_heads,
        max_position_embeddings=size.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
    )
    if mrope:
        # mrope_section splits head_dim/2 rotary frequencies over (time, height, width).
        half = head_dim // 2
        section = [half - 2 * (half // 3), half // 3, half // 3]
        config["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section}
    return config


def _build_tiny(family, size, step_marker, min_pixels, max_pixels, seed, attn_implementation):
    tokenizer = build_tokenizer(family, step_marker)
    tokenizer.padding_side = "right"
    vocab = len(tokenizer)
    torch.manual_seed(seed)
    if family == "qwen2":
        config = Qwen2Config(**_text_config(size, vocab, mrope=False, eos_token_id=tokenizer.eos_token_id))
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
        return model, tokenizer

    if family == "internvl":
        side = size.image_size
        config = InternVLConfig(
            text_config={
                "model_type": "qwen2",
                **_text_config(size, vocab, mrope=False, eos_token_id=tokenizer.eos_token_id),
            },
            vision_config={
                "hidden_size": size.vision_hidden_size,
                "num_hidden_layers": size.vision_layers,
                "num_attention_heads": size.vision_heads,
                "intermediate_size": 2 * size.vision_hidden_size,
                "image_size": [side, side],
                "patch_size": [14, 14],
            },
            image_token_id=tokenizer.context_image_token_id,
            downsample_ratio=0.5,
            tie_word_embeddings=True,
        )
        image_processor = GotOcr2ImageProcessorPil(
            size={"height": side, "width": side}, crop_to_patches=False
        )
        image_seq_length = int((side // 14) ** 2 * 0.25)
        processor = PROCESSOR_FOR_MODEL_TYPE["internvl"](
            image_processor, tokenizer, image_seq_length=image_seq_length
        )
    else:
        vision_ids = dict(
            image_token_id=tokenizer.image_token_id,
            video_token_id=tokenizer.video_token_id,
            vision_start_token_id=tokenizer.convert_tokens_to_ids(tokenizer.vision_start_token),
            vision_end_token_id=tokenizer.convert_tokens_to_ids(tokenizer.vision_end_token),
        )
        if family == "qwen2_vl":
            vision = {
                "depth": size.vision_layers,
                "embed_dim": size.vision_hidden_size,
                "hidden_size": size.hidden_size,
                "num_heads": size.vision_heads,
                "mlp_ratio": 2,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
            }
            config_class = Qwen2VLConfig
        else:
            vision = {
                "depth": size.vision_layers,
                "hidden_size": size.vision_hidden_size,
                "out_hidden_size": size.hidden_size,
                "intermediate_size": 2 * size.vision_hidden_size,
                "num_heads": size.vision_heads,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
                "window_size": 56,
                "fullatt_block_indexes": list(range(size.vision_layers)),
            }
            config_class = Qwen2_5_VLConfig
        config = config_class(
            text_config=_text_config(size, vocab, mrope=True, eos_token_id=tokenizer.eos_token_id),
            vision_config=vision,
            tie_word_embeddings=True,
            **vision_ids,
        )
        image_processor = Qwen2VLImageProcessorPil(
            min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, merge_size=2, temporal_patch_size=2
        )
        processor = PROCESSOR_FOR_MODEL_TYPE[family](image_processor, tokenizer)
    model = AutoModelForImageTextToText.from_config(config, attn_implementation=attn_implementation)
    return model, processor


def _load_from_path(family, path: Path, torch_dtype, attn_implementation):
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"backbone.path={path}: no config.json there (expected a save_pretrained directory)"
        )
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if config.model_type != family and not (family == "qwen2" and config.model_type in ("qwen2", "llama")):
        raise ValueError(
            f"backbone.path={path} holds a {config.model_type!r} model but backbone.family is {family!r}"
        )
    kwargs = dict(local_files_only=True, dtype=torch_dtype, attn_implementation=attn_implementation)
    if family in VISION_FAMILIES:
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
        processor = PROCESSOR_FOR_MODEL_TYPE[family].from_pretrained(path, local_files_only=True)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        processor = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tokenizer = getattr(processor, "tokenizer", processor)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, processor


def describe(backbone: Backbone) -> str:
    return json.dumps(
        {
            "family": backbone.family,
            "parameters": backbone.num_parameters(),
            "vocab": len(backbone.tokenizer),
            "step_marker_id": backbone.step_marker_id,
            "label_token_ids": backbone.label_token_ids,
        }
    )
