"""Every experiment preset composes to its published values and its parts instantiate.

Values: DreamPRM's README defaults (domain table, value head, log_mean meta loss, DARTS unroll 5,
StepLR(5000, 0.5), lower lr 5e-7, meta lr 1e-2) and DreamPRM-1.5's (instance table with clip
activation and meta lr 5e-3, or instance net with sigmoid, hidden 10 and meta lr 1e-4; loss target
"both"; lower lr 5e-5 with 5% cosine warmup; bf16; batch 1).
"""

import pytest
import torch
from conftest import compose_config
from hydra.utils import instantiate
from omegaconf import OmegaConf

from prm.aggregation import Aggregation
from prm.config import validate_train_config


def preset(name: str, hydra: bool = False):
    return compose_config(f"experiment={name}", hydra=hydra)


def parameter():
    return torch.nn.Parameter(torch.zeros(3))


def lr_after(cfg, steps: int, total: int) -> list[float]:
    """The lower learning rate after each of ``steps`` optimiser steps of a ``total``-step run."""
    optimizer = instantiate(cfg.train.optimizer)([parameter()])
    make = instantiate(cfg.schedule)
    scheduler = make(optimizer, total_steps=total)  # every schedule: fn(optimizer, total_steps, ...)
    rates = []
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    return rates


def upper_optimizer(cfg):
    return instantiate(cfg.reweight.upper.optimizer)([parameter()])


def test_dreamprm():
    cfg = preset("dreamprm")
    validate_train_config(cfg)
    assert cfg.reweight.name == "domain_table" and cfg.reweight.module._target_ == "prm.reweight.DomainTable"
    assert cfg.prm.head == "value" and cfg.reweight.upper.loss_target == "+"
    aggregation = instantiate(cfg.aggregation)
    assert isinstance(aggregation, Aggregation) and aggregation.name == "log_mean"
    assert aggregation.is_probability
    assert cfg.reweight.hypergradient.type == "darts" and cfg.reweight.hypergradient.unroll_steps == 5
    optimizer = instantiate(cfg.train.optimizer)([parameter()])
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["lr"] == 5e-7 and optimizer.defaults["weight_decay"] == 1e-3
    upper = upper_optimizer(cfg)
    assert isinstance(upper, torch.optim.AdamW)
    assert upper.defaults["lr"] == 1e-2 and upper.defaults["weight_decay"] == 0.0
    assert cfg.train.steps == 10000 and cfg.train.precision == "bf16" and cfg.train.gradient_clipping == 1.0
    assert cfg.data.batch_size == 1 and cfg.reweight.upper.batch_size == 1
    # StepLR(step_size=5000, gamma=0.5): 5e-7 for 5000 steps, then 2.5e-7.
    assert cfg.schedule._target_ == "prm.schedules.step_schedule"  # StepLR, one schedule signature
    rates = lr_after(cfg, 5000, cfg.train.steps)
    assert rates[4998] == pytest.approx(5e-7, rel=1e-12) and rates[4999] == pytest.approx(2.5e-7, rel=1e-12)


def test_dreamprm15_table():
    cfg = preset("dreamprm15_table")
    validate_train_config(cfg)
    assert cfg.reweight.name == "instance_table" and cfg.reweight.module.initialization == 1.0
    activation = instantiate(cfg.activation)
    assert isinstance(activation, torch.nn.Hardtanh)
    assert (activation.min_val, activation.max_val) == (-1.0, 3.0)
    assert cfg.prm.head == "token" and cfg.reweight.upper.loss_target == "both"
    assert instantiate(cfg.aggregation).name == "mean"
    assert cfg.reweight.hypergradient.type == "darts" and cfg.reweight.hypergradient.unroll_steps == 1
    # published: the hypergradient on the lower batch, from the first step (the strategy's defaults differ)
    assert cfg.reweight.hypergradient.probe_chains == 0 and cfg.reweight.hypergradient.warmup_steps == 0
    upper = upper_optimizer(cfg)
    assert isinstance(upper, torch.optim.SparseAdam) and upper.defaults["lr"] == 5e-3
    optimizer = instantiate(cfg.train.optimizer)([parameter()])
    assert optimizer.defaults["lr"] == 5e-5 and optimizer.defaults["weight_decay"] == 1e-2
    assert cfg.train.steps == 100000 and cfg.train.precision == "bf16" and cfg.train.gradient_clipping == 1.0
    assert cfg.data.batch_size == 1 and cfg.reweight.upper.batch_size == 1
    # Cosine with 5% linear warmup: 5000 warmup steps of 100k.
    assert cfg.schedule.name == "cosine" and cfg.schedule.warmup_ratio == 0.05
    rates = lr_after(cfg, 5000, cfg.train.steps)
    assert rates[2499] == pytest.approx(2.5e-5, rel=1e-9) and rates[4999] == pytest.approx(5e-5, rel=1e-9)


def test_dreamprm15_net():
    cfg = preset("dreamprm15_net")
    validate_train_config(cfg)
    assert cfg.reweight.name == "instance_net"
    module = cfg.reweight.module
    assert (module.hidden_size, module.layers, list(module.features)) == (10, 1, ["probs"])
    assert cfg.reweight.hypergradient.probe_chains == 0 and cfg.reweight.hypergradient.unroll_steps == 1
    assert isinstance(instantiate(cfg.activation), torch.nn.Sigmoid)
    assert cfg.prm.head == "token" and cfg.reweight.upper.loss_target == "both"
    assert instantiate(cfg.aggregation).name == "mean"
    upper = upper_optimizer(cfg)
    assert isinstance(upper, torch.optim.AdamW)
    assert upper.defaults["lr"] == 1e-4 and upper.defaults["weight_decay"] == 1e-3
    assert instantiate(cfg.train.optimizer)([parameter()]).defaults["lr"] == 5e-5
    assert cfg.train.steps == 100000 and cfg.train.precision == "bf16"
    assert cfg.schedule.name == "cosine" and cfg.schedule.warmup_ratio == 0.05


def test_coldstart():
    cfg = preset("coldstart")
    validate_train_config(cfg)
    assert cfg.reweight.name == "none"
    optimizer = instantiate(cfg.train.optimizer)([parameter()])
    assert optimizer.defaults["lr"] == 5e-5 and optimizer.defaults["weight_decay"] == 1e-2
    assert cfg.train.steps == 20000 and cfg.train.precision == "bf16" and cfg.train.gradient_clipping == 1.0
    rates = lr_after(cfg, 20000, cfg.train.steps)
    assert rates[999] == pytest.approx(5e-5, rel=1e-9) and rates[-1] == pytest.approx(0.0, abs=1e-15)


def test_aggregation_sweep():
    cfg = preset("aggregation_sweep", hydra=True)
    validate_train_config(cfg)
    assert cfg.reweight.name == "instance_table"
    assert cfg.hydra.sweeper.params == {"aggregation": "mean,min,max,log_mean"}


def test_smoke():
    cfg = preset("smoke")
    validate_train_config(cfg)
    assert (cfg.train.steps, cfg.train.validate_every, cfg.train.save_every) == (4, 2, 2)
    assert OmegaConf.to_container(cfg.data.limit) == {"train": 48, "meta": 16, "test": 4}
    assert (cfg.data.batch_size, cfg.data.eval_batch_size) == (4, 8)
    assert cfg.logger._target_ == "prm.tracking.Tracker" and "wandb" not in cfg.logger
    assert cfg.data.generator.train_per_domain == 300  # the demo itself is untouched: smoke is a delta
