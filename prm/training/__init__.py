"""The training recipe behind train.py: ``train(cfg, run_dir)`` and its named setup steps."""

from prm.training.recipe import train

__all__ = ["train"]
