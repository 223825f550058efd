"""Regenerate the shipped tiny byte-level BPE (``prm/assets/tiny_bpe``) from the project's own corpus:
printable ASCII plus the demo benchmark's questions and steps (``prm.data.synthetic.corpus_text``).

Usage: ``python scripts/build_tiny_bpe.py [output folder]`` (default: the shipped folder). It lives
here, not in ``prm.model``, so that ``prm.model`` does not import ``prm.data``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from prm.data.synthetic import corpus_text
from prm.model.tokenizer import SHIPPED_VOCAB, train_bpe

BASE = (
    "0123456789 +-*/=()[]{}.,:;!?'\"%$#@&_<>|\\^~`\n\t"
    + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def build(folder: Path = SHIPPED_VOCAB) -> tuple[int, int]:
    """Train the BPE and write ``vocab.json`` and ``merges.txt`` into ``folder``; (tokens, merges)."""
    vocab, merges = train_bpe([BASE, corpus_text(seed=0)])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(
        json.dumps(vocab, ensure_ascii=False, sort_keys=True), encoding="utf-8"
    )
    (folder / "merges.txt").write_text("\n".join(merges) + "\n", encoding="utf-8")
    return len(vocab), len(merges)


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else SHIPPED_VOCAB
    tokens, merges = build(out)
    print(f"wrote {tokens} tokens and {merges} merges to {out}")
