"""Backbone families: one :class:`FamilySpec` per family, the single table every other part reads.

A family says which transformers Auto class loads the model, which ``config.json`` model types it
accepts, whether it reads images (and through which processor class and image placeholder), the
named special tokens of its tokenizer, the kind of rotary position embedding of its text model
(:func:`prm.model.positions.position_ids` reads it), where its decoder stack sits and whether its
layers are the Llama layer (:mod:`prm.model.last_layer` and :mod:`prm.model.prefix_cache` read it),
and how to build a tiny random model of it offline. :mod:`prm.model.backbones`,
:mod:`prm.model.tokenizer`, :mod:`prm.model.chat` and :mod:`prm.model.processors` all look their
per-family facts up here; the tests take their family lists from :func:`family_names`.

Adding a family = one :func:`register_family` call (a spec) and one ``conf/backbone/<name>.yaml``
(plus a processor class in :mod:`prm.model.processors` for a multimodal family that needs one).

``causal_lm`` is the family of any local transformers causal language model (Llama, Qwen2/2.5/3,
Mistral, SmolLM, ...): ``AutoModelForCausalLM`` picks the architecture from the checkpoint's
``config.json`` (its ``model_type``); its tiny model is a random Llama. ``build_backbone(family=
"auto", path=...)`` picks the family itself: the spec listing the ``model_type``, else ``causal_lm``
for every text model that ``AutoModelForCausalLM`` knows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from transformers import (
    CONFIG_MAPPING,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    GotOcr2ImageProcessorPil,
    InternVLConfig,
    LlamaConfig,
    PretrainedConfig,
    Qwen2_5_VLConfig,
    Qwen2Config,
    Qwen2VLConfig,
    Qwen2VLImageProcessorPil,
    Qwen3Config,
)

from prm.model.processors import (
    InternVLImageOnlyProcessor,
    Qwen2_5_VLImageOnlyProcessor,
    Qwen2VLImageOnlyProcessor,
)

ROPE_KINDS = ("default", "mrope")
AUTO = "auto"


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


@dataclass(frozen=True)
class DecoderLayout:
    """Where a family's decoder stack sits in its base model, and which decoders have the Llama layer.

    - ``stack``: the attribute path (dotted) of the base model (``model.model``) to the module that
      holds the decoder's ``layers`` and final ``norm``: ``""`` when the base model is the decoder
      itself (text models), ``"language_model"`` for the multimodal base models of transformers.
    - ``llama_like``: the ``model_type`` values of that decoder's config whose layers are the
      Llama pre-norm layer (``input_layernorm -> self_attn -> post_attention_layernorm -> mlp``,
      rotary positions ``x cos + rotate_half(x) sin``), which :mod:`prm.model.last_layer` can run at
      the score positions only; empty: the family always runs its full last layer.
    """

    stack: str = ""
    llama_like: tuple[str, ...] = ()


@dataclass(frozen=True)
class FamilySpec:
    """Everything the suite knows about one backbone family.

    - ``model_class``: the Auto class that builds / loads the model.
    - ``model_types``: the ``config.json`` ``model_type`` values a checkpoint of this family has;
      empty for ``causal_lm`` (any causal LM).
    - ``special_tokens``: named special tokens of the tokenizer (attribute name -> token string, as
      the real ``tokenizer_config.json`` declares them); the tiny tokenizer adds them.
    - ``image_placeholder``: the text the chat template writes for one image (the processor expands
      it into the image's tokens); None for text-only families.
    - ``processor_class``: the (video-free) processor of a multimodal family; None for text-only.
    - ``rope``: ``default`` (1-D positions) or ``mrope`` (Qwen-VL's 3-D time/height/width positions,
      from the base model's ``get_rope_index``); :func:`prm.model.positions.position_ids` keys on it.
    - ``decoder``: the :class:`DecoderLayout` of its base model (default: the base model is the
      decoder and its last layer always runs whole).
    - ``tiny_config``: ``(TinySize, tokenizer) -> PretrainedConfig`` of a random tiny model, or None.
    - ``tiny_processor``: ``(TinySize, tokenizer, min_pixels, max_pixels, chat_template) -> processor``.
    """

    name: str
    model_class: type
    model_types: tuple[str, ...] = ()
    multimodal: bool = False
    special_tokens: dict[str, str] = field(default_factory=dict)
    image_placeholder: str | None = None
    processor_class: type | None = None
    rope: str = "default"
    decoder: DecoderLayout = field(default_factory=DecoderLayout)
    tiny_config: Callable[[TinySize, Any], PretrainedConfig] | None = None
    tiny_processor: Callable[..., Any] | None = None

    def __post_init__(self):
        if self.rope not in ROPE_KINDS:
            raise ValueError(f"family {self.name!r}: rope must be one of {ROPE_KINDS}, got {self.rope!r}")
        if self.multimodal and (self.processor_class is None or self.image_placeholder is None):
            raise ValueError(
                f"multimodal family {self.name!r} needs a processor_class and an image_placeholder"
            )

    @property
    def has_tiny(self) -> bool:
        return self.tiny_config is not None


_REGISTRY: dict[str, FamilySpec] = {}


def register_family(spec: FamilySpec, exist_ok: bool = False) -> FamilySpec:
    """Add ``spec`` to the registry (``exist_ok`` replaces a spec of the same name)."""
    if spec.name in _REGISTRY and not exist_ok:
        raise ValueError(f"backbone family {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    if spec.processor_class is not None:
        # AutoProcessor.from_pretrained(dir) then builds the video-free processor for these model types.
        for model_type in spec.model_types:
            AutoProcessor.register(CONFIG_MAPPING[model_type], spec.processor_class, exist_ok=True)
    return spec


def family_names(
    *, tiny: bool | None = None, multimodal: bool | None = None, rope: str | None = None
) -> tuple[str, ...]:
    """Registered family names, in registration order; each filter that is not None keeps only the
    families with a tiny builder (``tiny``), that read images (``multimodal``) or of that ``rope``."""
    return tuple(
        name
        for name, spec in _REGISTRY.items()
        if (tiny is None or spec.has_tiny == tiny)
        and (multimodal is None or spec.multimodal == multimodal)
        and (rope is None or spec.rope == rope)
    )


def get_family(name: str) -> FamilySpec:
    """The spec of ``name``; ValueError naming the registered families when unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown backbone family {name!r}; expected one of {family_names()}") from None


def family_for_config(config: PretrainedConfig, source: str = "config") -> FamilySpec:
    """The family of a loaded ``config.json``: the spec listing its ``model_type``, else ``causal_lm``
    when ``AutoModelForCausalLM`` can build it; ValueError naming ``source`` otherwise."""
    for spec in _REGISTRY.values():
        if config.model_type in spec.model_types:
            return spec
    if is_causal_lm_config(config):
        return _REGISTRY["causal_lm"]
    raise ValueError(
        f"{source}: model_type {config.model_type!r} is neither a registered family "
        f"({family_names()}) nor a causal language model transformers knows"
    )


def is_causal_lm_config(config: PretrainedConfig) -> bool:
    return type(config) in AutoModelForCausalLM._model_mapping


def family_of_model(model) -> FamilySpec | None:
    """The family of a model or base model (from its ``config``): None when no family takes it."""
    config = getattr(model, "config", None)
    if not isinstance(config, PretrainedConfig):
        return None
    try:
        return family_for_config(config)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------------
# The built-in families.


def _text_config(size: TinySize, vocab_size: int, eos_token_id: int, mrope: bool) -> dict:
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


def _qwen2_config(size: TinySize, tokenizer) -> PretrainedConfig:
    return Qwen2Config(**_text_config(size, len(tokenizer), tokenizer.eos_token_id, mrope=False))


def _qwen3_config(size: TinySize, tokenizer) -> PretrainedConfig:
    # Qwen3 sets head_dim itself (128 by default) rather than hidden_size / heads
    config = _text_config(size, len(tokenizer), tokenizer.eos_token_id, mrope=False)
    return Qwen3Config(**config, head_dim=size.hidden_size // size.num_heads)


def _llama_config(size: TinySize, tokenizer) -> PretrainedConfig:
    # The tiny stand-in of the causal_lm family: transformers' Llama architecture.
    return LlamaConfig(**_text_config(size, len(tokenizer), tokenizer.eos_token_id, mrope=False))


def _qwen_vl_ids(tokenizer) -> dict[str, int]:
    return dict(
        image_token_id=tokenizer.image_token_id,
        video_token_id=tokenizer.video_token_id,
        vision_start_token_id=tokenizer.convert_tokens_to_ids(tokenizer.vision_start_token),
        vision_end_token_id=tokenizer.convert_tokens_to_ids(tokenizer.vision_end_token),
    )


def _qwen2_vl_config(size: TinySize, tokenizer) -> PretrainedConfig:
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
    return Qwen2VLConfig(
        text_config=_text_config(size, len(tokenizer), tokenizer.eos_token_id, mrope=True),
        vision_config=vision,
        tie_word_embeddings=True,
        **_qwen_vl_ids(tokenizer),
    )


def _qwen2_5_vl_config(size: TinySize, tokenizer) -> PretrainedConfig:
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
    return Qwen2_5_VLConfig(
        text_config=_text_config(size, len(tokenizer), tokenizer.eos_token_id, mrope=True),
        vision_config=vision,
        tie_word_embeddings=True,
        **_qwen_vl_ids(tokenizer),
    )


def _qwen_vl_processor(processor_class):
    def build(size: TinySize, tokenizer, min_pixels: int, max_pixels: int, chat_template: str | None):
        image_processor = Qwen2VLImageProcessorPil(
            min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, merge_size=2, temporal_patch_size=2
        )
        return processor_class(image_processor, tokenizer, chat_template=chat_template)

    return build


def _internvl_config(size: TinySize, tokenizer) -> PretrainedConfig:
    side = size.image_size
    return InternVLConfig(
        text_config={
            "model_type": "qwen2",
            **_text_config(size, len(tokenizer), tokenizer.eos_token_id, mrope=False),
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


def _internvl_processor(size: TinySize, tokenizer, min_pixels, max_pixels, chat_template):
    side = size.image_size
    image_processor = GotOcr2ImageProcessorPil(size={"height": side, "width": side}, crop_to_patches=False)
    image_seq_length = int((side // 14) ** 2 * 0.25)  # patches after the 0.5 pixel-shuffle downsample
    return InternVLImageOnlyProcessor(
        image_processor, tokenizer, image_seq_length=image_seq_length, chat_template=chat_template
    )


_QWEN_VISION_TOKENS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
}
_QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"

register_family(
    FamilySpec(
        name="qwen2",
        model_class=AutoModelForCausalLM,
        model_types=("qwen2",),
        decoder=DecoderLayout(llama_like=("qwen2",)),
        tiny_config=_qwen2_config,
    )
)
register_family(
    FamilySpec(
        name="qwen2_vl",
        model_class=AutoModelForImageTextToText,
        model_types=("qwen2_vl",),
        multimodal=True,
        special_tokens=_QWEN_VISION_TOKENS,
        image_placeholder=_QWEN_IMAGE,
        processor_class=Qwen2VLImageOnlyProcessor,
        rope="mrope",
        decoder=DecoderLayout("language_model", llama_like=("qwen2_vl_text",)),
        tiny_config=_qwen2_vl_config,
        tiny_processor=_qwen_vl_processor(Qwen2VLImageOnlyProcessor),
    )
)
register_family(
    FamilySpec(
        name="qwen2_5_vl",
        model_class=AutoModelForImageTextToText,
        model_types=("qwen2_5_vl",),
        multimodal=True,
        special_tokens=_QWEN_VISION_TOKENS,
        image_placeholder=_QWEN_IMAGE,
        processor_class=Qwen2_5_VLImageOnlyProcessor,
        rope="mrope",
        decoder=DecoderLayout("language_model", llama_like=("qwen2_5_vl_text",)),
        tiny_config=_qwen2_5_vl_config,
        tiny_processor=_qwen_vl_processor(Qwen2_5_VLImageOnlyProcessor),
    )
)
register_family(
    FamilySpec(
        name="internvl",
        model_class=AutoModelForImageTextToText,
        model_types=("internvl",),
        multimodal=True,
        special_tokens={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
        image_placeholder="<IMG_CONTEXT>\n",
        processor_class=InternVLImageOnlyProcessor,
        # InternVL-hf checkpoints: Qwen2/2.5 (InternVL2.5/3), Qwen3 (InternVL3.5) or Llama text models
        decoder=DecoderLayout("language_model", llama_like=("llama", "mistral", "qwen2", "qwen3")),
        tiny_config=_internvl_config,
        tiny_processor=_internvl_processor,
    )
)
register_family(
    FamilySpec(
        name="qwen3",
        model_class=AutoModelForCausalLM,
        model_types=("qwen3",),
        decoder=DecoderLayout(llama_like=("qwen3",)),
        tiny_config=_qwen3_config,
    )
)
register_family(
    FamilySpec(
        name="causal_lm",
        model_class=AutoModelForCausalLM,
        decoder=DecoderLayout(llama_like=("llama", "mistral", "qwen2", "qwen3")),
        tiny_config=_llama_config,
    )
)
