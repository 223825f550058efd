#!/usr/bin/env bash
# DreamPRM end to end: cold start (plain PRM), then domain reweighting from it, then best-of-N.
#
#   BACKBONE=/models/Qwen2-VL-2B-Instruct TRAIN=/data/train.json META=/data/meta.json \
#   TEST=/data/mathvista_bestofn.json IMAGES=/data/images bash experiments/dreamprm/run.sh [extra overrides]
#
# Values from the published recipe (conf/experiment/dreamprm.yaml): domain table, value head,
# log_mean meta loss, DARTS unrolled 5 steps, lower lr 5e-7. The backbone group defaults to
# qwen2_vl_2b; set GROUP=qwen2_5_vl_3b or internvl3_1b for the others.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${BACKBONE:?path of a local checkpoint}" "${TRAIN:?}" "${META:?}" "${TEST:?}" "${IMAGES:?}"
OUT=${OUT:-outputs/dreamprm}
GROUP=${GROUP:-qwen2_vl_2b}
LAUNCH=${LAUNCH:-python}
DATA=(data=dreamprm "data.train=$TRAIN" "data.meta=$META" "data.test=$TEST" "data.image_root=$IMAGES")

$LAUNCH train.py experiment=coldstart prm.head=value "backbone=$GROUP" "backbone.path=$BACKBONE" "${DATA[@]}" \
    "hydra.run.dir=$OUT/coldstart" "$@"
$LAUNCH train.py experiment=dreamprm "backbone=$GROUP" "backbone.path=$OUT/coldstart" "${DATA[@]}" \
    "hydra.run.dir=$OUT/dreamprm" "$@"
for run in coldstart dreamprm; do
    python evaluate.py "checkpoint=$OUT/$run" "${DATA[@]}" "hydra.run.dir=$OUT/$run/eval"
done
cat "$OUT"/dreamprm/weights.md
