"""Backbones: tiny offline models of the real architecture classes, or real ones from a local path.

:func:`build_backbone` is what ``conf/backbone/*.yaml`` instantiates. Every per-family fact (Auto
class, processor, special tokens, image placeholder, tiny builder) comes from the family's spec in
:mod:`prm.model.families`. With ``path`` it loads a ``save_pretrained`` directory (one of our
checkpoints, a real Qwen2-VL / Qwen2.5-VL / InternVL-hf checkpoint, or any transformers causal LM
with ``family="auto"``), or a GGUF file in it (``gguf_file``); without it, it builds a randomly
initialised tiny model of ``family`` with the offline tokenizer and image processor. Either way the
BOS / EOS / PAD and chat-template special tokens are checked to be single tokens with the ids the
model was trained with (a GGUF tokenizer's are repaired first, see :mod:`prm.model.tokenizer`), the
step marker is one token (added and the embeddings resized when missing), the label words are looked
up in the tokenizer and chains are formatted by the chat template. Nothing here touches the network.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel

from prm.config import ConfigError
from prm.model import lora as lora_adapters
from prm.model.chat import chatml_template, render_chain
from prm.model.families import AUTO, FamilySpec, TinySize, family_for_config, family_names, get_family
from prm.model.families import is_causal_lm_config as _is_causal_lm_config
from prm.model.prompts import MarkerPrompt, PromptFormat, build_prompt
from prm.model.tokenizer import (
    DEFAULT_STEP_MARKER,
    GgufVocabulary,
    add_step_marker,
    build_tokenizer,
    check_special_tokens,
    expected_special_tokens,
    label_token_ids,
    repair_gguf_tokenizer,
    special_token_strings,
)

log = logging.getLogger(__name__)

__all__ = ["AUTO", "Backbone", "TinySize", "build_backbone", "describe", "family_names"]


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
    # Embedding rows added for the step marker (a checkpoint without it), and with LoRA adapters the
    # peft.PeftModel around ``model`` (which stays the transformers model, adapters injected in place).
    new_token_ids: tuple[int, ...] = ()
    peft_model: Any = None
    tiny_base: dict[str, Any] | None = None  # a tiny random model: what rebuilds it (family, sizes, seed)
    prompt: PromptFormat = field(default_factory=MarkerPrompt)  # the layout chains are scored in

    @property
    def spec(self) -> FamilySpec:
        return get_family(self.family)

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def is_multimodal(self) -> bool:
        return self.spec.multimodal

    @property
    def model_type(self) -> str:
        """``config.json``'s model_type of the loaded model (``llama``, ``qwen2_vl``, ...)."""
        return self.model.config.model_type

    @property
    def chat_template(self) -> str | None:
        return getattr(self.processor, "chat_template", None) or self.tokenizer.chat_template

    @property
    def special_token_strings(self) -> list[str]:
        """Every control-token string of the tokenizer (sorted): named special tokens and every added
        token flagged special (chat delimiters, image tokens, the step marker). Text holding one of
        them would be tokenised as that control token."""
        return special_token_strings(self.tokenizer)

    def format_chain(self, question: str, steps: list[str], num_images: int = 0) -> str:
        """One chain as text in the marker layout, rendered by the backbone's chat template (see
        :mod:`prm.model.chat`); tokenise it with ``add_special_tokens=False``. The collator renders
        through ``self.prompt`` (marker or conversation layout)."""
        return render_chain(
            self.processor,
            question,
            steps,
            self.step_marker,
            num_images,
            self.is_multimodal,
            self.chat_template,
        )

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def save_pretrained(self, directory: str | Path) -> None:
        """The model (with LoRA: the adapter and the base config, see :mod:`prm.model.lora`) and the
        tokenizer / processor, as ``save_pretrained`` files in ``directory``."""
        if self.peft_model is not None:
            lora_adapters.save_adapter(self.peft_model, directory, self.tiny_base)
        else:
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
    chat_template: str | None = None,
    gguf_file: str | None = None,
    lora: dict | lora_adapters.LoraSettings | None = None,
    gradient_checkpointing: bool = False,
    prompt: PromptFormat | dict | str | None = None,
) -> Backbone:
    """Load the backbone at ``path`` or, when ``path`` is None, build a tiny random one of ``family``.

    - ``family``: a registered family name, or ``"auto"`` (needs ``path``): the family of the
      checkpoint's ``config.json`` model_type, ``causal_lm`` for any other causal LM.
    - ``chat_template``: None keeps the checkpoint's own; ``"chatml"`` the suite's ChatML template;
      a path to a ``.jinja`` file or the template text. It is set on the tokenizer / processor, so
      checkpoints save it.
    - ``gguf_file``: a GGUF file name inside ``path`` (or ``path`` may be the ``.gguf`` file itself):
      weights are dequantised to ``dtype``, the tokenizer comes from the GGUF too. Needs the
      ``gguf`` package (``pip install .[gguf]``).
    - ``dtype``: a torch dtype name (``float32``, ``bfloat16``).
    - ``lora``: ``{enabled, r, alpha, dropout, target_modules}`` (:class:`prm.model.lora.LoraSettings`):
      with ``enabled`` the backbone is frozen and adapters are added. A ``path`` holding an adapter
      checkpoint rebuilds its base (the adapter's ``base_model_name_or_path``, or the tiny model its
      ``tiny_base.json`` describes, whatever ``family``/``tiny``/``seed`` say here) and loads the
      adapter: trainable when ``enabled``, else merged into the weights.
    - ``gradient_checkpointing``: recompute layer activations in the backward pass (non-reentrant).
    - ``prompt``: the prompt format (``conf/prompt/*.yaml`` node, name or instance; None: ``marker``),
      see :mod:`prm.model.prompts`.

    Raises ValueError (unknown family, wrong model type, no chat template, bad ``lora`` settings),
    :class:`prm.config.ConfigError` (a ValueError naming ``backbone.label_words``: not two words, one
    that is not a single token, or both the same token), FileNotFoundError (no checkpoint at
    ``path``, an adapter's missing base), ImportError (GGUF without ``gguf``),
    :class:`prm.model.tokenizer.TokenizerError` (a ValueError: a BOS / EOS / PAD or chat-template
    special token that is not one token with the id the model was trained with, after the GGUF repair
    of :func:`prm.model.tokenizer.repair_gguf_tokenizer`).
    """
    settings = lora_adapters.LoraSettings.of(lora)
    adapter = Path(path) if lora_adapters.is_adapter_checkpoint(path) else None
    if adapter is not None:
        path = lora_adapters.adapter_base(adapter)
        if path is None:  # a tiny random base: rebuilt as it was built, not from this run's settings
            saved = lora_adapters.saved_tiny_base(adapter)
            family, tiny, seed = saved["family"], saved["tiny"], saved["seed"]
            step_marker, dtype = saved["step_marker"], saved["dtype"]
    backbone = _build_backbone(
        family, path, tiny, step_marker, label_words, min_pixels, max_pixels, processor_kwargs, dtype, seed,
        attn_implementation, chat_template, gguf_file,
    )  # fmt: skip
    backbone.prompt = build_prompt(prompt)
    if adapter is not None:
        peft_model = lora_adapters.load_lora(backbone.model, adapter, trainable=settings.enabled)
        if settings.enabled:
            backbone.peft_model = peft_model
        else:
            log.info("backbone.lora.enabled=false: merging the adapter of %s into the weights", adapter)
            backbone.model = lora_adapters.merge(peft_model)
            backbone.model.requires_grad_(True)
    elif settings.enabled:
        backbone.peft_model = lora_adapters.add_lora(backbone.model, settings, path, backbone.new_token_ids)
    if gradient_checkpointing:
        lora_adapters.enable_gradient_checkpointing(backbone.model)
    return backbone


