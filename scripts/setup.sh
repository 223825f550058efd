#!/usr/bin/env bash
# Set up the project on a fresh machine: a virtual environment (.venv, unless one is already
# active), the package in editable mode with its pinned dependencies, and betty-ml 0.2.1.
# Idempotent: a second run only checks. Usage: source-free, call as `bash scripts/setup.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${VIRTUAL_ENV:-}" ]; then
    PY="$VIRTUAL_ENV/bin/python"
else
    if [ ! -x .venv/bin/python ]; then
        echo "[setup] creating .venv"
        python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
    fi
    PY=.venv/bin/python
fi

stamp=.venv-stamp
want="$(cat setup.cfg pyproject.toml scripts/setup.sh | sha1sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$PY" -c "import prm, betty, torch" 2>/dev/null; then
    echo "[setup] environment up to date"
    exit 0
fi

"$PY" -m pip install --quiet --upgrade pip
# torch first and pinned: 2.13.0 is the local CPU build; any other version pulls CUDA wheels.
"$PY" -m pip install --quiet torch==2.13.0
# gguf: the GGUF loading tests (tiny GGUF files written by the tests themselves) run in CI too.
"$PY" -m pip install --quiet -e ".[test,gguf]"
# betty-ml 0.2.1 declares Requires-Python < 3.11, so a plain `pip install betty-ml` on 3.11 silently
# installs 0.1.1, which lacks EngineConfig.strategy and has a DARTS bug (lower model left shifted by
# -eps*v) and a roll_back that restores nothing. 0.2.1 runs fine on 3.11 / torch 2.13, so we install
# it on purpose, without letting pip re-resolve its (already satisfied) dependencies.
"$PY" -m pip install --quiet --no-deps --ignore-requires-python betty-ml==0.2.1
"$PY" -c "import betty, torch, transformers, hydra, deepspeed, wandb, PIL; \
from importlib.metadata import version; \
assert version('betty-ml') == '0.2.1', version('betty-ml'); \
print('[setup] torch', torch.__version__, '| transformers', transformers.__version__, '| betty-ml', version('betty-ml'))"
echo "$want" > "$stamp"
