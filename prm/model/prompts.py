"""Prompt formats: how a chain becomes one model input, and where each step's score is read.

A chain is always scored in one forward pass; the ``prompt`` config group picks the layout:

- ``marker`` (:class:`MarkerPrompt`, the default): one conversation of two turns, the user turn holding
  the images and the question, the assistant turn holding the steps, each followed by the step marker
  token (``backbone.step_marker``) and a newline (:mod:`prm.model.chat`). A step is scored at its
  marker: the hidden state there is read by the PRM head.
- ``conversation`` (:class:`ConversationPrompt`): the multi-turn layout of VisualPRM and DreamPRM-1.5,
  in which those published PRMs were trained. An optional system prompt; the first user turn holds the
  images, ``### Question:`` and the question and (by default) the first step after
  ``### Solution Process:``; every later step is a new user turn; after each step the assistant
  replies with one label word (``backbone.label_words``, ``+`` / ``-`` by default). The whole
  conversation, replies included, is rendered by the model's own chat template and run once: the
  replies are teacher-forced, and the score of step k is read at the position that predicts reply k
  (the token just before it), where P(+) renormalised over the two label words is what the model
  would answer after seeing the conversation up to step k. Attention is causal, so that equals
  scoring the conversation cut right before reply k, one forward pass per step
  (``tests/test_prompts.py`` checks it to 1e-5).

  What the teacher-forced replies hold (``replies``): ``label`` (default, as in the published
  training files) writes each training step's own label word (the positive one for a label >= 0.5,
  the negative one below, the positive one for an unlabelled step); chains without step labels (meta,
  validation, test, ProcessBench) always get the positive word, as the published meta and evaluation
  files do. ``positive`` writes the positive word everywhere, so training sees what evaluation sees.

The conversation is rendered prefix by prefix (one rendering per reply) to learn where each reply
sits in the text; a template that renders earlier turns differently once later turns follow, or that
does not write a reply as exactly one label token, is refused with an error naming the problem.
Rendering never tokenises; :meth:`PromptFormat.score_positions` finds the positions in the token ids
of the rendered text (tokenised with ``add_special_tokens=False``, right-padded), also after a
processor expanded the image placeholders of the first turn, and with padding on either side.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

FIRST_STEP = ("with_question", "own_turn")
REPLIES = ("label", "positive")

# The system prompt of the DreamPRM-1.5 training and meta files (VisualPRM's process-supervision
# instruction), verbatim: the default of prompt=conversation.
DREAMPRM15_SYSTEM = (
    "You are an advanced AI assistant, designed to serve as a process supervision model. In this task, "
    "I will provide a problem statement followed by the first step of the solution process. For each "
    "subsequent turn, I will give you a new step in the solution. Your role is to assess whether the "
    "solution process is correct up to the current step.\n\n"
    "- In the **first round**, I will input the problem and the first step of the solution process.\n"
    "- In **each subsequent round**, I will provide the next step in the solution.\n\n"
    "For each step, you should:\n"
    '- Respond with **"+"** if you believe the solution process is correct up to this step.\n'
    '- Respond with **"-"** if you detect any issues or errors in the process up to this step.\n\n'
    "Please note:\n"
    '- Only respond with **"+"** or **"-"**. Do not provide any additional explanations, comments, or '
    "justifications.\n\n"
    "Your task is to verify the accuracy and correctness of each step in the given solution process."
)


class Backbone(Protocol):
    """What a prompt format reads of a backbone (:class:`prm.model.backbones.Backbone` has it all;
    a protocol here, so this module does not import the one that builds backbones with it)."""

    processor: Any  # a ProcessorMixin for vision families, the tokenizer for text-only ones
    step_marker: str
    step_marker_id: int
    label_words: tuple[str, str]
    label_token_ids: tuple[int, int]

    @property
    def tokenizer(self) -> Any: ...

    @property
    def is_multimodal(self) -> bool: ...

    @property
    def chat_template(self) -> str | None: ...

    def format_chain(self, question: str, steps: list[str], num_images: int = 0) -> str: ...


@dataclass(frozen=True)
class Reply:
    """One teacher-forced reply: its label word and its character span in the rendered text."""

    word: str
    start: int
    end: int


@dataclass(frozen=True)
class RenderedChain:
    """A chain as text (to tokenise with ``add_special_tokens=False``) and its replies (conversation
    prompt; empty for the marker prompt)."""

    text: str
    num_steps: int
    replies: tuple[Reply, ...] = ()


class PromptFormat:
    """How a chain is laid out for the model and where its step scores are read."""

    name: str = "prompt"

    def render(
        self,
        backbone: Backbone,
        question: str,
        steps: Sequence[str],
        num_images: int = 0,
        labels: Sequence[float | None] | None = None,
    ) -> RenderedChain:
        """The text of one chain. ``labels``: the chain's step labels when it has them (training)."""
        raise NotImplementedError

    def score_positions(
        self, backbone: Backbone, rendered: RenderedChain, input_ids: torch.Tensor, end: int
    ) -> list[int]:
        """Token positions whose last hidden state scores each step, one per step, in order.

        ``input_ids``: the chain's row of the batch ``[seq]``; ``end``: one past its last real token
        (padding may be on either side). Raises ValueError when the steps cannot be found (the message
        says why).
        """
        raise NotImplementedError


