#!/usr/bin/env bash
# Reproduce a bundled default model: the compact student trained on ../shared/data/train
# (never eval/) with our supervised trainer, in stages (each its own run folder):
#   SCALE=4: 1. from scratch, plain L1 (13,000 steps; the untrained student outputs the
#               bicubic input), build/default_x4;
#            2. squared error (what PSNR measures) from stage 1's weights at a lower rate
#               (9000 steps, other crops), build/default_x4/psnr;
#            3. squared error on 256 px crops (the deeper UNet levels see 16x16 positions
#               instead of 8x8, fewer of them on a zero-padded border), small scenes
#               drawn more often (sqrt-area sampling), 4000 steps, build/default_x4/large.
#   SCALE=8: 1. x4's stage 1 fine-tuned for x8 (same network; it already knows how to
#               restore detail, x8 only has to learn the larger gap), build/default_x8;
#            2. squared error on 384 px crops, sqrt-area sampling, build/default_x8/large.
# Those are the clean regime's network (antialiased reductions). Then experts fine-tuned
# from it (squared error, 256/384 px crops, seed 2031):
#   aliased: --degradation sensor-aliased (point sampling at a random phase), x4 2000
#            steps, x8 1000 steps, build/default_x$SCALE/aliased;
#   soft:    --degradation sensor-soft (PSF, detector integration, noise, JPEG), x4 2500
#            steps, x8 1000 steps, build/default_x$SCALE/soft;
# then the degradation classifier (shared by both scales, minutes), build/estimator. x4's
# mixture per raster is picked by a router: crops of the training files labelled with each
# candidate mixture's PSNR gain (resumable, cached in build/default_x4/router_cache; about
# 16 min for 2000 crops on 2 cores), then a short training from the classifier's features
# (backend/training/router.py), then a second router from the first one's features on new
# labels: 15 % of the HR crops natively soft instead of 30 %, half of them recoloured
# (--colour-augment 0.5: grey, band order, gamma, contrast): ROUTERS="0.3:0 0.15:0.5". x8's is picked by the classifier, its aliased log-odds
# shifted by -2 (chosen on the held-out training files). The shipped file holds the
# networks and the estimator (backend/regimes.py); it runs without the LR-consistency step
# (which assumes the antialiased kernel, and hurts on the other regimes).
# CLEAN=<weights> starts from an existing clean network instead of training stages 1-3
# again, e.g. the shipped file's own: `python -m backend.default_model unpack
# resources/weights/slimdiffsr_default_x4.safetensors --out build/shipped_x4` writes it as
# build/shipped_x4/clean_x4.safetensors (and the experts and the estimator beside it).
# Resumable: a call continues each unfinished stage from its checkpoint and stops once
# MAX_MINUTES (default 110) are spent across its stages, so a 2-core CPU makes progress
# in chunks of under two hours; run it again to continue. Finished stages are skipped.
# Once the last stage is finished, its weights are shipped to resources/weights with
# `python -m backend.default_model finalize` (metadata, measured receptive margin).
# THREADS=N limits torch's CPU threads (e.g. THREADS=1 to train x4 and x8 side by side).
# PRECISION: bf16 autocast where the CPU computes bf16 natively (AMX / AVX-512 BF16), else
# fp32 (emulated bf16 is about 17x slower per step on an AVX2-only CPU); the earlier
# stages were trained with bf16 on such a CPU.
set -euo pipefail
PY=${PY:-.venv/bin/python}
SCALE=${SCALE:-4}
SHARED=${SHARED:-../shared}
MAX_MINUTES=${MAX_MINUTES:-110}
PRECISION=${PRECISION:-$("$PY" -c "from backend.inference import cpu_has_fast_bf16 as f; print('bf16' if f() else 'fp32')")}
X4=build/default_x4
X4_PSNR=build/default_x4/psnr
X4_LARGE=build/default_x4/large
X8=build/default_x8
X8_LARGE=build/default_x8/large
ESTIMATOR=build/estimator/estimator.safetensors

finished() {  # weights file -> success if it exists and records a complete run
  [[ -f $1 ]] && "$PY" - "$1" <<'PYEOF'
import sys
from backend.weights import load_weights
training = load_weights(sys.argv[1]).metadata.get("training") or {}
sys.exit(0 if isinstance(training, dict) and training.get("complete") else 1)
PYEOF
}

stage() {  # run-folder name init steps crop batch lr warmup seed [extra trainer options...]
  local run=$1 name=$2 init=$3 steps=$4 crop=$5 batch=$6 lr=$7 warmup=$8 seed=$9
  shift 9
  if finished "$run/$name.safetensors"; then
    echo "stage $run: finished"
    return 0
  fi
  local left=$((MAX_MINUTES - SECONDS / 60))
  if ((left < 5)); then
    echo "time budget of this call spent; run the same command again to continue"
    exit 0
  fi
  [[ -f $init ]] || { echo "error: $init missing; finish the earlier stage first" >&2; exit 1; }
  mkdir -p "$run"
  nice -n "${NICE:-0}" "$PY" -m backend.cli train \
    --data "$SHARED/data/train" --student compact --init "$init" --scale "$SCALE" \
    --crop "$crop" --batch-size "$batch" --steps "$steps" --lr "$lr" --warmup "$warmup" \
    --schedule cosine --precision "$PRECISION" --degradation "${DEGRADATION:-bicubic}" --seed "$seed" --workers 0 \
    --val-every 500 --checkpoint-every 100 --log-every 50 \
    --max-minutes "$left" --out "$run" --name "$name" ${THREADS:+--threads "$THREADS"} "$@"
  finished "$run/$name.safetensors" || { echo "stage $run paused; run the same command again to continue"; exit 0; }
}

