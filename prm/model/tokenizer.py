"""Offline tokenizers: a small byte-level BPE with each model family's special tokens.

The tiny backbones need a real tokenizer of the real class (``Qwen2Tokenizer``, which InternVL-hf
checkpoints use too) without touching a hub. The vocabulary is a byte-level BPE trained by the
project on its own corpus (the demo benchmark's text) and shipped as ``prm/assets/tiny_bpe``
(``vocab.json`` + ``merges.txt``); ``python scripts/build_tiny_bpe.py`` regenerates it. All 256 bytes
are in the initial alphabet, so no text is ever unknown.

Every loaded tokenizer is checked against the model (:func:`expected_special_tokens`,
:func:`check_special_tokens`): its BOS / EOS / PAD tokens and the special tokens of its chat template
must each encode as one token, with the id the model was trained with (the GGUF metadata's, or the
model config's ``bos_token_id`` / ``eos_token_id``) and an existing embedding row.
:func:`repair_gguf_tokenizer` first restores the GGUF special tokens that transformers' GGUF
converter splits or moves (non-ASCII ones such as DeepSeek's ``<｜User｜>`` in a byte-level
vocabulary) to their GGUF ids.

Special tokens are added per family (the family spec's ``special_tokens``), named the way the real
processors look them up (for example ``tokenizer.image_token`` for Qwen2-VL,
``tokenizer.context_image_token`` for InternVL), plus the ChatML delimiters and the suite's dedicated
step marker; the ChatML chat template is set on the tokenizer. Label words ("+", "-") are looked up
through the tokenizer, never by hard-coded ids: :func:`single_token_id` fails loudly when a word is
not one token, and :func:`label_token_ids` when the two words are not two different tokens.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AddedToken, PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.integrations.gguf import read_gguf_metadata
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

from prm.errors import UserError
from prm.model.chat import chatml_template
from prm.model.families import get_family

log = logging.getLogger(__name__)

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


# ------------------------------------------------------------------------------------------------
# Special tokens checked against the ids the model was trained with (GGUF files in particular)

# llama.cpp's token types (``gguf.TokenType``): CONTROL tokens (BOS, EOS, chat delimiters) and
# USER_DEFINED ones (``<think>``) are matched whole in text by llama.cpp, never split into pieces.
GGUF_CONTROL, GGUF_USER_DEFINED = 3, 4
# The roles the suite checks, and the metadata key of each id in a GGUF file.
_GGUF_ID_KEYS = {"BOS": "bos_token_id", "EOS": "eos_token_id", "PAD": "padding_token_id"}


class TokenizerError(UserError, ValueError):
    """A checkpoint whose tokenizer does not encode the model's special tokens as the model was trained:
    the message names each token, the id it should have and what it encodes to instead."""


@dataclass(frozen=True)
class GgufVocabulary:
    """What a GGUF file states about its tokens (llama.cpp's ``tokenizer.ggml.*`` metadata keys).

    ``tokens[i]`` is the text of token ``i``, ``token_types[i]`` its llama.cpp type, ``special_ids``
    the ``{"BOS" | "EOS" | "PAD": id}`` the file states, ``tokenizer_type`` ``tokenizer.ggml.model``
    (``gpt2`` for a byte-level BPE, ``llama`` for sentencepiece).
    """

    path: str
    tokenizer_type: str | None
    tokens: tuple[str, ...]
    token_types: tuple[int, ...]
    special_ids: dict[str, int]

    @classmethod
    def read(cls, path: str | Path) -> GgufVocabulary:
        """Read the vocabulary metadata of the GGUF file ``path`` (no tensor data is read).

        Uses the GGUF reader transformers loads the tokenizer with. Raises ValueError for a file that
        is not GGUF, :class:`TokenizerError` when it holds no token list or a BOS/EOS/PAD id outside it.
        """
        metadata, _ = read_gguf_metadata(str(path), ("tokenizer.ggml.tokens",))
        tokens = metadata.get("tokenizer.ggml.tokens")
        if not isinstance(tokens, list):
            raise TokenizerError(f"{path}: the GGUF file holds no token list (tokenizer.ggml.tokens)")
        types = metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens)  # 1: NORMAL
        special_ids = {}
        for role, key in _GGUF_ID_KEYS.items():
            token_id = metadata.get(f"tokenizer.ggml.{key}")
            if token_id is None:
                continue
            if not 0 <= token_id < len(tokens):
                raise TokenizerError(
                    f"{path}: tokenizer.ggml.{key}={token_id} is not a token of the file's "
                    f"{len(tokens)}-token vocabulary"
                )
            special_ids[role] = token_id
        return cls(str(path), metadata.get("tokenizer.ggml.model"), tuple(tokens), tuple(types), special_ids)

    def whole_tokens(self) -> dict[int, str]:
        """``{id: text}`` of every token that must stay whole: the CONTROL and USER_DEFINED ones and
        the BOS / EOS / PAD tokens (whatever their type), in id order. Whitespace-only USER_DEFINED /
        CONTROL tokens (Gemma's runs of spaces) are left out: transformers respells them on purpose."""
        whole = {
            i
            for i, kind in enumerate(self.token_types)
            if kind in (GGUF_CONTROL, GGUF_USER_DEFINED) and self.tokens[i].strip()
        }
        whole.update(self.special_ids.values())
        return {i: self.tokens[i] for i in sorted(whole)}


def _byte_level_spelling(text: str) -> str:
    """``text`` in the GPT-2 byte alphabet (each UTF-8 byte as one printable character), the spelling
    a byte-level BPE vocabulary stores its tokens in."""
    alphabet = bytes_to_unicode()
    return "".join(alphabet[byte] for byte in text.encode("utf-8"))


def repair_gguf_tokenizer(tokenizer: PreTrainedTokenizerBase, vocabulary: GgufVocabulary) -> list[str]:
    """Re-register the GGUF's whole tokens that ``tokenizer`` splits or puts on another id as added
    tokens with their GGUF ids; returns the texts repaired (empty when nothing needed it).

    transformers builds a byte-level (``gpt2``) GGUF vocabulary in the GPT-2 byte alphabet and
    registers a CONTROL token as a special token only when its text is spelled in that alphabet, so a
    token such as DeepSeek's ``<｜User｜>`` (U+FF5C) stays in the vocabulary under its byte spelling
    and is split into pieces in text, and a BOS / EOS with such a text is appended as a new token
    (a new, untrained embedding row). The repair renames the vocabulary entry at the GGUF id back to
    the token's text and registers it as an added token there (special for CONTROL and BOS / EOS /
    PAD, plain for USER_DEFINED, as llama.cpp matches them), dropping the misplaced additions: the
    ``added_tokens`` / ``model.vocab`` entries of the ``tokenizer.json`` format, rebuilt with
    :meth:`tokenizers.Tokenizer.from_str`. A token whose GGUF id holds neither its text nor its byte
    spelling (two ids with the same text) is left alone: :func:`check_special_tokens` reports it.
    Only tokenizers with a ``tokenizers`` backend and a dict vocabulary (BPE) are repaired.
    """
    broken = {
        token_id: text
        for token_id, text in vocabulary.whole_tokens().items()
        if text and tokenizer.encode(text, add_special_tokens=False) != [token_id]
    }
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not broken or backend is None:
        return []
    state = json.loads(backend.to_str())
    vocab = state["model"].get("vocab")
    if not isinstance(vocab, dict):
        return []
    repaired: dict[str, int] = {}
    for token_id, text in broken.items():
        for key in dict.fromkeys((text, _byte_level_spelling(text))):
            if vocab.get(key) == token_id and vocab.get(text, token_id) == token_id:
                del vocab[key]
                vocab[text] = token_id
                repaired[text] = token_id
                break
    if not repaired:
        return []
    added = [entry for entry in state["added_tokens"] if entry["content"] not in repaired]
    special_ids = set(vocabulary.special_ids.values())
    for text, token_id in repaired.items():
        special = vocabulary.token_types[token_id] != GGUF_USER_DEFINED or token_id in special_ids
        added.append(
            dict(
                id=token_id,
                content=text,
                single_word=False,
                lstrip=False,
                rstrip=False,
                normalized=False,
                special=special,
            )
        )
    state["added_tokens"] = sorted(added, key=lambda entry: entry["id"])
    tokenizer._tokenizer = Tokenizer.from_str(json.dumps(state))  # the backend of a TokenizersBackend
    log.info(
        "%s: re-registered %d GGUF token(s) the tokenizer split or misplaced, with their GGUF ids: %s",
        vocabulary.path,
        len(repaired),
        ", ".join(f"{text!r}={token_id}" for text, token_id in repaired.items()),
    )
    return list(repaired)


@dataclass(frozen=True)
class ExpectedToken:
    """A special token the model was trained with: its text, its role (``BOS``, ``EOS``, ``PAD``,
    ``chat-template token``), the ids it may have (empty: any one token with an existing embedding
    row) and where those ids come from (for error messages)."""

    text: str
    role: str
    ids: tuple[int, ...] = ()
    source: str = ""


def expected_special_tokens(
    tokenizer: PreTrainedTokenizerBase,
    chat_template: str | None,
    config: Any = None,
    gguf: GgufVocabulary | None = None,
) -> list[ExpectedToken]:
    """The BOS / EOS / PAD tokens and the special tokens the chat template writes, with their ids.

    From a GGUF file (``gguf``): the ids its metadata states (``tokenizer.ggml.bos_token_id``, ...),
    and every CONTROL / USER_DEFINED token whose text occurs in ``chat_template`` at its GGUF id.
    Otherwise: the tokenizer's BOS / EOS at the model ``config``'s ``bos_token_id`` /
    ``eos_token_id`` (its text config for a VLM; a list of EOS ids allows any of them), and every
    special token of the tokenizer (:func:`special_token_strings`) that occurs in the template at its
    registered id. The PAD token, when the file states no id for it, only has to be one token. One
    entry per text, the first role found (BOS, EOS, PAD, template) wins.
    """
    template = chat_template or ""
    expected: list[ExpectedToken] = []
    if gguf is not None:
        for role, token_id in gguf.special_ids.items():
            key = f"tokenizer.ggml.{_GGUF_ID_KEYS[role]}"
            expected.append(
                ExpectedToken(gguf.tokens[token_id], role, (token_id,), f"{key} of the GGUF file")
            )
        for token_id, text in gguf.whole_tokens().items():
            if text and text in template:
                expected.append(
                    ExpectedToken(text, "chat-template token", (token_id,), "its id in the GGUF file")
                )
    else:
        text_config = config.get_text_config() if config is not None else None
        for role in ("BOS", "EOS"):
            text = getattr(tokenizer, f"{role.lower()}_token", None)
            if not text:
                continue
            ids = getattr(text_config, f"{role.lower()}_token_id", None)
            ids = () if ids is None else tuple(ids) if isinstance(ids, (list, tuple)) else (ids,)
            expected.append(ExpectedToken(text, role, ids, f"the model config's {role.lower()}_token_id"))
        for text in special_token_strings(tokenizer):
            if text in template:
                token_id = tokenizer.convert_tokens_to_ids(text)
                expected.append(
                    ExpectedToken(text, "chat-template token", (token_id,), "its id in the tokenizer")
                )
    if tokenizer.pad_token:
        expected.append(ExpectedToken(tokenizer.pad_token, "PAD"))
    unique: dict[str, ExpectedToken] = {}
    for token in expected:
        unique.setdefault(token.text, token)
    return list(unique.values())


def check_special_tokens(
    tokenizer: PreTrainedTokenizerBase, expected: list[ExpectedToken], num_embeddings: int, source: str
) -> None:
    """Check that each expected token encodes as ONE token with one of its ids, below ``num_embeddings``
    (the model's embedding rows: a higher id is a new, untrained row).

    Raises :class:`TokenizerError` naming ``source`` and, for every token that fails, its role, its
    text, the id expected (and where it comes from) and the ids and pieces it encodes to.
    """
    problems = []
    for token in expected:
        ids = tokenizer.encode(token.text, add_special_tokens=False)
        if len(ids) == 1 and (not token.ids or ids[0] in token.ids) and ids[0] < num_embeddings:
            continue
        if token.ids:
            want = f"id {' or '.join(map(str, token.ids))} ({token.source})"
        else:
            want = f"one token with an id below {num_embeddings}"
        pieces = tokenizer.convert_ids_to_tokens(ids)
        problem = f"{token.role} {token.text!r}: expected {want}, encodes to {ids} {pieces}"
        if len(ids) == 1 and ids[0] >= num_embeddings:
            problem += f" (past the model's {num_embeddings} embedding rows: a new, untrained row)"
        problems.append(problem)
    if problems:
        raise TokenizerError(
            f"{source}: the tokenizer does not encode the model's special tokens as the model was trained: "
            + "; ".join(problems)
            + ". Scores would read other (or new, untrained) embedding rows than the model was trained "
            "with: fix the checkpoint's tokenizer or its model config so they agree"
        )


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


def label_token_ids(tokenizer: PreTrainedTokenizerBase, label_words) -> tuple[int, int]:
    """The token ids ``(positive, negative)`` of ``backbone.label_words``.

    Raises :class:`prm.config.ConfigError` naming ``backbone.label_words`` unless they are two
    words, each encoded as exactly one token, with different ids: the token head scores
    sigmoid(l+ - l-), which is 0.5 at every step when both words are the same token (nothing trains).
    """
    from prm.config import ConfigError

    words = list(label_words)
    if len(words) != 2:
        raise ConfigError(f"backbone.label_words={words!r}: expected two words [positive, negative]")
    ids = []
    for word in words:
        try:
            ids.append(single_token_id(tokenizer, word))
        except ValueError as error:
            raise ConfigError(f"backbone.label_words={words!r}: {error}") from None
    if ids[0] == ids[1]:
        raise ConfigError(
            f"backbone.label_words={words!r}: both words are token {ids[0]} of {type(tokenizer).__name__}, "
            "so every step would score 0.5; choose two words that are different tokens"
        )
    return ids[0], ids[1]
