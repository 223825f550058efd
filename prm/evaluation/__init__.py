"""Evaluation metrics: best-of-N selection, chain-level metrics, ProcessBench, and their reports."""

from prm.evaluation.best_of_n import (
    AccuracyCurve,
    BestOfNResult,
    ChainMetrics,
    MethodResult,
    accuracy_vs_n,
    auroc,
    best_of_n,
    chain_metrics,
    meta_metrics,
    normalise_answer,
)
from prm.evaluation.processbench import (
    ProcessBenchResult,
    choose_threshold,
    predict_first_error,
    processbench,
)
from prm.evaluation.report import write_best_of_n, write_processbench

__all__ = [
    "AccuracyCurve",
    "BestOfNResult",
    "ChainMetrics",
    "MethodResult",
    "ProcessBenchResult",
    "accuracy_vs_n",
    "auroc",
    "best_of_n",
    "chain_metrics",
    "choose_threshold",
    "meta_metrics",
    "normalise_answer",
    "predict_first_error",
    "processbench",
    "write_best_of_n",
    "write_processbench",
]
