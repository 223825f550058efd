"""``python -m prm.check data=... [backbone=...]``: the preflight data check alone.

Composes ``conf/config.yaml`` with the overrides given (the same groups and keys as ``train.py``),
builds the backbone (for its tokenizer, chat format and processor) and the data, runs
:func:`prm.preflight.preflight` on the splits asked for (``splits=train,meta,test``; default: every
split the data config sets) and prints the report. Exit status: 0 when the data passes, 2 with one
readable line on a data or config mistake (a traceback only with ``PRM_DEBUG=1``).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def main(argv: list[str] | None = None) -> int:
    """Run the check with Hydra-style ``argv`` overrides; returns the exit status (0 or 2)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from prm.config import SPLITS, TrainRunSchema, refuse_unknown_choices
    from prm.errors import UserError
    from prm.preflight import preflight

    argv = list(sys.argv[1:] if argv is None else argv)
    splits = None
    for arg in list(argv):
        if arg.startswith("splits="):
            splits = tuple(s for s in arg.split("=", 1)[1].split(",") if s)
            argv.remove(arg)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # the preflight and the readers log their counts as they go (train.py's log keeps them); here the
    # whole report, readers' counts included, is printed once at the end instead
    logging.getLogger("prm.preflight").setLevel(logging.ERROR)
    logging.getLogger("prm.data.errors").setLevel(logging.WARNING)
    try:
        refuse_unknown_choices(argv, TrainRunSchema)
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=argv)
        data = instantiate(cfg.data)
        OmegaConf.resolve(cfg.backbone)
        backbone = instantiate(cfg.backbone)
        if splits is None:
            splits = tuple(split for split in SPLITS if data.path(split) is not None)
        unknown = set(splits) - set(SPLITS)
        if unknown:
            raise UserError(f"splits= takes names among {SPLITS}, got {sorted(unknown)}")
        _, report = preflight(data, backbone, splits)
    except (UserError, HydraException) as error:
        if os.environ.get("PRM_DEBUG") == "1":
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
