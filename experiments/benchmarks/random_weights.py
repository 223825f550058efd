"""Write a randomly initialised copy of a model folder: same architecture, tokenizer and chat template,
no trained weights.

    python experiments/benchmarks/random_weights.py SOURCE OUT [--dtype bfloat16] [--seed 0]

``SOURCE`` needs only ``config.json`` and the tokenizer files (``tokenizer.json``,
``tokenizer_config.json``, ``chat_template.jinja`` where there is one); its weights, if any, are not
read. ``OUT`` is a ``save_pretrained`` folder that ``backbone=hf_causal_lm backbone.path=OUT`` loads.

What it is for: speed and memory figures of a real architecture on a machine the weights cannot reach
(a benchmark's cost does not depend on the weights' values, its scores do). The GPU measurements of
SmolLM2-135M in experiments/benchmarks/README.md were taken this way: config and tokenizer (3.5 MB)
travelled, the 538 MB of weights did not. Causal language models only (``AutoModelForCausalLM``);
the VLM backbones' random models are written by experiments/gpu_check.py.

Raises FileNotFoundError when ``SOURCE`` has no ``config.json``; transformers' errors (an unknown
``model_type``) pass through.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


def write_random_copy(source: Path, out: Path, dtype: str = "bfloat16", seed: int = 0) -> int:
    """Write the random copy of ``source`` to ``out``; returns its parameter count."""
    if not (source / "config.json").is_file():
        raise FileNotFoundError(f"{source}: no config.json (the architecture to initialise)")
    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(source)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    for name in TOKENIZER_FILES:  # the chat template and tokenizer exactly as the source has them
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--dtype", default="bfloat16", help="torch dtype of the written weights")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    count = write_random_copy(args.source, args.out, args.dtype, args.seed)
    print(f"{args.out}: random {args.source.name} architecture, {count / 1e6:.1f}M parameters, {args.dtype}")


if __name__ == "__main__":
    main()
