"""The readers of published PRM formats under one name (their home: :mod:`prm.data.formats`).

``read_records(path, format="auto", **options)`` reads any registered format (``"auto"``:
:func:`detect_format`); the per-format readers and ``SeedProblem`` are re-exported from their
publisher's module. ``FORMATS`` is the registered names, in detection order.
"""

from __future__ import annotations

from typing import Any

from prm.data.formats import detect_format, format_names, load_json_records, read_records
from prm.data.formats.bestofn import read_bestofn_test
from prm.data.formats.conversations import read_conversations
from prm.data.formats.dreamprm import read_dreamprm_meta, read_dreamprm_train
from prm.data.formats.math_shepherd import read_math_shepherd
from prm.data.formats.mmprm import SeedProblem, read_mmprm, read_mmprm_seeds
from prm.data.formats.prm800k import read_prm800k
from prm.data.formats.prmbench import read_prmbench
from prm.data.formats.processbench import read_processbench
from prm.data.formats.trl import read_trl
from prm.data.formats.visualprocessbench import read_visualprocessbench
from prm.data.native import read_native

# FORMATS (module __getattr__ below) is importable by name but not listed: it is computed on access.
__all__ = [
    "SeedProblem",
    "detect_format",
    "load_json_records",
    "read_bestofn_test",
    "read_conversations",
    "read_dreamprm_meta",
    "read_dreamprm_train",
    "read_math_shepherd",
    "read_mmprm",
    "read_mmprm_seeds",
    "read_native",
    "read_prm800k",
    "read_prmbench",
    "read_processbench",
    "read_records",
    "read_trl",
    "read_visualprocessbench",
]


def __getattr__(name: str) -> Any:
    if name == "FORMATS":
        return format_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
