"""How a run's re-framing follows a mis-framed crop, on its own validation crops.
  uv run python scripts/framing_response.py --workdir RUN [--rule auto|shape] [--checkpoint best]

predict.py frames a face (passes 2, 3, ...) from the model's last prediction. This measures
that step where the truth is known: each validation crop is re-cropped off its training square
(shifted by dx, dy pixels, zoomed by s), the model predicts, and the square is re-framed from
the prediction (`framing.framing_from_keypoints`: a square model's square points, else the
15-keypoint shape rule; `--rule shape` hides a square model's square points). Printed per
offset: the re-framed square's error against the true one (centre in fractions of the side,
size as log side; mean = bias, std = noise) and the 15 keypoints' RMSE in the crop's pixels.
The error's mean divided by the offset is how far the re-framing stays with the wrong crop
(0: it lands on the true square in one step; 1: it never moves). Writes nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from absl import flags

from fkd_jax import cli
from fkd_jax.errors import UserError, exit_on_user_error
from fkd_jax.geometry import framing, keypoints
from fkd_jax.inference import predictor
from fkd_jax.training import restore, run_dir

FLAGS = flags.FlagValues()
flags.DEFINE_string("workdir", None, "A trained run's folder.", flag_values=FLAGS, required=True)
flags.DEFINE_enum("rule", "auto", ["auto", "shape"],
                  "auto: the model's own rule; shape: the 15-keypoint shape rule.",
                  flag_values=FLAGS)
flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which checkpoint.", flag_values=FLAGS)

# (dx, dy) in crop pixels and zoom (the crop's side over the training square's).
OFFSETS = ((0, 0, 1.0), (3, 0, 1.0), (0, 3, 1.0), (0, 0, 1.08), (0, 0, 0.92), (3, 3, 1.08))


def response(predict, images: np.ndarray, truth15: np.ndarray, dx: float, dy: float, zoom: float,
             hide_square: bool) -> dict:
    """Re-framing error (N, 3) stats and keypoint RMSE for crops (N, S, S, 1) in [0, 1], each
    re-cropped off its own square by (dx, dy, zoom)."""
    size = images.shape[1]
    off = framing.Framing(size / 2 + dx, size / 2 + dy, size * zoom)
    gray = np.rint(images[..., 0] * 255).astype(np.uint8)
    crops = np.concatenate([framing.crop_faces(g, [off], size) for g in gray])
    pred = np.asarray(predict(crops), np.float64)
    if hide_square:
        pred = pred[:, :keypoints.NUM_COORDS]
    back = np.stack([off.to_picture(p, size) for p in pred])  # the original crop's pixels
    err = []
    for p in back:
        f = framing.framing_from_keypoints(p)
        err.append([f.cx / size - 0.5, f.cy / size - 0.5, np.log(f.side / size)])
    err = np.asarray(err)
    rmse = float(np.sqrt(np.mean((framing.kaggle15(back) - truth15) ** 2)))
    return {"offset": [round(dx / size, 4), round(dy / size, 4), round(float(np.log(zoom)), 4)],
            "mean": err.mean(0).round(4).tolist(), "std": err.std(0).round(4).tolist(),
            "rmse_px": round(rmse, 3)}


def main(argv: list[str]) -> None:
    cli.parse_flags(argv, FLAGS)
    workdir, rule, checkpoint = Path(FLAGS.workdir), FLAGS.rule, FLAGS.checkpoint
    if not workdir.is_dir():
        raise UserError(f"--workdir {workdir}: no such folder")
    run = restore.load_run(workdir, checkpoint)
    if run.config.data.keypoints == "ibug68":
        raise UserError(f"--workdir {workdir}: a 68-landmark run (this script scores the 15)")
    data = run_dir.read_run_data(run.config, workdir)
    run_dir.discard_run_data(data)
    val = data.val.subset(data.val.mask[:, :keypoints.NUM_COORDS].all(axis=1))
    predict = predictor.Predictor.from_run(run)
    truth15 = val.keypoints[:, :keypoints.NUM_COORDS].astype(np.float64)
    square = run.config.data.keypoints == "kaggle15_square" and rule == "auto"
    print(f"{workdir}: {len(val)} validation crops, {checkpoint} checkpoint "
          f"(epoch {run.meta['epoch']}), re-framed by {'square points' if square else 'shape'}")
    print("offset (x, y, log side) -> re-framed square's error: mean, std; keypoint RMSE px")
    for dx, dy, zoom in OFFSETS:
        r = response(predict, val.images, truth15, dx, dy, zoom, rule == "shape")
        print(json.dumps(r))


if __name__ == "__main__":
    exit_on_user_error(main)(sys.argv)
