#!/usr/bin/env bash
# Reproduce a bundled default model: the compact student trained on ../shared/data/train
# (never eval/) with our supervised trainer.
#   SCALE=4: from scratch (untrained compact student whose output is the bicubic input).
#   SCALE=8: fine-tuned from the finished x4 run (same network; the x4 model already
#            knows how to restore detail, x8 only has to learn the larger gap).
# Resumable: each call continues from the run folder's checkpoint and stops after
# MAX_MINUTES (default 110), so a 2-core CPU makes progress in chunks of under two hours;
# run it again to continue. `make train-default` then ships the run's weights with
# color_match false and lr_consistency true (python -m backend.default_model finalize).
set -euo pipefail
PY=${PY:-.venv/bin/python}
SCALE=${SCALE:-4}
SHARED=${SHARED:-../shared}
RUN=${RUN:-build/default_x${SCALE}}
MAX_MINUTES=${MAX_MINUTES:-110}
mkdir -p "$RUN"
case "$SCALE" in
  4)
    STEPS=${STEPS:-13000}; CROP=128; BATCH=8; LR=5e-4; WARMUP=200
    init="$RUN/init_x4.safetensors"
    [[ -f $init ]] || "$PY" -m backend.default_model init --scale 4 --out "$init"
    ;;
  8)
    STEPS=${STEPS:-2000}; CROP=192; BATCH=4; LR=2e-4; WARMUP=100
    init=build/default_x4/slimdiffsr_default_x4.safetensors
    [[ -f $init ]] || { echo "error: $init missing; train the x4 model first (make train-default)" >&2; exit 1; }
    ;;
  *) echo "error: SCALE must be 4 or 8" >&2; exit 2 ;;
esac
nice -n "${NICE:-0}" "$PY" -m backend.cli train \
  --data "$SHARED/data/train" --student compact --init "$init" --scale "$SCALE" \
  --crop "$CROP" --batch-size "$BATCH" --steps "$STEPS" --lr "$LR" --warmup "$WARMUP" --schedule cosine \
  --precision bf16 --degradation bicubic --seed 2026 --workers 0 \
  --val-every 500 --checkpoint-every 100 --log-every 50 \
  --max-minutes "$MAX_MINUTES" --out "$RUN" --name "slimdiffsr_default_x${SCALE}"
