#!/usr/bin/env bash
# DreamPRM-1.5 end to end: cold start, then Instance Table and Instance Net from it, then best-of-N.
#
#   BACKBONE=/models/InternVL3-1B-hf TRAIN=/data/train.json META=/data/meta.json \
#   TEST=/data/mmmu_bestofn.json IMAGES=/data/images bash experiments/dreamprm15/run.sh [extra overrides]
#
# Every value comes from the published recipe (conf/experiment/{coldstart,dreamprm15_table,dreamprm15_net}.yaml);
# extra arguments are passed to every train.py call (e.g. distributed=zero2 under torchrun: set LAUNCH).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${BACKBONE:?path of a local InternVL3-1B-hf checkpoint}" "${TRAIN:?}" "${META:?}" "${TEST:?}" "${IMAGES:?}"
OUT=${OUT:-outputs/dreamprm15}
LAUNCH=${LAUNCH:-python}            # e.g. LAUNCH="torchrun --nproc_per_node 8"
DATA=(data=dreamprm15 "data.train=$TRAIN" "data.meta=$META" "data.test=$TEST" "data.image_root=$IMAGES")

$LAUNCH train.py experiment=coldstart backbone=internvl3_1b "backbone.path=$BACKBONE" "${DATA[@]}" \
    "hydra.run.dir=$OUT/coldstart" "$@"
for recipe in dreamprm15_table dreamprm15_net; do
    $LAUNCH train.py "experiment=$recipe" backbone=internvl3_1b "backbone.path=$OUT/coldstart" "${DATA[@]}" \
        "hydra.run.dir=$OUT/$recipe" "$@"
done
for run in coldstart dreamprm15_table dreamprm15_net; do
    python evaluate.py "checkpoint=$OUT/$run" "${DATA[@]}" "hydra.run.dir=$OUT/$run/eval"
done
grep -H "| mean " "$OUT"/*/eval/best_of_n.md
