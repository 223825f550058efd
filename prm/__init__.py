"""prm-suite."""

from prm import config as _config  # noqa: F401  (registers the config schemas with Hydra's ConfigStore)
