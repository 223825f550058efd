"""Offline tokenizers: a small byte-level BPE with each model family's special tokens.

The tiny backbones need a real tokenizer of the real class (``Qwen2Tokenizer``, which InternVL-hf
checkpoints use too) without touching a hub. The vocabulary is a byte-level BPE trained by the
project on its own corpus (the demo benchmark's text) and shipped as ``prm/assets/tiny_bpe``
(``vocab.json`` + ``merges.txt``); ``python scripts/build_tiny_bpe.py`` regenerates it. All 256 bytes
are in the initial alphabet, so no text is ever unknown.

Special tokens are added per family, named the way the real processors look them up (for example
``tokenizer.image_token`` for Qwen2-VL, ``tokenizer.context_image_token`` for InternVL), plus the
suite's dedicated step marker. Label words ("+", "-") are looked up through the tokenizer, never by
hard-coded ids: :func:`single_token_id` fails loudly when a word is not one token.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AddedToken, PreTrainedTokenizerBase
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

SHIPPED_VOCAB = Path(__file__).resolve().parent.parent / "assets" / "tiny_bpe"
DEFAULT_STEP_MARKER = "<step>"

# Named special tokens of each family, as the real tokenizer_config.json files declare them.
_QWEN_CHAT = ["<|im_start|>", "<|im_end|>"]
_QWEN_VISION = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
}
_INTERNVL_VISION = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
FAMILY_SPECIAL_TOKENS: dict[str, dict[str, str]] = {
    "qwen2": {},
    "qwen2_vl": _QWEN_VISION,
    "qwen2_5_vl": _QWEN_VISION,
    "internvl": _INTERNVL_VISION,
}


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    # The same pre-tokenisation as Qwen2Tokenizer, so the trained merges fit the class that loads them.
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def train_bpe(texts: list[str], vocab_size: int = 1024) -> tuple[dict[str, int], list[str]]:
    """Train a byte-level BPE on ``texts``; returns (vocab, merges) in the Qwen2 file format."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = _pre_tokenizer()
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    state = json.loads(tokenizer.to_str())["model"]
    merges = [" ".join(pair) if isinstance(pair, list) else pair for pair in state["merges"]]
    return state["vocab"], merges


def load_shipped_vocab(folder: Path = SHIPPED_VOCAB) -> tuple[dict[str, int], list[tuple[str, str]]]:
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#")]
    return vocab, merges


def build_tokenizer(family: str = "qwen2_vl", step_marker: str = DEFAULT_STEP_MARKER) -> Qwen2Tokenizer:
    """The offline tokenizer of a tiny backbone of ``family`` (qwen2, qwen2_vl, qwen2_5_vl, internvl)."""
    if family not in FAMILY_SPECIAL_TOKENS:
        raise ValueError(
            f"unknown tokenizer family {family!r}; expected one of {sorted(FAMILY_SPECIAL_TOKENS)}"
        )
    vocab, merges = load_shipped_vocab()
    named = FAMILY_SPECIAL_TOKENS[family]
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, extra_special_tokens=dict(named))
    extra = _QWEN_CHAT + list(named.values())
    tokenizer.add_tokens(
        [AddedToken(token, special=True, normalized=False) for token in extra], special_tokens=True
    )
    add_step_marker(tokenizer, step_marker)
    return tokenizer


def add_step_marker(tokenizer: PreTrainedTokenizerBase, step_marker: str) -> int:
    """Make ``step_marker`` one special token (adding it when missing); returns its id.

    The caller must resize the model's embeddings when the vocabulary grew.
    """
    if step_marker not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(step_marker, special=True, normalized=False)], special_tokens=True)
    return single_token_id(tokenizer, step_marker)


def single_token_id(tokenizer: PreTrainedTokenizerBase, word: str) -> int:
    """The id of ``word`` if the tokenizer encodes it as exactly one token, else a clear error."""
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise ValueError(
            f"{word!r} is not a single token for {type(tokenizer).__name__} (it encodes to {pieces}); "
            "choose label words / a step marker that are single tokens"
        )
    return ids[0]
