"""Chat formatting of a chain: one sequence per chain, a step marker after every step.

The PRM reads ``question + image(s)`` as the user turn and the steps as the assistant turn, each
step followed by the dedicated step marker token; the hidden state at each marker scores that step,
so every step of a chain is scored in one forward pass. The layout follows each family's ChatML
conversation format, with the family's image placeholder (which the processor expands into the
right number of image tokens).
"""

from __future__ import annotations

IMAGE_PLACEHOLDER = {
    "qwen2": None,
    "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "internvl": "<IMG_CONTEXT>\n",
}


def format_chain(family: str, question: str, steps: list[str], step_marker: str, num_images: int) -> str:
    """The text of one chain: ChatML user turn (images + question), assistant turn (marked steps)."""
    placeholder = IMAGE_PLACEHOLDER[family]
    if num_images and placeholder is None:
        raise ValueError(f"family {family!r} is text-only but the chain has {num_images} image(s)")
    images = (placeholder or "") * num_images
    body = "".join(f"{step.strip()}{step_marker}\n" for step in steps)
    return f"<|im_start|>user\n{images}{question.strip()}<|im_end|>\n<|im_start|>assistant\n{body}"
