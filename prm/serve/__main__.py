"""Serve a PRM: ``python -m prm.serve checkpoint=<run dir or checkpoint>`` or ``python -m prm.serve
backbone=<config> backbone.path=<dir> [prompt=conversation]``.

The model loads as evaluate.py loads it (:func:`prm.evaluation.run.load_model`: a checkpoint's own
``config.yaml`` rebuilds backbone, head and prompt format; ``backbone=`` takes any model with the
token head). The length and text policies (``max_length``, ``too_long``, ``special_tokens``) default
to the checkpoint's ``data`` node (:func:`resolve_policies`). uvicorn serves the app
(:func:`prm.serve.app.create_app`) on ``host:port``; SIGINT / SIGTERM stop accepting connections and
let in-flight requests finish for up to ``graceful_shutdown_s`` seconds. Examples::

    python -m prm.serve checkpoint=outputs/2026-11-21/12-00-00 port=8000
    python -m prm.serve backbone=hf_causal_lm backbone.path=/ckpt/my_prm prompt=conversation \\
        image_root=/data/images api_key=secret
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from prm.checkpoint import resolve_checkpoint
from prm.config import DataOptions, ServeSchema, entry_overrides, user_error_exit, validate_serve_config

log = logging.getLogger("prm.serve")

POLICIES = ("max_length", "too_long", "special_tokens")  # serve keys defaulting to the run's data.<key>


def resolve_policies(cfg: DictConfig, checkpoint: Path | None) -> tuple[DictConfig, str]:
    """``cfg`` with ``max_length``, ``too_long`` and ``special_tokens`` set where they are null: the
    checkpoint's ``data.<key>`` (its ``config.yaml``), else the data schema's default
    (:class:`prm.config.DataOptions`: 4096, truncate, neutralize). Returns ``(cfg, one line saying
    where each came from)``. ``max_length=null`` in the checkpoint means no limit."""
    saved = None
    if checkpoint is not None and (checkpoint / "config.yaml").is_file():
        saved = OmegaConf.load(checkpoint / "config.yaml").get("data")
    cfg = cfg.copy()
    sources = []
    with open_dict(cfg):
        for key in POLICIES:
            if cfg[key] is not None:
                sources.append(f"{key}={cfg[key]} (command line / serve.yaml)")
            elif saved is not None and key in saved:
                cfg[key] = saved[key]
                sources.append(f"{key}={cfg[key]} (the checkpoint's data.{key})")
            else:
                cfg[key] = getattr(DataOptions, key)
                sources.append(f"{key}={cfg[key]} (default)")
    return cfg, "; ".join(sources)


def serve(cfg: DictConfig) -> None:
    """Validate ``cfg`` (:func:`prm.config.validate_serve_config`), load the model, serve until
    stopped."""
    import uvicorn

    from prm.device import pick_device
    from prm.evaluation.run import load_model
    from prm.serve.app import create_app

    validate_serve_config(cfg)
    any_model = cfg.get("backbone") is not None
    checkpoint = None if any_model else resolve_checkpoint(Path(cfg.checkpoint), {})
    device = pick_device(cfg.device)
    prm = load_model(cfg, checkpoint, device, {})
    cfg, sources = resolve_policies(cfg, checkpoint)
    log.info("policies: %s", sources)
    source = str(checkpoint) if checkpoint is not None else str(cfg.backbone.path)  # the prompt: metadata
    app = create_app(prm, cfg, device, source)
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not cfg.api_key:
        log.warning("listening on %s without an api_key: anyone reaching the port can use it", cfg.host)
    uvicorn.run(
        app,
        host=cfg.host,
        port=cfg.port,
        timeout_graceful_shutdown=cfg.graceful_shutdown_s,
        log_level="info",
    )


@hydra.main(config_path="../../conf", config_name="serve", version_base="1.3")
@user_error_exit
def main(cfg: DictConfig) -> None:
    serve(cfg)


if __name__ == "__main__":
    sys.argv[1:] = entry_overrides(sys.argv[1:], ServeSchema)
    main()
