"""Pieces of the training recipe that need no model: the non-finite guard and the schedules."""

import math

import pytest
import torch

from prm.bilevel.nonfinite import NonFiniteError, NonFiniteGuard
from prm.schedules import step_schedule, warmup_schedule


def test_guard_skips_counts_and_stops_after_a_streak():
    guard = NonFiniteGuard("prm", limit=2)
    guard.observe(1.0, [torch.ones(2)])
    assert guard.close_step(1) and (guard.skipped, guard.in_a_row) == (0, 0)
    guard.observe(float("nan"))
    assert not guard.close_step(2) and (guard.skipped, guard.in_a_row) == (1, 1)
    guard.observe(0.5, [torch.tensor([1.0, math.inf])])  # finite loss, infinite gradient
    with pytest.raises(NonFiniteError, match="prm: 2 optimiser steps in a row .the last: step 3."):
        guard.close_step(3)


def test_guard_window_and_reset():
    guard = NonFiniteGuard("reweight", limit=0)  # 0: never stops
    guard.observe(float("inf"))
    guard.observe(1.0)  # a later finite micro-batch does not clear the spoiled window
    assert not guard.close_step(1)
    for step in range(2, 20):
        guard.observe(None, [torch.tensor(float("nan"))])
        assert not guard.close_step(step)
    guard.observe(1.0, [None, torch.zeros(3)])
    assert guard.close_step(20) and guard.in_a_row == 0 and guard.skipped == 19


def lrs(schedule, optimizer, steps):
    out = []
    for _ in range(steps):
        optimizer.step()
        schedule.step()
        out.append(optimizer.param_groups[0]["lr"])
    return out


def test_step_schedule_is_steplr_with_the_common_signature():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    assert lrs(step_schedule(optimizer, total_steps=10, step_size=2, gamma=0.5), optimizer, 5) == [
        1.0,
        0.5,
        0.5,
        0.25,
        0.25,
    ]
    with pytest.raises(ValueError, match="step_size"):
        step_schedule(optimizer, total_steps=10, step_size=0)


def test_warmup_schedule_warms_up_over_a_share_of_the_steps():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = warmup_schedule(optimizer, total_steps=10, name="linear", warmup_ratio=0.2)  # 2 warmup steps
    assert optimizer.param_groups[0]["lr"] == 0.0
    assert lrs(schedule, optimizer, 4) == pytest.approx([0.5, 1.0, 7 / 8, 6 / 8])
    with pytest.raises(ValueError, match="warmup_ratio"):
        warmup_schedule(optimizer, total_steps=10, warmup_ratio=1.0)
