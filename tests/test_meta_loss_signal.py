"""The meta-loss signal diagnostic (experiments/meta_loss_signal.py): its step-level reference loss and
its summary of g_i . G, on values worked out by hand."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from prm.model.prm import StepScores

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "meta_loss_signal.py"
spec = importlib.util.spec_from_file_location("meta_loss_signal", SCRIPT)
signal_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(signal_script)


def test_step_level_loss_targets_one_before_the_first_error_and_zero_from_it():
    probs = torch.tensor([[0.9, 0.8, 0.3], [0.6, 0.5, 0.0]])
    scores = StepScores(
        logits=torch.logit(probs), mask=torch.tensor([[True, True, True], [True, True, False]])
    )
    loss = signal_script.step_level_loss(scores, torch.tensor([1, -1]))
    # chain 0 wrong from step 1: targets 1, 0, 0; chain 1 correct: targets 1, 1 (third step padding)
    expected = ((0.1**2 + 0.8**2 + 0.3**2) + (0.4**2 + 0.5**2)) / 5
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_summary_counts_directions_and_ranks_clean_above_corrupted():
    chains = [
        SimpleNamespace(meta={"corrupted": c, "corruption": k})
        for c, k in [(False, None), (False, None), (True, "flip"), (True, "shift"), (False, None)]
    ]
    summary = signal_script.summarise([0.5, -0.1, -0.4, 0.2, 0.3], chains)
    assert summary["clean_pushed_up"] == pytest.approx(2 / 3)
    assert summary["corrupted_pushed_down"] == pytest.approx(1 / 2)
    # clean 0.5, -0.1, 0.3 against corrupted -0.4, 0.2: 5 of 6 pairs ordered right
    assert summary["auroc"] == pytest.approx(5 / 6)
    assert summary["auroc_flip"] == pytest.approx(1.0)
    assert summary["auroc_shift"] == pytest.approx(2 / 3)
