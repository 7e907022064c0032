#!/usr/bin/env bash
# The GPU check for when a GPU is lent (one GPU, under 5 minutes): build the real-width reduced-depth
# SD3.5-Medium and FLUX.1 pipeline folders, then run one full iteration (rollout, reward, update, sync,
# checkpoint) of the SD3.5 and FLUX preset structures on them, printing each actor's peak memory and
# the first minibatch's ratio statistics (scripts/device_check.py).
#
#   bash scripts/device_check.sh [OUT_DIR]          (default OUT_DIR: /tmp/flowray_device_check)
#
# Environment: PYTHON (default: .venv/bin/python if present, else python3); DEVICE_CHECK_CPU=1 runs
# the same on CPU (what the test suite checks); SD35_CONFIG / FLUX_CONFIG pick other presets;
# DEVICE_CHECK_OVERRIDES="key=value ..." is added to both runs.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-/tmp/flowray_device_check}"
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
SD35_CONFIG="${SD35_CONFIG:-configs/sd35_pickscore.yaml}"
FLUX_CONFIG="${FLUX_CONFIG:-configs/flux_g2rpo_hps.yaml}"
BUILDER=scripts/build_real_width.py
GPU_FLAG=--gpu
[ "${DEVICE_CHECK_CPU:-0}" = 1 ] && GPU_FLAG=

if [ ! -f "$BUILDER" ]; then
  echo "device_check: $BUILDER is missing: it builds the real-width reduced-depth model folders" >&2
  exit 2
fi
export HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0

start=$(date +%s)
echo "device_check: building the real-width reduced-depth folders under $OUT/models"
"$PYTHON" "$BUILDER" "$OUT/models"
for folder in sd35-medium-real-width flux1-dev-real-width; do
  if [ ! -f "$OUT/models/$folder/model_index.json" ]; then
    echo "device_check: $BUILDER did not write $OUT/models/$folder/model_index.json" >&2
    exit 2
  fi
done
if [ -n "$GPU_FLAG" ]; then
  "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'device_check: no CUDA device (DEVICE_CHECK_CPU=1 runs on CPU)')"
fi

run() {  # family config
  echo "device_check: one iteration of $2 on $OUT/models/$1"
  "$PYTHON" scripts/device_check.py --config "$2" --model-path "$OUT/models/$1" \
    --output-dir "$OUT/runs/$1" $GPU_FLAG ${DEVICE_CHECK_OVERRIDES:-}  # word-split on purpose
}
run sd35-medium-real-width "$SD35_CONFIG"
run flux1-dev-real-width "$FLUX_CONFIG"
echo "device_check: done in $(( $(date +%s) - start )) s; reports in $OUT/runs/*/device_check.json"
