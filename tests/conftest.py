"""Fixtures and config helpers shared by several test modules, and the thread count of a test run.

``compose_config`` / ``smoke_config`` are the one way a test composes the Hydra configs under ``conf/``.

``PRM_TEST_THREADS=N`` runs the tests with N torch threads (``torch.set_num_threads``) and gives the
entry points the tests start ``OMP_NUM_THREADS=N`` and ``MKL_NUM_THREADS=N`` (where a test sets no
count of its own). ``make test`` uses it to run the ``numerics`` tests again at 1 and 2 threads: a
float comparison's verdict must not depend on how reductions are split. The run's header names the
thread count and ATen's CPU capability (``ATEN_CPU_CAPABILITY`` selects another kernel path).
"""

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

THREADS_VARIABLE = "PRM_TEST_THREADS"
CONF = Path(__file__).resolve().parent.parent / "conf"


def _requested_threads() -> int | None:
    """The positive integer in PRM_TEST_THREADS, None when unset; pytest.UsageError otherwise."""
    value = os.environ.get(THREADS_VARIABLE, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise pytest.UsageError(f"{THREADS_VARIABLE}={value!r}: expected a positive number of torch threads")
    return int(value)


def pytest_configure(config):
    threads = _requested_threads()
    if threads is not None:
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)


def pytest_report_header(config):
    source = f" ({THREADS_VARIABLE})" if _requested_threads() is not None else ""
    return (
        f"torch {torch.__version__}: {torch.get_num_threads()} threads{source}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )


def compose_config(*overrides: str, name: str = "config", hydra: bool = False) -> DictConfig:
    """``conf/<name>.yaml`` (``config``, ``evaluate`` or ``generate``) composed with the command-line
    ``overrides`` the way its entry point composes it; with ``hydra=True`` the result also holds the
    ``hydra`` node (launcher, sweeper). Raises hydra's ConfigCompositionException (or the schema's
    error) for an override that does not compose. Test modules import it: ``from conftest import
    compose_config``."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=list(overrides), return_hydra_config=hydra)


def smoke_config(*overrides: str) -> DictConfig:
    """The training config with ``experiment=smoke`` (a tiny model on the demo data, a few CPU
    seconds) and then ``overrides``."""
    return compose_config("experiment=smoke", *overrides)


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """Three plain-colour PNG paths of different shapes: 56 x 56 red, 112 x 56 blue, 56 x 112 green."""
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for name, size, colour in [("a", (56, 56), "red"), ("b", (112, 56), "blue"), ("c", (56, 112), "green")]:
        Image.new("RGB", size, colour).save(folder / f"{name}.png")
        paths.append(str(folder / f"{name}.png"))
    return paths


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh demo-data cache (``PRM_CACHE_DIR``) under this test's ``tmp_path``; returns ``tmp_path``."""
    monkeypatch.setenv("PRM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path
