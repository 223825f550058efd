"""backbone.label_words: two different words, each one token of the tokenizer, with different ids.

The same word twice (``backbone.label_words=[+,+]``) makes l+ - l- = 0 at every step: every score is
0.5, the loss ln 2 at every step and AUROC 0.5, and training ran to the end with exit status 0. The
config check refuses it before anything loads; the tokenizer check (where the backbone loads) refuses
a word that is not one token, and two different strings that the tokenizer maps to one token.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from transformers import AddedToken

from prm.config import ConfigError, user_errors
from prm.model.backbones import build_backbone
from prm.model.tokenizer import build_tokenizer, label_token_ids

ROOT = Path(__file__).resolve().parent.parent
ANGSTROM_SIGN = "\u212b"  # Unicode NFC-normalises it to U+00C5 (A with ring above)
A_RING = "\u00c5"


@pytest.fixture(scope="module")
def tokenizer():
    tokenizer = build_tokenizer("qwen2", "<step>")
    tokenizer.add_tokens([AddedToken(A_RING, normalized=True)])  # one token, as in large vocabularies
    return tokenizer


def test_label_token_ids_are_the_tokenizers_own(tokenizer):
    plus, minus = tokenizer.convert_tokens_to_ids(["+", "-"])
    assert label_token_ids(tokenizer, ["+", "-"]) == (plus, minus)
    assert plus != minus


def test_two_strings_of_one_token_are_refused(tokenizer):
    (ring,) = tokenizer.encode(A_RING, add_special_tokens=False)
    assert tokenizer.encode(ANGSTROM_SIGN, add_special_tokens=False) == [ring]  # different strings, one id
    with pytest.raises(ConfigError) as error:
        label_token_ids(tokenizer, [A_RING, ANGSTROM_SIGN])
    message = str(error.value)
    assert message.startswith(
        f"backbone.label_words={[A_RING, ANGSTROM_SIGN]!r}: both words are token {ring} "
    )
    assert "every step would score 0.5" in message


@pytest.mark.parametrize(
    "words,message",
    [
        (["correct step", "-"], "'correct step' is not a single token for Qwen2Tokenizer"),
        (["+"], "expected two words [positive, negative]"),
        (["+", "-", "x"], "expected two words [positive, negative]"),
        (["+", "+"], "both words are token"),
    ],
)
def test_bad_label_words_are_config_errors_naming_the_key(tokenizer, words, message):
    with pytest.raises(ConfigError) as error:
        label_token_ids(tokenizer, words)
    assert str(error.value).startswith(f"backbone.label_words={words!r}: ")
    assert message in str(error.value)
    assert isinstance(error.value, ValueError)  # what build_backbone's callers catch


def test_backbone_load_refuses_one_token_twice():
    with pytest.raises(ConfigError, match=r"backbone.label_words=\['\+', '\+'\]: both words are token"):
        build_backbone("qwen2", label_words=["+", "+"])


@pytest.mark.parametrize(
    "words,what",
    [
        (["<|im_end|>", "-"], "a special token"),
        (["+", "<|im_end|>"], "a special token"),
        (["<step>", "-"], "the step marker"),
    ],
)
def test_backbone_load_refuses_special_tokens_and_the_step_marker_as_label_words(words, what):
    with pytest.raises(ConfigError, match=rf"backbone.label_words=.*is {what} of the tokenizer"):
        build_backbone("qwen2", label_words=words)


def test_user_errors_unwraps_hydra_instantiation(capsys, monkeypatch):
    """A ConfigError raised while Hydra instantiates the backbone reaches the user as one line and
    exit status 2; any other error inside an instantiation passes through untouched."""
    monkeypatch.delenv("PRM_DEBUG", raising=False)
    node = {"_target_": "prm.model.backbones.build_backbone", "family": "qwen2", "label_words": ["+", "+"]}
    with pytest.raises(SystemExit) as exit_info, user_errors():
        instantiate(node)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: backbone.label_words=['+', '+']: both words are token ")
        and err.count("\n") == 1
    )
    with pytest.raises(InstantiationException, match="unknown"), user_errors():
        instantiate({**node, "family": "no_such_family", "label_words": ["+", "-"]})


def run_entry_point(script: str, tmp_path, *overrides: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / script), f"hydra.run.dir={tmp_path}/run", *overrides]
    return subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300)


@pytest.mark.slow
def test_train_with_the_same_label_word_twice_exits_2(tmp_path):
    result = run_entry_point("train.py", tmp_path, "backbone.label_words=[+,+]")
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "error: backbone.label_words=['+', '+']: the positive and negative words must differ"
    )
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_train_with_a_multi_token_label_word_exits_2_when_the_backbone_loads(tmp_path):
    result = run_entry_point("train.py", tmp_path, "backbone.label_words=[correct step,-]")
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "error: backbone.label_words=['correct step', '-']: 'correct step' is not a single token"
    )
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_evaluate_with_the_same_label_word_twice_exits_2(tmp_path):
    overrides = ["backbone=hf_causal_lm", f"backbone.path={tmp_path}/model", "backbone.label_words=[yes,yes]"]
    result = run_entry_point("evaluate.py", tmp_path, *overrides)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "error: backbone.label_words=['yes', 'yes']: the positive and negative words must differ"
    )
