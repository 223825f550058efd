"""Every option of every config group composes and instantiates; the schema refuses misspelt keys and
wrong types at composition; validate_train_config / validate_evaluate_config refuse bad ranges and
combinations with one message naming the key; user errors exit with status 2."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose_config
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from prm.aggregation import Aggregation
from prm.config import (
    BadImage,
    ConfigError,
    EvaluateMode,
    EvaluateSchema,
    GradScale,
    Head,
    LastLayer,
    MissingImage,
    SpecialTokens,
    TooLong,
    TrainRunSchema,
    refuse_unknown_choices,
    user_error_exit,
    user_errors,
    validate_evaluate_config,
    validate_train_config,
    vocabulary_keys,
)
from prm.data.sources import DataSources
from prm.model.backbones import Backbone
from prm.tracking import Tracker

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
FIXTURES = ROOT / "tests" / "fixtures"


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


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
    "prmbench": ["data.test=" + str(FIXTURES / "formats/prmbench.jsonl")],
    "visualprocessbench": ["data.test=" + str(FIXTURES / "formats/visualprocessbench.jsonl")],
    "prm800k": [
        "data.train=" + str(FIXTURES / "formats/prm800k.jsonl"),
        "data.meta=" + str(FIXTURES / "published/processbench_gsm8k_sample.json"),
    ],
    "math_shepherd": [
        "data.train=" + str(FIXTURES / "formats/math_shepherd.jsonl"),
        "data.meta=" + str(FIXTURES / "published/processbench_gsm8k_sample.json"),
    ],
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
    backbone = instantiate(compose_config(f"backbone={name}").backbone)
    assert isinstance(backbone, Backbone)
    assert backbone.family == compose_config(f"backbone={name}").backbone.family


@pytest.mark.parametrize("name", [n for n in options("backbone") if not n.startswith("tiny_")])
def test_real_backbones_require_a_local_path(name, tmp_path):
    cfg = compose_config(f"backbone={name}")
    assert OmegaConf.is_missing(cfg.backbone, "path")
    family = cfg.backbone.family
    # A saved tiny model of the same family stands in for the real checkpoint directory.
    tiny = instantiate(compose_config(f"backbone=tiny_{family}").backbone)
    tiny.save_pretrained(tmp_path)
    backbone = instantiate(compose_config(f"backbone={name}", f"backbone.path={tmp_path}").backbone)
    assert backbone.family == family
    assert backbone.model.dtype == torch.float32  # pretrained weights in fp32 by default


@pytest.mark.parametrize("name", options("activation"))
def test_activations_instantiate(name):
    activation = instantiate(compose_config(f"activation={name}").activation)
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
        activation = instantiate(compose_config(f"activation={name}").activation)
        assert torch.allclose(activation(torch.tensor([-2.0, 0.5, 5.0])), torch.tensor(values))


@pytest.mark.parametrize("name", options("aggregation"))
def test_aggregations_instantiate(name):
    aggregation = instantiate(compose_config(f"aggregation={name}").aggregation)
    assert isinstance(aggregation, Aggregation) and aggregation.name == name


@pytest.mark.parametrize("name", options("schedule"))
def test_schedules_instantiate(name):
    make = instantiate(compose_config(f"schedule={name}").schedule)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = make(optimizer, total_steps=100)
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
    cfg = compose_config(f"data={name}", "experiment=smoke", *DATA_FILES.get(name, []))
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
    tracker = instantiate(compose_config(f"logger={name}").logger)
    assert isinstance(tracker, Tracker)
    tracker.start(tmp_path, {"a": 1})
    tracker.log({"loss": 1.5}, step=1)
    tracker.finish()
    assert (tmp_path / "metrics.jsonl").exists() == (name != "none")


@pytest.mark.parametrize("name", options("reweight"))
def test_reweight_options_compose(name):
    assert compose_config(f"reweight={name}").reweight.name == name


@pytest.mark.parametrize("name", options("experiment"))
def test_experiments_compose(name):
    cfg = compose_config(f"experiment={name}")
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


def test_hydra_run_and_sweep_dirs():
    cfg = compose_config(hydra=True)
    assert cfg.hydra.run.dir.startswith("outputs/")
    assert cfg.hydra.sweep.dir.startswith("multirun/")


# ---------------------------------------------------------------------------------------------
# Shared blocks (base/ pattern): the composed values every option had before the refactor.


def test_file_data_configs_share_the_base_block():
    formats = {
        "dreamprm": ("dreamprm_train", "dreamprm_meta", "auto"),
        "dreamprm15": ("conversations", "conversations", "bestofn"),
        "files": ("auto", "auto", "auto"),
        "mmprm": ("mmprm", "auto", "auto"),
        "trl": ("trl", "auto", "auto"),
        "prm800k": ("prm800k", "auto", "auto"),
        "math_shepherd": ("math_shepherd", "auto", "auto"),
    }
    for name, (train, meta, test) in formats.items():
        data = compose_config(f"data={name}").data
        assert data._target_ == "prm.data.sources.DataSources" and data.name == name
        assert (data.train_format, data.meta_format, data.test_format) == (train, meta, test)
        assert (data.train, data.meta, data.test, data.image_root) == (None, None, None, None)
        assert (data.missing_image, data.batch_size, data.eval_batch_size, data.max_length) == (
            "error",
            8,
            16,
            4096,
        )
    bench = compose_config("data=processbench").data
    assert (bench.test_format, bench.missing_image, bench.eval_batch_size, bench.max_length) == (
        "processbench",
        "blank",
        16,
        4096,
    )
    for name, missing_image in (("prmbench", "blank"), ("visualprocessbench", "error")):
        bench = compose_config(f"data={name}").data
        assert (bench.test_format, bench.missing_image) == (name, missing_image)
        assert (bench.train, bench.meta, bench.test) == (None, None, None)


def test_llm_client_block_is_shared():
    policy = compose_config("policy=openai", name="generate").policy
    judges = [compose_config(f"judge={name}", name="generate").judge for name in ("llm", "rule_then_llm")]
    expected = {
        "_target_": "prm.generate.client.ChatClient",
        "base_url": "http://localhost:8000/v1",
        "api_key_env": "OPENAI_API_KEY",
        "retries": 4,
        "max_concurrency": 8,
    }
    for client, timeout in [(policy.client, 120.0)] + [(judge.llm.client, 60.0) for judge in judges]:
        assert OmegaConf.is_missing(client, "model")
        assert {key: client[key] for key in expected} == expected and client.timeout == timeout
    assert policy._target_ == "prm.generate.policy.OpenAIPolicy" and policy.max_tokens == 1024
    assert [judge.mode for judge in judges] == ["llm", "rule_then_llm"]
    assert judges[0].rule is None and judges[1].rule.tolerance == 1e-6
    assert judges[0].llm._target_ == "prm.generate.judge.LLMJudge"


@pytest.mark.parametrize("name", options("aggregation"))
def test_aggregation_files_name_a_registry_entry(name):
    from prm.aggregation import REGISTRY

    node = compose_config(f"aggregation={name}").aggregation
    assert OmegaConf.to_container(node) == {"_target_": "prm.aggregation.Aggregation", "name": name}
    assert name in REGISTRY
    assert set(options("aggregation")) == set(REGISTRY)


# ---------------------------------------------------------------------------------------------
# Schema: composition refuses misspelt keys and wrong types.


@pytest.mark.parametrize(
    "overrides",
    [
        ["train.stpes=3"],
        ["train.steps=abc"],
        ["train.optimizer.lrr=0.1"],
        ["data.batch_sise=2"],
        ["data.batch_size=two"],
        ["prm.haed=value"],
        ["optimized_metric=[1]"],
        ["reweight=domain_table", "reweight.hypergradient.unrol_steps=2"],
        ["reweight=domain_table", "reweight.hypergradient.unroll_steps=1.5"],
        ["reweight=instance_table", "reweight.upper.batch_size=x"],
    ],
)
def test_schema_refuses_at_composition(overrides):
    with pytest.raises(ConfigCompositionException):
        compose_config(*overrides)


def test_evaluate_schema_refuses_at_composition():
    compose_config("checkpoint=x", name="evaluate")
    with pytest.raises(ConfigCompositionException):
        compose_config("checkpoint=x", "mdoe=auto", name="evaluate")
    with pytest.raises(ConfigCompositionException):
        compose_config("checkpoint=x", "processbench.threshold=high", name="evaluate")


def test_schema_accepts_contract_keys_and_new_optimizer_arguments():
    cfg = compose_config(
        "train.optimizer.lr=0.01",
        "+train.optimizer.eps=1e-6",
        "optimized_metric=loss",
        "train.keep_last_n_checkpoints=3",
        "train.max_nonfinite_steps=5",
        "reweight=instance_table",
        "reweight.upper.sampler_seed=7",
    )
    assert cfg.train.optimizer.lr == 0.01 and cfg.train.optimizer.eps == 1e-6
    assert cfg.optimized_metric == "loss" and cfg.train.keep_last_n_checkpoints == 3
    assert cfg.reweight.upper.optimizer._target_ == "torch.optim.SparseAdam"
    assert "weight_decay" not in cfg.reweight.upper.optimizer and cfg.reweight.upper.sampler_seed == 7
    assert cfg.reweight.upper.batch_size == 120  # the instance strategies: a large meta batch (measured)
    assert compose_config("reweight=domain_table").reweight.upper.batch_size == cfg.data.batch_size
    optimizer = instantiate(cfg.train.optimizer)([torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["eps"] == 1e-6


# ---------------------------------------------------------------------------------------------
# experiment=smoke is a delta that works with every data option.


@pytest.mark.parametrize("name", options("data"))
def test_smoke_composes_with_every_data_option(name):
    cfg = compose_config("experiment=smoke", f"data={name}")
    assert cfg.data.name == name and cfg.train.steps == 4
    assert OmegaConf.to_container(cfg.data.limit) == {"train": 48, "meta": 16, "test": 4}
    validate_train_config(cfg)


def test_data_limit_keeps_an_evenly_spaced_subset_and_says_so(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PRM_CACHE_DIR", str(tmp_path))
    sources = instantiate(compose_config("experiment=smoke").data)
    with caplog.at_level(logging.INFO, logger="prm.data.sources"):
        train = sources.load("train")
    domains = [chain.domain for chain in train]
    assert len(train) == 48 and {d: domains.count(d) for d in set(domains)} == {
        "clean": 16,
        "noisy": 16,
        "easy": 16,
    }
    assert "train split: kept 48 of 900 records" in caplog.text
    assert len(sources.load("meta")) == 16 and len(sources.load("test")) == 4
    sources.limit = 1000
    assert len(sources.load("meta")) == 120  # fewer records than the limit: all kept


# ---------------------------------------------------------------------------------------------
# validate_train_config / validate_evaluate_config: one rule, one message naming the key.


BAD_TRAIN = [
    (["train.steps=0"], "train.steps=0: must be >= 1"),
    (["train.optimizer.lr=0"], "train.optimizer.lr=0: must be > 0"),
    (["train.optimizer.lr=-1e-3"], "train.optimizer.lr=-0.001: must be > 0"),
    (["train.optimizer.lr=inf"], "train.optimizer.lr=inf: must be a finite number"),
    (["train.gradient_clipping=inf"], "train.gradient_clipping=inf: must be a finite number"),
    (["data.batch_size=0"], "data.batch_size=0: must be >= 1"),
    (["data.eval_batch_size=0"], "data.eval_batch_size=0: must be >= 1"),
    (["train.gradient_accumulation=0"], "train.gradient_accumulation=0: must be >= 1"),
    (["train.save_every=-1"], "train.save_every=-1: must be >= 0"),
    (["train.validate_every=-5"], "train.validate_every=-5: must be >= 0"),
    (["train.gradient_clipping=-1"], "train.gradient_clipping=-1.0: must be >= 0"),
    (["train.keep_last_n_checkpoints=0"], "train.keep_last_n_checkpoints=0: must be >= 1"),
    (["train.max_nonfinite_steps=0"], "train.max_nonfinite_steps=0: must be >= 1"),
    (["train.precision=fp16"], "train.precision=fp16 is not supported: float16 needs loss scaling"),
    (["train.precision=fp8"], "train.precision='fp8': expected one of fp32, bf16"),
    (["train.device=tpu"], "train.device='tpu': expected auto, cpu, cuda or cuda:<index>"),
    (
        ["reweight=domain_table", "reweight.upper.loss_target=-"],
        "reweight.upper.loss_target='-': expected one of +, both",
    ),
    (
        ["prm.loss_target=both"],
        "prm.loss_target=both: the meta loss's target moved to reweight.upper.loss_target",
    ),
    (
        ["reweight=domain_instance", "reweight.upper.optimizers.instance.lr=0"],
        "reweight.upper.optimizers.instance.lr=0: must be > 0",
    ),
    (
        ["backbone.label_words=[+,+]"],
        "backbone.label_words=['+', '+']: the positive and negative words must differ",
    ),
    (["backbone.label_words=[+]"], "backbone.label_words=['+']: expected two non-empty words"),
    (["backbone.label_words=[+,'']"], "backbone.label_words=['+', '']: expected two non-empty words"),
    (["backbone.label_words=[+,-,x]"], "backbone.label_words=['+', '-', 'x']: expected two non-empty words"),
    (["backbone.label_words=+"], "backbone.label_words='+': expected two non-empty words"),
    (["+data.limit.dev=3"], "data.limit.dev: unknown split"),
    (["data.limit=0"], "data.limit=0: expected null or a record count >= 1"),
    (["data=prm800k", "++data.reader_options.dev.neutral=half"], "data.reader_options.dev: unknown split"),
    (["data=prm800k", "data.reader_options.train=half"], "data.reader_options.train='half': expected {split"),
    (["reweight=domain_table", "reweight.hypergradient.type=maml"], "reweight.hypergradient.type='maml'"),
    (["reweight=domain_table", "reweight.hypergradient.unroll_steps=0"], "unroll_steps=0: must be >= 1"),
    (
        ["reweight=instance_net", "reweight.upper.optimizer.lr=0"],
        "reweight.upper.optimizer.lr=0: must be > 0",
    ),
    (["reweight=instance_table", "reweight.upper.batch_size=0"], "reweight.upper.batch_size=0: must be >= 1"),
    (
        ["reweight=instance_table", "reweight.upper.optimizer.lr=inf"],
        "reweight.upper.optimizer.lr=inf: must be a finite",
    ),
    (
        [
            "reweight=domain_table",
            "reweight.hypergradient.type=cg",
            "backbone.attn_implementation=eager",
            "reweight.hypergradient.alpha=inf",
        ],
        "reweight.hypergradient.alpha=inf: must be a finite number",
    ),
    (
        [
            "reweight=domain_table",
            "reweight.hypergradient.type=neumann",
            "backbone.attn_implementation=eager",
            "distributed=zero3",
        ],
        "type=neumann is not supported under distributed=zero3",
    ),
    (["reweight=instance_table", "aggregation=sum_logit"], "aggregation=sum_logit is not a probability"),
    (
        ["reweight=domain_table", "aggregation.name=median"],
        "aggregation.name='median': expected one of last,",
    ),
    (
        ["reweight=domain_table", "aggregation=mean_odd", "reweight.upper.loss_target=both"],
        "with reweight.upper.loss_target=both",
    ),
    (
        ["reweight=domain_table", "reweight.hypergradient.type=neumann"],
        "backbone.attn_implementation=sdpa has no second derivative",
    ),
    (
        [
            "reweight=instance_table",
            "reweight.hypergradient.type=cg",
            "backbone=qwen2_vl_2b",
            "backbone.path=/m",
        ],
        "set backbone.attn_implementation=eager",
    ),
    (
        [
            "reweight=domain_table",
            "reweight.hypergradient.type=neumann",
            "backbone.attn_implementation=eager",
            "train.compile=true",
        ],
        "set train.compile=false",
    ),
]


@pytest.mark.parametrize("kind", ["darts", "sama"])
def test_first_order_hypergradients_take_any_attention_and_compile(kind):
    validate_train_config(
        compose_config("reweight=domain_table", f"reweight.hypergradient.type={kind}", "train.compile=true")
    )
    validate_train_config(
        compose_config(
            "reweight=domain_table",
            "reweight.hypergradient.type=neumann",
            "backbone.attn_implementation=eager",
        )
    )


@pytest.mark.parametrize("overrides,message", BAD_TRAIN, ids=[" ".join(o) for o, _ in BAD_TRAIN])
def test_validate_train_config_refuses(overrides, message):
    cfg = compose_config(*overrides)
    with pytest.raises(ConfigError) as error:
        validate_train_config(cfg)
    assert message in str(error.value)
    assert isinstance(error.value, ValueError)


def test_validate_train_config_cuda_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=f"train.device={device} but torch sees no CUDA device"):
            validate_train_config(compose_config(f"train.device={device}"))


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["experiment=smoke"],
        ["reweight=instance_table", "aggregation=prod", "reweight.upper.loss_target=both"],
        ["reweight=domain_instance"],
        ["train.precision=bf16", "train.device=cpu", "train.save_every=0", "train.validate_every=0"],
    ]
    + [[f"experiment={name}"] for name in options("experiment")],
)
def test_validate_train_config_accepts(overrides):
    validate_train_config(compose_config(*overrides))


BAD_EVALUATE = [
    ([], "checkpoint is not set"),
    (["checkpoint=run", "precision=fp16"], "precision=fp16 is not supported"),
    (
        ["checkpoint=run", "aggregation.name=median"],
        "aggregation.name='median': expected one of last, log_mean, max, mean, mean_odd, min, prod, "
        "sum_logit, sum_logprob",
    ),
    (["checkpoint=run", "data.eval_batch_size=0"], "data.eval_batch_size=0: must be >= 1"),
    (
        ["checkpoint=run", "processbench.threshold=1.5"],
        "processbench.threshold=1.5: must be null or in [0, 1]",
    ),
    (["checkpoint=run", "device=gpu"], "device='gpu': expected auto, cpu, cuda"),
    (
        ["backbone=hf_causal_lm", "backbone.path=/m", "backbone.label_words=[yes,yes]"],
        "backbone.label_words=['yes', 'yes']: the positive and negative words must differ",
    ),
]


@pytest.mark.parametrize("overrides,message", BAD_EVALUATE, ids=[" ".join(o) for o, _ in BAD_EVALUATE])
def test_validate_evaluate_config_refuses(overrides, message):
    with pytest.raises(ConfigError) as error:
        validate_evaluate_config(compose_config(*overrides, name="evaluate"))
    assert message in str(error.value)


def test_validate_evaluate_config_accepts():
    validate_evaluate_config(compose_config("checkpoint=run", name="evaluate"))
    validate_evaluate_config(
        compose_config("checkpoint=run", "data=processbench", "mode=processbench", name="evaluate")
    )


# ---------------------------------------------------------------------------------------------
# Exit status 2 and one line for user errors.


def test_user_error_exit_prints_one_line_and_exits_2(capsys, monkeypatch):
    monkeypatch.delenv("PRM_DEBUG", raising=False)

    @user_error_exit
    def main(steps):
        """main's docstring"""
        validate_train_config(compose_config(f"train.steps={steps}"))
        return "ran"

    assert main(3) == "ran" and main.__doc__ == "main's docstring"
    with pytest.raises(SystemExit) as exit_info:
        main(0)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: train.steps=0: must be >= 1\n"


