#!/usr/bin/env bash
# The GPU measurements of README.md ("GPU check") and experiments/benchmarks/README.md ("On a GPU"),
# in one run of about 8 minutes on one H200:
#
#   bash experiments/gpu_measurements.sh [MODEL_DIR] [OUT]
#
# MODEL_DIR: a causal LM folder whose config.json and tokenizer are read (weights not needed; default
# /tmp/smollm2, e.g. `python -m prm.model.gguf_export /tmp/smollm2`); its architecture is served with
# random weights (experiments/benchmarks/random_weights.py). OUT: where the tables go (default
# outputs/gpu_measurements/<date>_<time>). Each step has a time limit; a step that fails or runs out
# of time leaves the others running and says so in OUT/steps.txt.
set -u
cd "$(dirname "$0")/.." || exit 1
MODEL=${1:-/tmp/smollm2}
OUT=${2:-outputs/gpu_measurements/$(date +%Y-%m-%d_%H-%M-%S)}
PY=${PYTHON:-python}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
T0=$(date +%s)
step() {  # step NAME LIMIT_S COMMAND...: run, output to OUT/NAME.txt, status to OUT/steps.txt
    local name=$1 limit=$2; shift 2
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?  # 124: ran out of time
    echo "[$(( $(date +%s) - T0 )) s] $name: exit $rc" | tee -a "$OUT/steps.txt"
}
step gpu_check 300 $PY experiments/gpu_check.py --steps 8 --warmup 2 --budget-s 210 --out "$OUT/gpu_check"
step serve_tiny_text 90 $PY experiments/benchmarks/serve_load.py --levels 1,8,32 --rounds 3 --bad-every 8 --check
step write_random_model 120 $PY experiments/benchmarks/random_weights.py "$MODEL" "$OUT/random_model"
step serve_model_bf16 150 $PY experiments/benchmarks/serve_load.py --path "$OUT/random_model" --levels 1,8,32 \
    --rounds 3 --baseline-chains 32 --precision bf16 --bad-every 8
step serve_tiny_vl 90 $PY experiments/benchmarks/serve_load.py --images --levels 1,8,32 --rounds 3 --bad-every 8
rm -rf "$OUT/random_model"
echo "tables: $OUT"
