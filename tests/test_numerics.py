"""The tests' float-comparison helper (tests/numerics.py) and the thread count of a run (conftest)."""

import os

import conftest
import pytest
import torch
from numerics import FLOAT64_PATHS, assert_close_at_scale


def test_the_bound_is_relative_to_the_largest_expected_magnitude():
    expected = torch.tensor([2.0, -0.5, 0.0], dtype=torch.float64)
    # 0.9 of the bound (2 * FLOAT64_PATHS) on every element, the zero included, passes
    assert_close_at_scale(expected + 0.9 * 2 * FLOAT64_PATHS, expected)
    above = torch.tensor([0.0, 0.0, 1.1 * 2 * FLOAT64_PATHS], dtype=torch.float64)
    with pytest.raises(AssertionError, match=r"(?s)grad: .*at index \(2,\).*scale 2"):
        assert_close_at_scale(expected + above, expected, msg="grad")


def test_a_float32_result_is_compared_in_float64():
    expected = torch.tensor([0.1, 0.7], dtype=torch.float64)
    assert_close_at_scale(expected.float(), expected)  # float32 rounding: 6e-8 relative, far inside


def test_zeros_demand_equality_and_nan_fails():
    zeros = torch.zeros(3, dtype=torch.float64)
    assert_close_at_scale(zeros.clone(), zeros)
    with pytest.raises(AssertionError):
        assert_close_at_scale(zeros + 1e-300, zeros)
    with pytest.raises(AssertionError, match="NaN"):
        assert_close_at_scale(zeros, torch.tensor([0.0, float("nan"), 1.0]))
    with pytest.raises(AssertionError):
        assert_close_at_scale(torch.tensor([0.0, float("nan"), 1.0]), torch.tensor([0.0, 0.5, 1.0]))


def test_shapes_must_match():
    with pytest.raises(AssertionError):
        assert_close_at_scale(torch.zeros(2), torch.zeros(3))


def test_prm_test_threads_sets_torch_and_the_subprocess_thread_counts(monkeypatch):
    before = torch.get_num_threads()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # restored after the test
    monkeypatch.setenv(conftest.THREADS_VARIABLE, "1")
    try:
        conftest.pytest_configure(None)
        assert torch.get_num_threads() == 1
        assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == "1"
        assert "1 threads (PRM_TEST_THREADS)" in conftest.pytest_report_header(None)
    finally:
        torch.set_num_threads(before)
    monkeypatch.delenv(conftest.THREADS_VARIABLE)
    assert conftest._requested_threads() is None


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_thread_count_is_a_usage_error(monkeypatch, value):
    monkeypatch.setenv(conftest.THREADS_VARIABLE, value)
    with pytest.raises(pytest.UsageError, match=f"PRM_TEST_THREADS='{value}'"):
        conftest._requested_threads()


@pytest.mark.numerics
def test_the_requested_thread_count_is_in_force():
    """In `make test`'s extra passes (PRM_TEST_THREADS=1 / 2) the tests really run at that count."""
    requested = conftest._requested_threads()
    assert torch.get_num_threads() == (requested or torch.get_num_threads())
    if requested is not None:
        assert os.environ["OMP_NUM_THREADS"] == str(requested)