def test_user_errors_debug_shows_the_traceback(capsys, monkeypatch):
    monkeypatch.setenv("PRM_DEBUG", "1")
    with pytest.raises(SystemExit), user_errors():
        raise ConfigError("train.steps=0: must be >= 1")
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("error: train.steps=0: must be >= 1")
    monkeypatch.delenv("PRM_DEBUG")
    with pytest.raises(SystemExit), user_errors(debug=True):
        raise ConfigError("x")
    assert "Traceback" in capsys.readouterr().err


def test_other_errors_pass_through():
    with pytest.raises(KeyError), user_errors():
        raise KeyError("a bug, not the user's")


def test_hydra_entry_point_exits_2_on_a_user_error(tmp_path):
    script = tmp_path / "entry.py"
    script.write_text(
        "import hydra\n"
        "from prm.config import user_error_exit, validate_train_config\n"
        f"@hydra.main(config_path={str(CONF)!r}, config_name='config', version_base='1.3')\n"
        "@user_error_exit\n"
        "def main(cfg):\n"
        "    validate_train_config(cfg)\n"
        "if __name__ == '__main__':\n"
        "    main()\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    run = [sys.executable, str(script), f"hydra.run.dir={tmp_path}/run"]
    result = subprocess.run([*run, "train.steps=0"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: train.steps=0: must be >= 1"
    assert "Traceback" not in result.stderr
    typo = subprocess.run([*run, "train.stpes=3"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert typo.returncode == 1 and "Could not override 'train.stpes'" in typo.stderr


# ---------------------------------------------------------------------------------------------
# Vocabularies: each enumerated key is one Enum field of the schema; a value outside it is refused at
# composition, and on the command line with one line and exit status 2.

TRAIN_VOCABULARIES = {
    "prm.head": Head,
    "prm.last_layer": LastLayer,
    "data.missing_image": MissingImage,
    "data.too_long": TooLong,
    "data.bad_image": BadImage,
    "data.special_tokens": SpecialTokens,
    "reweight.upper.grad_scale": GradScale,
}
EVALUATE_VOCABULARIES = {
    "mode": EvaluateMode,
    **{key: kind for key, kind in TRAIN_VOCABULARIES.items() if key.startswith("data.")},
}
CHOICES = {
    "prm.head": "token, value",
    "prm.last_layer": "scores, full",
    "data.missing_image": "error, skip, blank",
    "data.too_long": "truncate, error, skip",
    "data.bad_image": "fix, skip, error",
    "data.special_tokens": "neutralize, error",
    "mode": "auto, best_of_n, processbench",
    "reweight.upper.grad_scale": "none, rms",
}
VOCABULARY_CASES = [(key, "config", TrainRunSchema) for key in TRAIN_VOCABULARIES] + [
    (key, "evaluate", EvaluateSchema) for key in EVALUATE_VOCABULARIES
]


def test_vocabulary_keys_are_the_schemas_enum_fields():
    assert vocabulary_keys(TrainRunSchema) == TRAIN_VOCABULARIES
    assert vocabulary_keys(EvaluateSchema) == EVALUATE_VOCABULARIES


@pytest.mark.parametrize(
    "key,name,schema", VOCABULARY_CASES, ids=[f"{n}:{k}" for k, n, _ in VOCABULARY_CASES]
)
def test_each_choice_composes_and_a_bad_value_is_refused(key, name, schema):
    base = ["checkpoint=run"] if name == "evaluate" else []
    if key.startswith("reweight.upper."):
        base = ["reweight=instance_table"]  # reweight=none has no upper node
    vocabulary = vocabulary_keys(schema)[key]
    for member in vocabulary:
        cfg = compose_config(*base, f"{key}={member.value}", name=name)
        value = OmegaConf.select(cfg, key)
        assert value == member.value and f"{value}" == member.value and member.name == member.value
        refuse_unknown_choices([f"{key}={member.value}"], schema)
    with pytest.raises(ConfigCompositionException) as refused:
        compose_config(*base, f"{key}=bogus", name=name)
    assert f"expected one of [{CHOICES[key]}]" in str(refused.value.__cause__)
    with pytest.raises(ConfigError) as error:
        refuse_unknown_choices([f"{key}=bogus"], schema)
    assert str(error.value) == f"{key}='bogus': expected one of {CHOICES[key]}"


def test_refuse_unknown_choices_reads_sweeps_and_leaves_the_rest_to_hydra():
    with pytest.raises(ConfigError, match=r"^prm.head='linear': expected one of token, value$"):
        refuse_unknown_choices(["-m", "prm.head=token,linear"], TrainRunSchema)
    with pytest.raises(ConfigError, match=r"^prm.last_layer='none': expected one of scores, full$"):
        refuse_unknown_choices(["prm.last_layer=choice(full,none)"], TrainRunSchema)
    refuse_unknown_choices(
        [
            "-m",
            "prm.head=token,value",
            "prm.head=Head.value",
            "prm.head=${oc.env:HEAD}",
            "~prm.last_layer",
            "--cfg",
            "job",
            "train.steps=3",
            "hydra.run.dir=out",
            "prm.head=[unclosed",
        ],
        TrainRunSchema,
    )
    refuse_unknown_choices(["prm.head=bogus"], EvaluateSchema)  # not a key of evaluate.yaml


def test_entry_scripts_refuse_a_bad_choice_with_one_line_and_exit_2(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    for script, args, line in [
        (
            "train.py",
            ["-m", "prm.head=token,linear"],
            "error: prm.head='linear': expected one of token, value",
        ),
        (
            "evaluate.py",
            ["checkpoint=x", "mode=first_error"],
            "error: mode='first_error': expected one of auto, best_of_n, processbench",
        ),
    ]:
        result = subprocess.run(
            [sys.executable, str(ROOT / script), *args], env=env, capture_output=True, text=True, cwd=tmp_path
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines() == [line]
    shown = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--cfg", "job", "prm.head=value", "data.too_long=skip"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert shown.returncode == 0, shown.stderr
    assert "\n  head: value\n" in shown.stdout and "\n  too_long: skip\n" in shown.stdout
