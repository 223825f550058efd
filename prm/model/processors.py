"""Processors that work without torchvision: the families' processors minus their video processor.

transformers' stock Qwen2-VL / Qwen2.5-VL / InternVL processors build a video processor, which needs
torchvision (absent here, and useless to a PRM that scores images). Each subclass below lists its
sub-processors explicitly in ``__init__`` (image processor + tokenizer), so ``ProcessorMixin`` neither
builds nor saves a video processor. They are registered with ``AutoProcessor`` for their model types,
so ``AutoProcessor.from_pretrained(dir)`` works on our checkpoints and on real checkpoint layouts.
Image processors are the PIL backends (no torchvision either).
"""

from __future__ import annotations

from transformers import (
    AutoProcessor,
    InternVLConfig,
    InternVLProcessor,
    Qwen2_5_VLConfig,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLProcessor,
)


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


PROCESSOR_FOR_MODEL_TYPE = {
    "qwen2_vl": Qwen2VLImageOnlyProcessor,
    "qwen2_5_vl": Qwen2_5_VLImageOnlyProcessor,
    "internvl": InternVLImageOnlyProcessor,
}

for _config, _processor in (
    (Qwen2VLConfig, Qwen2VLImageOnlyProcessor),
    (Qwen2_5_VLConfig, Qwen2_5_VLImageOnlyProcessor),
    (InternVLConfig, InternVLImageOnlyProcessor),
):
    AutoProcessor.register(_config, _processor, exist_ok=True)