def _build_backbone(
    family, path, tiny, step_marker, label_words, min_pixels, max_pixels, processor_kwargs, dtype, seed,
    attn_implementation, chat_template, gguf_file,
) -> Backbone:  # fmt: skip
    torch_dtype = getattr(torch, dtype)
    if path is None:
        if family == AUTO:
            raise ValueError("backbone.family=auto reads the family from backbone.path, which is not set")
        spec = get_family(family)
        if not spec.has_tiny:
            raise ValueError(
                f"backbone family {family!r} has no tiny builder: set backbone.path to a local checkpoint"
            )
        tiny = tiny if isinstance(tiny, TinySize) else TinySize(**(tiny or {}))
        model, processor = _build_tiny(
            spec, tiny, step_marker, min_pixels, max_pixels, seed, attn_implementation
        )
        model = model.to(torch_dtype)
        gguf_vocabulary = None
    else:
        spec, model, processor, gguf_vocabulary = _load_from_path(
            family, Path(path), gguf_file, torch_dtype, attn_implementation
        )
    tokenizer = getattr(processor, "tokenizer", processor)
    _set_chat_template(processor, tokenizer, spec, chat_template, path)
    rows = model.get_input_embeddings().weight.shape[0]
    template = getattr(processor, "chat_template", None) or tokenizer.chat_template
    source = f"the tiny {spec.name} backbone" if path is None else f"backbone.path={path}"
    if gguf_vocabulary is not None:
        source = f"backbone.gguf_file={gguf_vocabulary.path}"
    expected = expected_special_tokens(tokenizer, template, model.config, gguf_vocabulary)
    check_special_tokens(tokenizer, expected, rows, source)
    marker_id = add_step_marker(tokenizer, step_marker)
    new_token_ids = tuple(range(rows, len(tokenizer)))
    if new_token_ids:
        log.info(
            "vocabulary grew from %d to %d tokens, adding %s: resizing the embeddings (new rows drawn from "
            "the mean and covariance of the others)",
            rows,
            len(tokenizer),
            ", ".join(map(repr, tokenizer.convert_ids_to_tokens(list(new_token_ids)))),
        )
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    positive, negative = label_token_ids(tokenizer, label_words)
    special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    reserved = {
        **{i: "a special token" for i in special | set(tokenizer.all_special_ids)},
        marker_id: "the step marker",
    }
    for word, token in zip(label_words, (positive, negative)):
        if token in reserved:
            raise ConfigError(
                f"backbone.label_words={list(label_words)!r}: {word!r} is {reserved[token]} of the tokenizer "
                f"(id {token}); the label words must be ordinary tokens the model can predict as a reply"
            )
    tiny_base = None
    if path is None:
        tiny_base = dict(family=spec.name, tiny=asdict(tiny), seed=seed, step_marker=step_marker, dtype=dtype)
    return Backbone(
        model=model,
        processor=processor,
        family=spec.name,
        step_marker=step_marker,
        step_marker_id=marker_id,
        label_words=(label_words[0], label_words[1]),
        label_token_ids=(positive, negative),
        processor_kwargs=dict(processor_kwargs or {}),
        new_token_ids=new_token_ids,
        tiny_base=tiny_base,
    )


