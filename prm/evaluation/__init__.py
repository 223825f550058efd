"""Evaluation metrics: best-of-N selection, chain-level metrics, ProcessBench, PRMBench,
VisualProcessBench, and their reports."""

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
from prm.evaluation.prmbench import (
    PRMBenchResult,
    choose_prmbench_threshold,
    prmbench,
    prmbench_markdown,
)
from prm.evaluation.processbench import (
    ProcessBenchResult,
    choose_threshold,
    predict_first_error,
    processbench,
)
from prm.evaluation.report import write_best_of_n, write_processbench
from prm.evaluation.step_f1 import PoolScore, StepConfusion
from prm.evaluation.visualprocessbench import (
    VisualProcessBenchResult,
    choose_visualprocessbench_threshold,
    visualprocessbench,
    visualprocessbench_markdown,
)

__all__ = [
    "AccuracyCurve",
    "BestOfNResult",
    "ChainMetrics",
    "MethodResult",
    "PRMBenchResult",
    "PoolScore",
    "ProcessBenchResult",
    "StepConfusion",
    "VisualProcessBenchResult",
    "accuracy_vs_n",
    "auroc",
    "best_of_n",
    "chain_metrics",
    "choose_prmbench_threshold",
    "choose_threshold",
    "choose_visualprocessbench_threshold",
    "meta_metrics",
    "normalise_answer",
    "predict_first_error",
    "prmbench",
    "prmbench_markdown",
    "processbench",
    "visualprocessbench",
    "visualprocessbench_markdown",
    "write_best_of_n",
    "write_processbench",
]
