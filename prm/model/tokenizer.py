"""Offline tokenizers: a small byte-level BPE with each model family's special tokens.

The tiny backbones need a real tokenizer of the real class (``Qwen2Tokenizer``, which InternVL-hf
checkpoints use too) without touching a hub. The vocabulary is a byte-level BPE trained by the
project on its own corpus (the demo benchmark's text) and shipped as ``prm/assets/tiny_bpe``
(``vocab.json`` + ``merges.txt``); ``python scripts/build_tiny_bpe.py`` regenerates it. All 256 bytes
are in the initial alphabet, so no text is ever unknown.

Special tokens are added per family (the family spec's ``special_tokens``), named the way the real
processors look them up (for example ``tokenizer.image_token`` for Qwen2-VL,
``tokenizer.context_image_token`` for InternVL), plus the ChatML delimiters and the suite's dedicated
step marker; the ChatML chat template is set on the tokenizer. Label words ("+", "-") are looked up
through the tokenizer, never by hard-coded ids: :func:`single_token_id` fails loudly when a word is
not one token.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AddedToken, PreTrainedTokenizerBase
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

from prm.model.chat import chatml_template
from prm.model.families import get_family

SHIPPED_VOCAB = Path(__file__).resolve().parent.parent / "assets" / "tiny_bpe"
DEFAULT_STEP_MARKER = "<step>"

# ChatML turn delimiters: the shipped chat template writes them.
_CHATML_TOKENS = ["<|im_start|>", "<|im_end|>"]


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
    """The offline tokenizer of a tiny backbone of ``family`` (any registered family with a tiny builder).

    The shipped BPE plus the ChatML delimiters, the family's named special tokens and the step
    marker, with the ChatML chat template (:func:`prm.model.chat.chatml_template`, showing images as
    the family's placeholder) set as ``chat_template`` so it is saved with the tokenizer.
    Raises ValueError for an unknown family.
    """
    spec = get_family(family)
    vocab, merges = load_shipped_vocab()
    named = dict(spec.special_tokens)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, extra_special_tokens=named)
    extra = _CHATML_TOKENS + list(named.values())
    tokenizer.add_tokens(
        [AddedToken(token, special=True, normalized=False) for token in extra], special_tokens=True
    )
    add_step_marker(tokenizer, step_marker)
    tokenizer.chat_template = chatml_template(spec.image_placeholder)
    return tokenizer


def special_token_strings(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Every control-token string of ``tokenizer``, sorted: its named special tokens (BOS, EOS, pad,
    image tokens, ...) and every added token flagged special (ChatML delimiters, the step marker).

    Text that contains one of them would be read as that control token, not as text.
    """
    strings = set(tokenizer.all_special_tokens)
    strings.update(token.content for token in tokenizer.added_tokens_decoder.values() if token.special)
    return sorted(s for s in strings if s)


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
