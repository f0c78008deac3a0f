#!/usr/bin/env bash
# Reproduce a bundled default model: the compact student trained on ../shared/data/train
# (never eval/) with our supervised trainer.
#   SCALE=4: two stages. 1) 13,000 steps of L1 from scratch (untrained compact student
#            whose output is the bicubic input), build/default_x4; 2) 9000 steps of
#            squared error (what PSNR measures) from stage 1's weights at a lower rate,
#            build/default_x4/psnr.
#   SCALE=8: fine-tuned from x4 stage 1 (same network; the x4 model already knows how to
#            restore detail, x8 only has to learn the larger gap).
# Resumable: each call runs at most MAX_MINUTES (default 110) of the stage it is in and
# continues where the last call stopped, so a 2-core CPU makes progress in chunks of under
# two hours (x4: two calls, one per stage); run it again to continue. The shipped file is
# then made by `python -m backend.default_model finalize` (`make train-default` does both).
set -euo pipefail
PY=${PY:-.venv/bin/python}
SCALE=${SCALE:-4}
SHARED=${SHARED:-../shared}
MAX_MINUTES=${MAX_MINUTES:-110}
X4_STAGE1=build/default_x4/slimdiffsr_default_x4.safetensors

complete() {  # is $1 the export of a finished run?
  [[ -f $1 ]] && "$PY" -c "import sys; from backend.weights import load_weights
t = load_weights(sys.argv[1]).metadata.get('training') or {}
sys.exit(0 if t.get('complete') else 1)" "$1"
}

train() {  # run init steps crop batch lr warmup seed [extra args...]
  local run=$1 init=$2 steps=$3 crop=$4 batch=$5 lr=$6 warmup=$7 seed=$8
  shift 8
  mkdir -p "$run"
  nice -n "${NICE:-0}" "$PY" -m backend.cli train \
    --data "$SHARED/data/train" --student compact --init "$init" --scale "$SCALE" \
    --crop "$crop" --batch-size "$batch" --steps "$steps" --lr "$lr" --warmup "$warmup" --schedule cosine \
    --precision bf16 --degradation bicubic --seed "$seed" --workers 0 \
    --val-every 500 --checkpoint-every 100 --log-every 50 \
    --max-minutes "$MAX_MINUTES" --out "$run" --name "slimdiffsr_default_x${SCALE}" "$@"
}

case "$SCALE" in
  4)
    if ! complete "$X4_STAGE1"; then
      init=build/default_x4/init_x4.safetensors
      mkdir -p build/default_x4
      [[ -f $init ]] || "$PY" -m backend.default_model init --scale 4 --out "$init"
      train build/default_x4 "$init" "${STEPS:-13000}" 128 8 5e-4 200 2026
      complete "$X4_STAGE1" || exit 0  # chunk done; the next call continues
      echo "x4 stage 1 done; run again for stage 2 (squared-error fine-tune)"
      exit 0
    fi
    train build/default_x4/psnr "$X4_STAGE1" "${STEPS2:-9000}" 128 8 2e-4 100 2027 --l1 0 --mse 1
    ;;
  8)
    complete "$X4_STAGE1" || { echo "error: $X4_STAGE1 missing; train the x4 model first (make train-default)" >&2; exit 1; }
    train build/default_x8 "$X4_STAGE1" "${STEPS:-2000}" 192 4 2e-4 100 2026
    ;;
  *) echo "error: SCALE must be 4 or 8" >&2; exit 2 ;;
esac
