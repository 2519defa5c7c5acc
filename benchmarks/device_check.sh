#!/usr/bin/env bash
# Device check, for a machine with an NVIDIA GPU (not run in CI): train the default recipe
# (configs/unet_pair.py: two members, trained in one process) for a few epochs in float32 and
# in bfloat16, run predict.py on generated pictures, and print the figures
# (benchmarks/device_summary.py): images/s and validation RMSE per dtype, photos/s.
#
#   bash benchmarks/device_check.sh [TRAIN_ARGS...]
#   e.g. bash benchmarks/device_check.sh --config.data.train_path=D/training.zip \
#            --config.data.groups_path=D/person_ids.txt
#   DRY_RUN=1 bash benchmarks/device_check.sh   # CPU, tiny net and data: checks the script
#                                               # itself (tests/test_device_check.py runs it)
# Environment: EPOCHS (default 4; dry run 1), PHOTOS (pictures for predict.py, default 64;
# dry run 2), OUT (default /tmp/fkd_device_check), PYTHON (an interpreter that already has the
# project's dependencies, e.g. on a machine that cannot download: nothing is installed;
# default: `uv sync --extra cuda` and `uv run`), TESTS=1 (also run the test suite on the GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/fkd_device_check}
TINY=()
if [[ ${DRY_RUN:-0} == 1 ]]; then
  export JAX_PLATFORMS=cpu
  EPOCHS=${EPOCHS:-1}
  PHOTOS=${PHOTOS:-2}
  # A tiny net and no augmentation: compiling the recipe's takes most of a minute on CPU.
  TINY=(--config.data.synthetic_n=48 --config.model.name=simple_cnn --config.model.widths="(4,8,8)"
        --config.train.heatmap_loss_weight=0 --config.augment.flip=False)
  for a in rotate_deg scale shift_px brightness contrast gamma noise_std blur_prob erase_prob; do
    TINY+=("--config.augment.$a=0")
  done
else
  EPOCHS=${EPOCHS:-4}
  PHOTOS=${PHOTOS:-64}
fi
if [[ -n ${PYTHON:-} ]]; then
  read -r -a PY <<<"$PYTHON"
elif [[ ${DRY_RUN:-0} == 1 ]]; then
  PY=(uv run --locked python)
else
  uv sync --locked --extra cuda --extra test
  PY=(uv run --locked --extra cuda python)
fi
if [[ ${DRY_RUN:-0} != 1 ]]; then
  "${PY[@]}" -c "import jax; d = jax.devices(); print(d); \
assert d[0].platform == 'gpu', 'no GPU visible to JAX'"
  if [[ ${TESTS:-0} == 1 ]]; then  # many processes share the GPU: no preallocation
    XLA_PYTHON_CLIENT_PREALLOCATE=false "${PY[@]}" -m pytest -q
  fi
fi
# predict.py's second run reads the first's compiled programs: photos/s without compiling.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$OUT/jax_cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
mkdir -p "$OUT"
WARMUP=$(( EPOCHS > 1 ? 1 : 0 ))  # unet_pair's 3 warm-up epochs would fill a short check
for dtype in float32 bfloat16; do
  rm -rf "${OUT:?}/$dtype"
  "${PY[@]}" train.py --config configs/unet_pair.py --workdir "$OUT/$dtype" \
      --config.train.epochs="$EPOCHS" --config.train.warmup_epochs="$WARMUP" \
      --config.train.members_mode=one_process --config.model.compute_dtype="$dtype" \
      ${TINY[@]+"${TINY[@]}"} "$@"
done
rm -rf "${OUT:?}/pictures" "${OUT:?}/predict1" "${OUT:?}/predict2"
"${PY[@]}" benchmarks/device_summary.py pictures "$OUT/pictures" --n "$PHOTOS"
for pass in 1 2; do
  "${PY[@]}" predict.py --workdir "$OUT/float32" --out "$OUT/predict$pass" "$OUT/pictures" \
      >/dev/null
done
"${PY[@]}" benchmarks/device_summary.py report "$OUT"