def _set_chat_template(processor, tokenizer, spec: FamilySpec, chat_template: str | None, path) -> None:
    if chat_template is not None:
        if chat_template == "chatml":
            template = chatml_template(spec.image_placeholder)
        elif chat_template.endswith(".jinja"):
            file = Path(chat_template)
            if not file.is_file():
                raise FileNotFoundError(f"backbone.chat_template={chat_template}: no such file")
            template = file.read_text(encoding="utf-8")
        else:
            template = chat_template
        tokenizer.chat_template = template
        if processor is not tokenizer:
            processor.chat_template = template
    owner = processor if spec.multimodal else tokenizer
    if not (getattr(owner, "chat_template", None) or tokenizer.chat_template):
        raise ValueError(
            f"backbone.path={path}: the {type(owner).__name__} has no chat template and none is configured; "
            "set backbone.chat_template to a .jinja file, a template string, or 'chatml'"
        )


def _build_tiny(spec: FamilySpec, size, step_marker, min_pixels, max_pixels, seed, attn_implementation):
    tokenizer = build_tokenizer(spec.name, step_marker)
    tokenizer.padding_side = "right"
    torch.manual_seed(seed)
    config = spec.tiny_config(size, tokenizer)
    model = spec.model_class.from_config(config, attn_implementation=attn_implementation)
    if not spec.multimodal:
        return model, tokenizer
    processor = spec.tiny_processor(size, tokenizer, min_pixels, max_pixels, tokenizer.chat_template)
    return model, processor


