#!/usr/bin/env bash
# GPU check, for a machine with an NVIDIA GPU (not run in CI): install the CUDA extra, run the
# test suite on the GPU, then train unet_pair's recipe for a few epochs in float32 and in
# bfloat16 and print images/s and the validation RMSE of each.
#
#   bash benchmarks/device_check.sh [TRAIN_ARGS...]
#   e.g. bash benchmarks/device_check.sh --config.data.train_path=D/training.zip \
#            --config.data.groups_path=D/person_ids.txt
# EPOCHS (default 3) and OUT (default /tmp/fkd_device_check) may be set in the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${EPOCHS:-3}
OUT=${OUT:-/tmp/fkd_device_check}
uv sync --locked --extra cuda --extra test
uv run --locked --extra cuda python -c "import jax; d = jax.devices(); print(d); \
assert d[0].platform == 'gpu', 'no GPU visible to JAX'"
uv run --locked --extra cuda --extra test pytest -q
for dtype in float32 bfloat16; do
  rm -rf "$OUT/$dtype"
  uv run --locked --extra cuda python train.py --config configs/unet_pair.py \
      --workdir "$OUT/$dtype" --config.train.epochs="$EPOCHS" \
      --config.model.compute_dtype="$dtype" "$@"
  uv run --locked python - "$OUT/$dtype" "$dtype" <<'PY'
import json, sys
rows = [json.loads(x) for x in open(f"{sys.argv[1]}/metrics.jsonl")]
speed = sorted(r["images_per_s"] for r in rows[1:] or rows)
print(f"{sys.argv[2]}: {speed[len(speed) // 2]:.0f} images/s (median of epochs after the first), "
      f"val RMSE {rows[-1]['val_rmse_px']:.3f} px after {rows[-1]['epoch']} epochs, "
      f"compile {rows[-1]['compile_time_s']:.1f} s")
PY
done
