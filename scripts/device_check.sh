#!/usr/bin/env bash
# The GPU check (one GPU; ~5-6 minutes estimated on one H100): build the real-width reduced-depth SD3.5-Medium
# and FLUX.1 pipeline folders (scripts/build_real_width.py), then run scripts/device_check.py's matrix on them:
# Flow-GRPO and DiffusionNFT in cluster.layout hybrid and split, and FLUX's G2RPO in hybrid. Each run asserts
# an on-policy first minibatch (ratio within 1e-3 of 1, clip fraction 0), peak GPU memory per actor at most
# the memory plan's, an evaluation (eval.json) and a bit-exact resume. One summary table at the end.
#
#   bash scripts/device_check.sh [OUT_DIR]          (default OUT_DIR: /tmp/flowray_device_check)
#   MODEL_DIR=/path/to/stable-diffusion-3.5-medium bash scripts/device_check.sh [OUT_DIR]
#
# MODEL_DIR: a local diffusers folder of SD3.5-Medium's real weights; nothing is built, the SD3.5 rows run on
# it at 256 px (no FLUX row). Exit status: 0 every row passed, 1 a row failed, 2 the check could not start.
# FAMILY (default sd35: the matrix above) = sd35l | flux2 | flux2_klein | qwen_image | z_image | wan: only that
# model's preset, one hybrid row (sd35l_grpo_geneval, flux2_dev_grpo_pickscore, flux2_klein_nft_pickscore,
# qwen_image_grpo_ocr, z_image_grpo_pickscore, wan_dancegrpo_video: scripts/device_check.py RUNS) on its real-width
# reduced-depth folder (scripts/build_real_width.py --family FAMILY; FLUX.2 from scripts/build_flux2.py, Qwen-Image
# and Z-Image from scripts/build_qwen_z_image.py, Wan2.1-T2V-1.3B from scripts/build_wan.py), or on MODEL_DIR's
# real weights of that model.
# Environment: PYTHON (default: .venv/bin/python if present, else python3); DEVICE_CHECK_CPU=1 runs the same
# checks on CPU at cut sizes, the GPU memory check skipped (what tests/test_device_check.py checks on the tiny
# model); DEVICE_CHECK_FLUX=0/1 drops or keeps the FLUX row (default: 1 on GPU, 0 on CPU, where full
# fine-tuning at FLUX's width needs ~18 GB per actor); DEVICE_CHECK_ONLY=flow_grpo:hybrid,... picks rows;
# DEVICE_CHECK_OVERRIDES="key=value name:key=value ..." is added to every row (name: only that run's rows).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-/tmp/flowray_device_check}"
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
BUILDER=scripts/build_real_width.py
ARGS=(--output-dir "$OUT/runs")
if [ "${DEVICE_CHECK_CPU:-0}" = 1 ]; then FLUX="${DEVICE_CHECK_FLUX:-0}"; else FLUX="${DEVICE_CHECK_FLUX:-1}"; ARGS+=(--gpu); fi
[ -n "${DEVICE_CHECK_ONLY:-}" ] && ARGS+=(--only "$DEVICE_CHECK_ONLY")
FAMILY="${FAMILY:-sd35}"
case "$FAMILY" in
  sd35) ;;
  # A family joins this list with its builder in scripts/build_real_width.py and its row in device_check.py RUNS.
  sd35l|flux2|flux2_klein|qwen_image|z_image|wan) FLUX=0 ;;
  *) echo "device_check: FAMILY=$FAMILY: choose sd35, sd35l, flux2, flux2_klein, qwen_image, z_image or wan" >&2; exit 2 ;;
esac
export HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0

start=$(date +%s)
if [ -n "${MODEL_DIR:-}" ]; then
  if [ ! -f "$MODEL_DIR/model_index.json" ]; then
    echo "device_check: MODEL_DIR=$MODEL_DIR has no model_index.json: give a diffusers folder of SD3.5-Medium (or of FAMILY)" >&2
    exit 2
  fi
  echo "device_check: the real weights in $MODEL_DIR (no FLUX row)"
  if [ "$FAMILY" = sd35 ]; then ARGS+=(--model-path "$MODEL_DIR"); else ARGS+=(--family "$FAMILY=$MODEL_DIR"); fi
  ARGS+=(--real-weights)
elif [ ! -f "$BUILDER" ]; then
  echo "device_check: $BUILDER is missing: it builds the real-width reduced-depth model folders" >&2
  exit 2
fi
if [ "${DEVICE_CHECK_CPU:-0}" != 1 ]; then
  "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'device_check: no CUDA device (DEVICE_CHECK_CPU=1 runs on CPU)')" || exit 2
fi

if [ -z "${MODEL_DIR:-}" ] && [ "$FAMILY" != sd35 ]; then
  echo "device_check: building the real-width reduced-depth $FAMILY folder under $OUT/models"
  folder=$("$PYTHON" "$BUILDER" "$OUT/models" --family "$FAMILY" | tail -n 1)
  if [ ! -f "$folder/model_index.json" ]; then
    echo "device_check: $BUILDER did not write $folder/model_index.json" >&2
    exit 2
  fi
  ARGS+=(--family "$FAMILY=$folder")
elif [ -z "${MODEL_DIR:-}" ]; then
  families=sd35-medium-real-width
  [ "$FLUX" = 1 ] && families="$families flux1-dev-real-width"
  echo "device_check: building the real-width reduced-depth folders under $OUT/models"
  "$PYTHON" "$BUILDER" "$OUT/models" --family "$( [ "$FLUX" = 1 ] && echo both || echo sd35 )"
  for folder in $families; do
    if [ ! -f "$OUT/models/$folder/model_index.json" ]; then
      echo "device_check: $BUILDER did not write $OUT/models/$folder/model_index.json" >&2
      exit 2
    fi
  done
  ARGS+=(--model-path "$OUT/models/sd35-medium-real-width")
  [ "$FLUX" = 1 ] && ARGS+=(--flux-path "$OUT/models/flux1-dev-real-width")
fi

rc=0
# DEVICE_CHECK_OVERRIDES is word-split on purpose: one key=value per word.
"$PYTHON" scripts/device_check.py "${ARGS[@]}" ${DEVICE_CHECK_OVERRIDES:-} || rc=$?
echo "device_check: $( [ $rc = 0 ] && echo passed || echo FAILED ) in $(( $(date +%s) - start )) s; table in $OUT/runs/device_check.txt"
exit $rc
