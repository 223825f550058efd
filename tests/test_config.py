"""Every option of every config group composes and instantiates."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from prm.aggregation import Aggregation
from prm.data.sources import DataSources
from prm.model.backbones import Backbone
from prm.tracking import Tracker

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
FIXTURES = ROOT / "tests" / "fixtures"


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


def composed(*overrides: str, hydra: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


# Files for the data configs whose split paths are mandatory (???).
DATA_FILES = {
    "dreamprm": [
        "data.train=" + str(FIXTURES / "formats/dreamprm_train.json"),
        "data.meta=" + str(FIXTURES / "published/dreamprm_meta_sample.json"),
    ],
    "dreamprm15": [
        "data.train=" + str(FIXTURES / "formats/visualprm_train.jsonl"),
        "data.meta=" + str(FIXTURES / "published/dreamprm15_meta_sample.json"),
        "data.test=" + str(FIXTURES / "formats/bestofn_test.json"),
    ],
    "mmprm": [
        "data.train=" + str(FIXTURES / "formats/mmprm_train.jsonl"),
        "data.meta=" + str(FIXTURES / "published/dreamprm_meta_sample.json"),
    ],
    "trl": [
        "data.train=" + str(FIXTURES / "formats/trl_stepwise.jsonl"),
        "data.meta=" + str(FIXTURES / "published/processbench_gsm8k_sample.json"),
    ],
    "files": [
        "data.train=" + str(FIXTURES / "formats/mmprm_train.jsonl"),
        "data.meta=" + str(FIXTURES / "published/processbench_gsm8k_sample.json"),
    ],
    "processbench": ["data.test=" + str(FIXTURES / "published/processbench_gsm8k_sample.json")],
}


def test_every_group_has_options():
    for group in [
        "backbone",
        "reweight",
        "activation",
        "aggregation",
        "schedule",
        "data",
        "logger",
        "experiment",
        "hydra",
    ]:
        assert options(group), f"conf/{group}/ is empty"


@pytest.mark.parametrize("name", [n for n in options("backbone") if n.startswith("tiny_")])
def test_tiny_backbones_instantiate(name):
    backbone = instantiate(composed(f"backbone={name}").backbone)
    assert isinstance(backbone, Backbone)
    assert backbone.family == composed(f"backbone={name}").backbone.family


@pytest.mark.parametrize("name", [n for n in options("backbone") if not n.startswith("tiny_")])
def test_real_backbones_require_a_local_path(name, tmp_path):
    cfg = composed(f"backbone={name}")
    assert OmegaConf.is_missing(cfg.backbone, "path")
    family = cfg.backbone.family
    # A saved tiny model of the same family stands in for the real checkpoint directory.
    tiny = instantiate(composed(f"backbone=tiny_{family}").backbone)
    tiny.save_pretrained(tmp_path)
    backbone = instantiate(composed(f"backbone={name}", f"backbone.path={tmp_path}").backbone)
    assert backbone.family == family
    assert backbone.model.dtype == torch.bfloat16


@pytest.mark.parametrize("name", options("activation"))
def test_activations_instantiate(name):
    activation = instantiate(composed(f"activation={name}").activation)
    values = activation(torch.tensor([-2.0, 0.5, 5.0]))
    assert values.shape == (3,)


def test_activation_values():
    expected = {
        "relu": [0.0, 0.5, 5.0],
        "identity": [-2.0, 0.5, 5.0],
        "clip": [-1.0, 0.5, 3.0],
        "leaky_relu": [-0.02, 0.5, 5.0],
    }
    for name, values in expected.items():
        activation = instantiate(composed(f"activation={name}").activation)
        assert torch.allclose(activation(torch.tensor([-2.0, 0.5, 5.0])), torch.tensor(values))


@pytest.mark.parametrize("name", options("aggregation"))
def test_aggregations_instantiate(name):
    aggregation = instantiate(composed(f"aggregation={name}").aggregation)
    assert isinstance(aggregation, Aggregation) and aggregation.name == name


@pytest.mark.parametrize("name", options("schedule"))
def test_schedules_instantiate(name):
    make = instantiate(composed(f"schedule={name}").schedule)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = make(optimizer, total_steps=100) if name != "step" else make(optimizer)
    for _ in range(100):
        optimizer.step()
        scheduler.step()
    final = optimizer.param_groups[0]["lr"]
    assert {"cosine": 0.0, "linear": 0.0, "constant": 1.0, "step": 0.5**1}[name] == pytest.approx(
        final, abs=1e-9
    )


@pytest.mark.parametrize("name", options("data"))
def test_data_configs_instantiate_and_load(name, tmp_path, monkeypatch):
    monkeypatch.setenv("PRM_CACHE_DIR", str(tmp_path))
    smoke = ["experiment=smoke"] if name == "demo" else []
    cfg = composed(f"data={name}", *smoke, *DATA_FILES.get(name, []))
    sources = instantiate(cfg.data)
    assert isinstance(sources, DataSources)
    # Published files ship no images: read them text-only.
    if name != "demo":
        sources.missing_image = "blank"
        sources.allow_outside_paths = True  # their "../data/..." paths leave the fixtures folder
    for split in ("train", "meta", "test"):
        if sources.path(split) is not None:
            assert len(sources.load(split)) > 0, f"data={name}: split {split} read no records"


@pytest.mark.parametrize("name", options("logger"))
def test_loggers_instantiate(name, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    tracker = instantiate(composed(f"logger={name}").logger)
    assert isinstance(tracker, Tracker)
    tracker.start(tmp_path, {"a": 1})
    tracker.log({"loss": 1.5}, step=1)
    tracker.finish()
    assert (tmp_path / "metrics.jsonl").exists() == (name != "none")


@pytest.mark.parametrize("name", options("reweight"))
def test_reweight_options_compose(name):
    assert composed(f"reweight={name}").reweight.name == name


@pytest.mark.parametrize("name", options("experiment"))
def test_experiments_compose(name):
    cfg = composed(f"experiment={name}")
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


def test_hydra_run_and_sweep_dirs():
    cfg = composed(hydra=True)
    assert cfg.hydra.run.dir.startswith("outputs/")
    assert cfg.hydra.sweep.dir.startswith("multirun/")