estimator() {  # the degradation estimator shared by x4 and x8 (minutes; redone if interrupted)
  # A lock: SCALE=4 and SCALE=8 calls side by side train it once; the later one waits.
  mkdir -p "$(dirname "$ESTIMATOR")"
  (
    flock 9
    [[ -f $ESTIMATOR ]] || "$PY" -m backend.default_model estimator --shared "$SHARED" --seed 2031 --out "$ESTIMATOR"
  ) 9>"$ESTIMATOR.lock"
}

ship() {  # clean weights, finalize options -> resources/weights/slimdiffsr_default_x$SCALE.safetensors
  # ROUTERS set: the experts with the classifier first, then one router per round, each
  # learning from the experts and starting from the previous estimator's features (the
  # classifier's for the first). A round is NATIVE_SOFT:COLOUR, the shares of HR crops
  # blurred first (natively soft imagery) and recoloured in its labels; ROUTER_CROP is the
  # crops' LR side. ROUTERS unset: the classifier itself picks the mixture.
  local clean=$1 run=build/default_x$SCALE estimator=$ESTIMATOR from round=0 spec
  shift
  from=$run/experts_x$SCALE.safetensors
  for spec in ${ROUTERS:-}; do
    round=$((round + 1))
    local out=$run/router_x$SCALE.safetensors
    ((round == 1)) || out=$run/router${round}_x$SCALE.safetensors
    SLIMDIFFSR_SHARED=$SHARED "$PY" -m backend.default_model finalize "$clean" "$from" \
      --no-lr-consistency --estimator "$estimator" "$@"
    [[ -f $out ]] || "$PY" -m backend.default_model router "$from" --shared "$SHARED" --seed 2031 \
      --cache "$run/router_cache" --train-crops "$ROUTER_CROPS" --val-crops "$ROUTER_VAL_CROPS" \
      ${ROUTER_CROP:+--crop "$ROUTER_CROP"} --native-soft "${spec%%:*}" --colour-augment "${spec##*:}" \
      --out "$out"
    estimator=$out
    from=$run/routed${round}_x$SCALE.safetensors
  done
  SLIMDIFFSR_SHARED=$SHARED "$PY" -m backend.default_model finalize "$clean" \
    "resources/weights/slimdiffsr_default_x$SCALE.safetensors" --no-lr-consistency \
    --estimator "$estimator" "$@"
}

case "$SCALE" in
  4)
    clean=${CLEAN:-$X4_LARGE/slimdiffsr_default_x4.safetensors}
    if [[ -z ${CLEAN:-} ]]; then
      mkdir -p "$X4"
      init="$X4/init_x4.safetensors"
      [[ -f $init ]] || "$PY" -m backend.default_model init --scale 4 --out "$init"
      stage "$X4" slimdiffsr_default_x4 "$init" "${STEPS:-13000}" 128 8 5e-4 200 2026
      stage "$X4_PSNR" slimdiffsr_default_x4 "$X4/slimdiffsr_default_x4.safetensors" \
        "${PSNR_STEPS:-9000}" 128 8 2e-4 100 2027 --l1 0 --mse 1
      stage "$X4_LARGE" slimdiffsr_default_x4 "$X4_PSNR/slimdiffsr_default_x4.safetensors" \
        "${LARGE_STEPS:-4000}" 256 2 1e-4 50 2028 --l1 0 --mse 1 --sampling sqrt-area
    fi
    DEGRADATION=sensor-soft stage "$X4/soft" slimdiffsr_soft_x4 "$clean" \
      "${SOFT_STEPS:-2500}" 256 2 2e-4 100 2031 --l1 0 --mse 1 --sampling sqrt-area
    DEGRADATION=sensor-aliased stage "$X4/aliased" slimdiffsr_aliased_x4 "$clean" \
      "${EXPERT_STEPS:-2000}" 256 2 2e-4 100 2031 --l1 0 --mse 1 --sampling sqrt-area
    estimator
    ROUTER_CROPS=2000 ROUTER_VAL_CROPS=300 ROUTERS="0.3:0 0.15:0.5" ship "$clean" \
      --expert "soft=$X4/soft/slimdiffsr_soft_x4.safetensors" \
      --expert "aliased=$X4/aliased/slimdiffsr_aliased_x4.safetensors"
    ;;
  8)
    clean=${CLEAN:-$X8_LARGE/slimdiffsr_default_x8.safetensors}
    if [[ -z ${CLEAN:-} ]]; then
      stage "$X8" slimdiffsr_default_x8 "$X4/slimdiffsr_default_x4.safetensors" \
        "${STEPS:-2000}" 192 4 2e-4 100 2026
      stage "$X8_LARGE" slimdiffsr_default_x8 "$X8/slimdiffsr_default_x8.safetensors" \
        "${LARGE_STEPS:-1500}" 384 1 1e-4 50 2028 --l1 0 --mse 1 --sampling sqrt-area
    fi
    DEGRADATION=sensor-soft stage "$X8/soft" slimdiffsr_soft_x8 "$clean" \
      "${EXPERT_STEPS:-1000}" 384 1 1e-4 50 2031 --l1 0 --mse 1 --sampling sqrt-area
    DEGRADATION=sensor-aliased stage "$X8/aliased" slimdiffsr_aliased_x8 "$clean" \
      "${EXPERT_STEPS:-1000}" 384 1 1e-4 50 2031 --l1 0 --mse 1 --sampling sqrt-area
    estimator
    ship "$clean" --expert "soft=$X8/soft/slimdiffsr_soft_x8.safetensors" \
      --expert "aliased=$X8/aliased/slimdiffsr_aliased_x8.safetensors" --prior aliased=-2
    ;;
  *) echo "error: SCALE must be 4 or 8" >&2; exit 2 ;;
esac
