"""Merging a LoRA checkpoint into one plain ``save_pretrained`` model (behind
``python -m prm.model.lora merge <checkpoint or run> <out>``).

It lives apart from the adapters themselves (:mod:`prm.model.lora`) because it builds the whole PRM
(:func:`prm.model.build.load_prm`), whose backbone builder imports the adapters.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from omegaconf import OmegaConf

from prm.checkpoint import HEAD_FILE, resolve_checkpoint
from prm.model import lora
from prm.model.build import load_prm
from prm.model.lora import ADAPTER_CONFIG, is_adapter_checkpoint, merge

log = logging.getLogger("prm.model.lora")


def merge_checkpoint(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the adapter checkpoint ``checkpoint`` (a checkpoint folder or a run directory) merged
    into one ``save_pretrained`` model in ``out``: the merged weights, tokenizer / processor, the value
    head (``head.safetensors``, if any) and ``config.yaml`` with ``backbone.lora.enabled=false``. The
    result loads with ``backbone.path=<out>`` and ``evaluate.py checkpoint=<out>``.
    Raises FileNotFoundError (no checkpoint), ValueError (not an adapter checkpoint), FileExistsError
    (``out`` exists and is not empty)."""
    verified: dict = {}  # one hash of the checkpoint, shared by resolve and load
    source = resolve_checkpoint(checkpoint, verified)
    if not is_adapter_checkpoint(source):
        raise ValueError(f"{source}: no {ADAPTER_CONFIG}, not a LoRA checkpoint (nothing to merge)")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty")
    prm = load_prm(source, verified=verified)
    backbone = prm.backbone
    backbone.model = prm.model = merge(backbone.peft_model)
    backbone.peft_model = None
    out.mkdir(parents=True, exist_ok=True)
    backbone.save_pretrained(out)
    if (source / HEAD_FILE).is_file():
        shutil.copy2(source / HEAD_FILE, out / HEAD_FILE)
    saved = OmegaConf.load(source / "config.yaml")
    OmegaConf.update(saved, "backbone.lora.enabled", False, force_add=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(saved), encoding="utf-8")
    log.info("merged %s into %s", source, out)
    return out


def main(argv: list[str] | None = None) -> int:
    """The command line: ``merge <checkpoint> <out>`` (:func:`merge_checkpoint`); returns the exit
    status (0) and prints the merged folder."""
    parser = argparse.ArgumentParser(prog="python -m prm.model.lora", description=lora.__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    merging = commands.add_parser("merge", help="write a LoRA checkpoint as one merged save_pretrained model")
    merging.add_argument("checkpoint", help="a LoRA checkpoint folder or its run directory")
    merging.add_argument("out", help="output folder (must not exist or be empty)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = merge_checkpoint(args.checkpoint, args.out)
    print(out)
    return 0