def _load_from_path(family: str, path: Path, gguf_file: str | None, torch_dtype, attn_implementation):
    """``(spec, model, processor, gguf_vocabulary)`` of the checkpoint at ``path``; the vocabulary is
    None unless ``gguf_file`` is set, when the tokenizer's GGUF special tokens are also repaired."""
    if path.suffix == ".gguf" and gguf_file is None:
        path, gguf_file = path.parent, path.name
    if gguf_file is not None:
        if importlib.util.find_spec("gguf") is None:
            raise ImportError(
                f"backbone.gguf_file={gguf_file} needs the gguf package: pip install 'prm-suite[gguf]'"
            )
        if not (path / gguf_file).is_file():
            raise FileNotFoundError(f"backbone.gguf_file: no file {path / gguf_file}")
    elif not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"backbone.path={path}: no config.json there (expected a save_pretrained directory)"
        )
    files = dict(local_files_only=True, gguf_file=gguf_file)
    config = AutoConfig.from_pretrained(path, **files)
    source = f"backbone.path={path}" + (f" (gguf_file={gguf_file})" if gguf_file else "")
    if family == AUTO:
        spec = family_for_config(config, source)
    else:
        spec = get_family(family)
        accepted = (
            config.model_type in spec.model_types
            if spec.multimodal
            else config.model_type in spec.model_types or _is_causal_lm_config(config)
        )
        if not accepted:
            raise ValueError(
                f"{source} holds a {config.model_type!r} model but backbone.family is {family!r}"
            )
    model = spec.model_class.from_pretrained(
        path, dtype=torch_dtype, attn_implementation=attn_implementation, **files
    )
    if gguf_file is not None:
        dequantized_gguf_model(model, source)
    if spec.multimodal:
        processor = spec.processor_class.from_pretrained(path, local_files_only=True)
    else:
        processor = AutoTokenizer.from_pretrained(path, **files)
    tokenizer = getattr(processor, "tokenizer", processor)
    gguf_vocabulary = None
    if gguf_file is not None:
        gguf_vocabulary = GgufVocabulary.read(path / gguf_file)
        repair_gguf_tokenizer(tokenizer, gguf_vocabulary)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return spec, model, processor, gguf_vocabulary


def dequantized_gguf_model(model: PreTrainedModel, source: str = "GGUF model") -> PreTrainedModel:
    """Drop the GGUF quantiser of a model whose weights transformers has fully dequantised.

    transformers marks every model loaded from a GGUF file as quantised and refuses to
    ``save_pretrained`` it, even when each tensor was dequantised to an ordinary floating tensor (the
    CPU path). After checking that every parameter is such a tensor, the quantisation config is
    removed, so the model saves and reloads as a plain checkpoint. Raises ValueError when some weights
    are still quantised blocks (a GPU path with a GGUF matmul kernel).
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return model
    packed = [name for name, parameter in model.named_parameters() if not parameter.is_floating_point()]
    if packed:
        raise ValueError(
            f"{source}: {len(packed)} weights are still GGUF-quantised blocks (e.g. {packed[0]}); "
            "the suite trains dequantised weights only"
        )
    quantizer.remove_quantization_config(model)
    return model


def describe(backbone: Backbone) -> str:
    return json.dumps(
        {
            "family": backbone.family,
            "model_type": backbone.model_type,
            "parameters": backbone.num_parameters(),
            "vocab": len(backbone.tokenizer),
            "step_marker_id": backbone.step_marker_id,
            "label_token_ids": backbone.label_token_ids,
        }
    )
