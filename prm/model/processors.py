"""Processors that work without torchvision: the families' processors minus their video processor.

transformers' stock Qwen2-VL / Qwen2.5-VL / InternVL processors build a video processor, which needs
torchvision (absent here, and useless to a PRM that scores images). Each subclass below lists its
sub-processors explicitly in ``__init__`` (image processor + tokenizer), so ``ProcessorMixin`` neither
builds nor saves a video processor. The family specs (:mod:`prm.model.families`) name them and register
them with ``AutoProcessor`` for their model types, so ``AutoProcessor.from_pretrained(dir)`` works on
our checkpoints and on real checkpoint layouts.
Image processors are the PIL backends (no torchvision either).
"""

from __future__ import annotations

from transformers import InternVLProcessor, Qwen2_5_VLProcessor, Qwen2VLProcessor


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    """Qwen2-VL processor with images only (no video processor, so no torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class Qwen2_5_VLImageOnlyProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor with images only (no video processor, so no torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class InternVLImageOnlyProcessor(InternVLProcessor):
    """InternVL (-hf layout) processor with images only (no video processor, so no torchvision)."""

    def __init__(
        self, image_processor=None, tokenizer=None, image_seq_length: int = 256, chat_template=None, **kwargs
    ):
        super().__init__(
            image_processor,
            tokenizer,
            None,
            image_seq_length=image_seq_length,
            chat_template=chat_template,
            **kwargs,
        )
