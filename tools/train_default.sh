#!/usr/bin/env bash
# Reproduce the bundled default model from scratch: the compact student trained on
# ../shared/data/train (never eval/) with our supervised trainer. Resumable: each call
# continues from the run folder's checkpoint and stops after MAX_MINUTES (default 110),
# so a 2-core CPU makes progress in chunks of under two hours; run it again to continue.
set -euo pipefail
PY=${PY:-.venv/bin/python}
SCALE=${SCALE:-4}
SHARED=${SHARED:-../shared}
RUN=${RUN:-build/default_x${SCALE}}
STEPS=${STEPS:-3500}
MAX_MINUTES=${MAX_MINUTES:-110}
mkdir -p "$RUN"
init="$RUN/init_x${SCALE}.safetensors"
[[ -f $init ]] || "$PY" -m backend.default_model init --scale "$SCALE" --out "$init"
nice -n "${NICE:-0}" "$PY" -m backend.cli train \
  --data "$SHARED/data/train" --student compact --init "$init" --scale "$SCALE" \
  --crop $((24 * SCALE)) --batch-size 16 --steps "$STEPS" --lr 3e-4 --warmup 100 --schedule cosine \
  --precision bf16 --degradation bicubic --seed 2026 --workers 0 \
  --val-every 250 --checkpoint-every 50 --log-every 25 \
  --max-minutes "$MAX_MINUTES" --out "$RUN" --name "slimdiffsr_default_x${SCALE}"