@dataclass(frozen=True)
class MarkerPrompt(PromptFormat):
    """``prompt=marker``: the steps in one assistant turn, each scored at its step marker token."""

    name: str = "marker"

    def render(self, backbone, question, steps, num_images=0, labels=None) -> RenderedChain:
        return RenderedChain(backbone.format_chain(question, list(steps), num_images), len(steps))

    def score_positions(self, backbone, rendered, input_ids, end) -> list[int]:
        positions = (input_ids[:end] == backbone.step_marker_id).nonzero().flatten().tolist()
        if len(positions) != rendered.num_steps:
            raise ValueError(
                f"found {len(positions)} step markers for {rendered.num_steps} steps; does a step's text "
                f"contain the step marker {backbone.step_marker!r}?"
            )
        return positions


@dataclass(frozen=True)
class ConversationPrompt(PromptFormat):
    """``prompt=conversation``: the VisualPRM / DreamPRM-1.5 multi-turn layout (see the module doc).

    - ``system``: the system prompt (None: no system turn; the template may still write its default).
    - ``question_header``: text before the question in the first user turn.
    - ``solution_header``: text between the question and the first step (``first_step=with_question``).
    - ``first_step``: ``with_question`` (VisualPRM, DreamPRM-1.5's description: question and step 1 in
      the first user turn) or ``own_turn`` (the question alone, step 1 as the next user turn, as in
      DreamPRM-1.5's published data files).
    - ``replies``: ``label`` or ``positive`` (what teacher-forced replies of training chains hold).
    """

    name: str = "conversation"
    system: str | None = DREAMPRM15_SYSTEM
    question_header: str = "### Question:\n"
    solution_header: str = "\n\n### Solution Process:\n"
    first_step: str = "with_question"
    replies: str = "label"

    def __post_init__(self):
        if self.first_step not in FIRST_STEP:
            raise ValueError(
                f"prompt.first_step={self.first_step!r}: expected one of {', '.join(FIRST_STEP)}"
            )
        if self.replies not in REPLIES:
            raise ValueError(f"prompt.replies={self.replies!r}: expected one of {', '.join(REPLIES)}")

    def reply_words(
        self, label_words: Sequence[str], num_steps: int, labels: Sequence[float | None] | None
    ) -> list[str]:
        """The reply after each step: the positive word, or with ``replies=label`` and known step
        labels the word of each label (>= 0.5 positive, below negative, None positive)."""
        positive, negative = label_words
        if self.replies == "positive" or labels is None:
            return [positive] * num_steps
        if len(labels) != num_steps:
            raise ValueError(f"{len(labels)} step labels for {num_steps} steps")
        return [negative if label is not None and label < 0.5 else positive for label in labels]

    def messages(
        self,
        question: str,
        steps: Sequence[str],
        replies: Sequence[str],
        num_images: int = 0,
        multimodal: bool = False,
    ) -> list[dict[str, Any]]:
        """The chat messages of one chain (system, user, assistant, user, assistant, ...).

        Without steps the conversation ends with the first user turn (under ``with_question`` its text
        ends with ``solution_header``). Multimodal backbones get the first user turn as typed parts
        (one ``{"type": "image"}`` per image, then the text); text-only ones get plain strings.
        Raises ValueError for images on a text-only backbone.
        """
        if num_images and not multimodal:
            raise ValueError(f"the backbone is text-only but the chain has {num_images} image(s)")
        steps = [step.strip() for step in steps]
        first = self.question_header + question.strip()
        turns: list[str] = []
        if self.first_step == "with_question":
            turns.append(first + self.solution_header + (steps[0] if steps else ""))
            turns.extend(steps[1:])
        else:
            turns.append(first)
            turns.extend(steps)
        messages: list[dict[str, Any]] = []
        if self.system:
            messages.append({"role": "system", "content": self.system})
        replies = list(replies)
        for index, text in enumerate(turns):
            if index == 0 and multimodal:
                messages.append(
                    {
                        "role": "user",
                        "content": [{"type": "image"}] * num_images + [{"type": "text", "text": text}],
                    }
                )
            else:
                messages.append({"role": "user", "content": text})
            is_step = index > 0 or (steps and self.first_step == "with_question")
            if is_step:
                messages.append({"role": "assistant", "content": replies.pop(0)})
        return messages

    def render(self, backbone, question, steps, num_images=0, labels=None) -> RenderedChain:
        replies = self.reply_words(backbone.label_words, len(steps), labels)
        messages = self.messages(question, steps, replies, num_images, backbone.is_multimodal)
        owner, template = backbone.processor, backbone.chat_template
        if not template:
            raise ValueError(
                f"{type(owner).__name__} has no chat template; set backbone.chat_template "
                "(a .jinja file, a template string, or 'chatml')"
            )
        if not replies:
            # A chain without steps: nothing to score. Its rendering is what every chain of the same
            # question starts with (the first user turn left open where step 1 would follow), so best-of-N
            # prefix sharing can encode it once for all candidates.
            return RenderedChain(_render(owner, messages, template, continue_final_message=True), 0)
        prefixes = []
        for end, message in enumerate(messages, start=1):
            if message["role"] == "assistant":
                prefixes.append(_render(owner, messages[:end], template, continue_final_message=True))
        text = prefixes[-1]
        spans = []
        for index, (prefix, word) in enumerate(zip(prefixes, replies)):
            if not prefix.endswith(word):
                raise ValueError(
                    f"the chat template does not end the rendering of reply {index} with its label word "
                    f"{word!r} (it ends {prefix[-40:]!r}); it rewrites assistant turns"
                )
            if not text.startswith(prefix):
                raise ValueError(
                    f"the chat template renders the conversation up to reply {index} differently once later "
                    "turns follow, so one forward pass cannot stand for scoring each turn as its own prefix"
                )
            spans.append(Reply(word, len(prefix) - len(word), len(prefix)))
        return RenderedChain(text, len(steps), tuple(spans))

    def score_positions(self, backbone, rendered, input_ids, end) -> list[int]:
        if not rendered.replies:
            return []
        tokenizer = backbone.tokenizer
        try:
            encoded = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
        except NotImplementedError as error:  # slow (Python) tokenizers have no offsets
            raise ValueError(
                f"prompt=conversation needs a fast tokenizer (offsets), not {type(tokenizer).__name__}"
            ) from error
        starts = {tuple(span): index for index, span in enumerate(encoded["offset_mapping"])}
        total = len(encoded["input_ids"])
        if end < total:
            raise ValueError(f"the batch row ends at token {end}, before the rendered text's {total} tokens")
        ids = dict(zip(backbone.label_words, backbone.label_token_ids))
        positions = []
        for number, reply in enumerate(rendered.replies):
            index = starts.get((reply.start, reply.end))
            if index is None or encoded["input_ids"][index] != ids[reply.word]:
                raise ValueError(
                    f"reply {number} ({reply.word!r}) is not one token of its own in the rendered "
                    f"conversation (the tokenizer merges it with the text around it, near "
                    f"{rendered.text[max(reply.start - 20, 0) : reply.end + 20]!r}); choose other "
                    "backbone.label_words"
                )
            # Image placeholders are expanded before the first reply, so positions count from the end.
            position = end - (total - index)
            if int(input_ids[position]) != ids[reply.word]:
                raise ValueError(
                    f"reply {number} ({reply.word!r}) is not at token {position} of the model input; "
                    "the processor changed the text after the images"
                )
            positions.append(position - 1)  # the hidden state that predicts the reply
        return positions


