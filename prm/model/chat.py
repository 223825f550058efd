"""Chat formatting of a chain with the backbone's own chat template, a step marker after every step.

A chain is one conversation of two turns: the user turn holds the image(s) and the question, the
assistant turn holds the steps, each followed by the dedicated step marker token and a newline. The
hidden state at each marker scores its step, so every step of a chain is scored in one forward pass.

The text is rendered by the tokenizer's / processor's ``apply_chat_template`` with
``continue_final_message=True``: transformers renders the whole conversation (steps as the assistant
message's content) and cuts it right after that content, so the assistant turn is left open (no
end-of-turn token after the last step) the same way for every template, Llama-3, Qwen, SmolLM/ChatML
or InternVL alike. Templates that trim message content (Llama-3 does) drop the newline after the last
marker, which does not change any marker's hidden state (attention is causal). The markers are
checked after rendering: a template that rewrites or drops them is refused with a clear error.

The tiny families ship :func:`chatml_template`, a plain ChatML template (saved with the tokenizer
and processor), whose rendering is exactly the layout the suite has always used:
``<|im_start|>user\\n{images}{question}<|im_end|>\\n<|im_start|>assistant\\n{step}<step>\\n...``.
"""

from __future__ import annotations

import json
from typing import Any


def chatml_template(image_placeholder: str | None) -> str:
    """A ChatML Jinja template; ``{"type": "image"}`` content parts render as ``image_placeholder``.

    No system turn is added. With ``add_generation_prompt`` the assistant turn is opened.
    """
    image = json.dumps(image_placeholder or "")
    return (
        "{%- for message in messages -%}"
        "{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{%- if message['content'] is string -%}{{ message['content'] }}"
        "{%- else -%}{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'image' -%}{{ " + image + " }}"
        "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}"
        "{{ '<|im_end|>\\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
    )


def chain_messages(
    question: str, steps: list[str], step_marker: str, num_images: int, multimodal: bool
) -> list[dict[str, Any]]:
    """The conversation of one chain: user (images + question), assistant (marked steps).

    Multimodal families get the user content as typed parts (``{"type": "image"}`` per image, then
    the text), the form processor templates expect; text-only ones get plain strings, the form every
    text template accepts.
    """
    if num_images and not multimodal:
        raise ValueError(f"the backbone is text-only but the chain has {num_images} image(s)")
    body = "".join(f"{step.strip()}{step_marker}\n" for step in steps)
    if multimodal:
        user: Any = [{"type": "image"}] * num_images + [{"type": "text", "text": question.strip()}]
    else:
        user = question.strip()
    return [{"role": "user", "content": user}, {"role": "assistant", "content": body}]


def render_chain(
    template_owner: Any,
    question: str,
    steps: list[str],
    step_marker: str,
    num_images: int,
    multimodal: bool,
    chat_template: str | None = None,
) -> str:
    """The text of one chain, rendered by ``template_owner.apply_chat_template`` (a tokenizer or a
    processor), assistant turn left open after the last step.

    ``chat_template`` overrides the owner's template. Raises ValueError when the owner has no chat
    template, or when the rendering lost step markers (a template that rewrites assistant content).
    Tokenise the result with ``add_special_tokens=False``: the template writes the special tokens
    (a Llama-3 template writes its BOS itself).
    """
    template = chat_template or getattr(template_owner, "chat_template", None)
    if not template:
        raise ValueError(
            f"{type(template_owner).__name__} has no chat template; set backbone.chat_template "
            "(a .jinja file, a template string, or 'chatml')"
        )
    messages = chain_messages(question, steps, step_marker, num_images, multimodal)
    expected = messages[-1]["content"].count(step_marker)
    refused = (
        f"the chat template rewrites the assistant turn (the steps and their {expected} step markers "
        f"{step_marker!r}), so it cannot format chains"
    )
    try:
        text = template_owner.apply_chat_template(
            messages, chat_template=template, tokenize=False, continue_final_message=True
        )
    except ValueError as error:
        if "continue_final_message" not in str(error):
            raise
        # transformers could not find the assistant content in the rendering: it was rewritten.
        raise ValueError(f"{refused}: {error}") from error
    if isinstance(text, list):  # some processors return one string per conversation
        (text,) = text
    if text.count(step_marker) != expected:
        raise ValueError(
            f"the rendering holds {text.count(step_marker)} step markers, not {expected}: {refused}"
        )
    return text
