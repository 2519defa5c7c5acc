"""Export a trained run as one file: a `jax.export` artefact (jax alone) or an ONNX model.
  python export.py --workdir RUN_DIR [--format jaxexport|onnx] [--out FILE] [--checkpoint best|latest]

The file holds the prediction function with its parameters, lowered for cpu, cuda and tpu,
for any batch size: input float32 (B, 96, 96, 1) grayscale in [0, 1], output float32 (B, 2K)
normalised coordinates u = x / 48 - 1, x and y interleaved (K = 15 in Kaggle's column order;
68 iBUG points for an ibug68 run; 19 for a kaggle15_square run: the 15, then 4 square
points). Details: fkd_jax/inference/exported.py. `predict.py --model FILE` uses it; so can plain jax
(no fkd_jax needed):

    import jax, numpy as np
    model = jax.export.deserialize(bytearray(open("model.jaxexport", "rb").read()))
    keypoints_px = (np.asarray(model.call(images)) + 1) * 48   # images: (B, 96, 96, 1)

--format onnx writes the same function as an ONNX graph (input "images", output "keypoints")
for onnxruntime, TensorRT or the browser; it needs the `onnx` extra (`uv run --extra onnx ...`).
Details: fkd_jax/inference/onnx_model.py. Default --out: RUN_DIR/model.jaxexport (or
RUN_DIR/model.onnx). The file is written atomically.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory written by train.py.")
_FORMAT = flags.DEFINE_enum("format", "jaxexport", ["jaxexport", "onnx"], "File format.")
_OUT = flags.DEFINE_string("out", None, "Output file (default: WORKDIR/model.jaxexport or .onnx).")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which checkpoint.")


def main(argv: list[str]) -> None:
    from fkd_jax import cli
    from fkd_jax import files
    from fkd_jax.inference import exported, onnx_model
    from fkd_jax.inference.predictor import has_spread
    from fkd_jax.training import restore
    from fkd_jax.geometry import keypoints
    from fkd_jax.errors import UserError

    cli.parse_flags(argv, flags.FLAGS)
    if not _WORKDIR.value:
        raise UserError("--workdir is required (a run directory written by train.py)")
    workdir = Path(_WORKDIR.value)
    if not workdir.is_dir():
        raise UserError(f"--workdir {workdir}: no such directory")
    onnx = _FORMAT.value == "onnx"
    suffix = onnx_model.SUFFIX if onnx else exported.SUFFIX
    out = Path(_OUT.value) if _OUT.value else workdir / f"model{suffix}"
    cli.check_out_file(out, "model.jaxexport")

    run = restore.load_run(workdir, _CHECKPOINT.value)
    data = onnx_model.export_onnx(run) if onnx else exported.export_run(run)
    platforms = "any ONNX runtime" if onnx else "platforms " + ", ".join(exported.PLATFORMS)
    run_k = keypoints.KEYPOINT_SETS[run.config.data.get("keypoints", "kaggle15")].num_keypoints
    try:
        files.write_bytes(out, data)
    except OSError as e:
        raise UserError(f"--out {out}: cannot write ({e.strerror or e})") from None
    print(f"wrote {out} ({len(data) / 1e6:.1f} MB; {_CHECKPOINT.value} checkpoint, epoch "
          f"{run.meta.get('epoch')}; {platforms}; "
          f"input (B, 96, 96, 1) float32 in [0, 1], output (B, {2 * run_k}) normalised"
          + (f" and spread (B, {run_k})" if onnx and has_spread(run) else "") + ")")


if __name__ == "__main__":
    from fkd_jax.errors import exit_on_user_error

    exit_on_user_error(main)(sys.argv)