def _render(owner, messages, template: str, continue_final_message: bool) -> str:
    text = owner.apply_chat_template(
        messages, chat_template=template, tokenize=False, continue_final_message=continue_final_message
    )
    if isinstance(text, list):  # some processors return one string per conversation
        (text,) = text
    return text


PROMPTS = {"marker": MarkerPrompt, "conversation": ConversationPrompt}


def build_prompt(prompt: PromptFormat | Mapping | str | None = None) -> PromptFormat:
    """A prompt format from a config node (``conf/prompt/*.yaml``), a name, an instance, or None
    (the marker prompt: what checkpoints written before prompt formats existed use).

    A mapping is ``{name: marker|conversation, ...fields}``; a ``_target_`` key is ignored (the name
    decides). Raises ValueError for an unknown name or field value.
    """
    if prompt is None:
        return MarkerPrompt()
    if isinstance(prompt, PromptFormat):
        return prompt
    if isinstance(prompt, str):
        prompt = {"name": prompt}
    fields = {str(key): value for key, value in dict(prompt).items() if key != "_target_"}
    name = fields.get("name", "marker")
    if name not in PROMPTS:
        raise ValueError(f"unknown prompt format {name!r}; expected one of {', '.join(PROMPTS)}")
    kind = PROMPTS[name]
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(kind)})
    if unknown:
        known = ", ".join(f.name for f in dataclasses.fields(kind))
        raise ValueError(f"prompt={name} has no field(s) {', '.join(unknown)}; its fields: {known}")
    return kind(**fields)


__all__ = [
    "DREAMPRM15_SYSTEM",
    "ConversationPrompt",
    "MarkerPrompt",
    "PromptFormat",
    "RenderedChain",
    "Reply",
    "build_prompt",
]
