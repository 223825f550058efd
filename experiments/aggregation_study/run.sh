#!/usr/bin/env bash
# Which aggregation should the meta loss use? A Hydra sweep over aggregation x seed on the demo
# benchmark (instance-table reweighting from a shared cold start), then one comparison table.
#
#   bash experiments/aggregation_study/run.sh [extra overrides, e.g. hydra/launcher=local_parallel]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/aggregation_study}
[ -e "$OUT/coldstart/checkpoints/latest" ] || $PY train.py "hydra.run.dir=$OUT/coldstart" logger=jsonl
$PY train.py -m experiment=aggregation_sweep seed=0,1 train.steps=400 reweight.upper.optimizer.lr=0.1 \
    "backbone.path=$OUT/coldstart" "hydra.sweep.dir=$OUT/sweep" "$@"
$PY evaluate.py "checkpoint=$OUT/sweep" "hydra.run.dir=$OUT/sweep/eval"
