"""Train the learned face detector on labelled photos and write it as an ONNX file.
  python train_face_net.py --labels=keypoints.csv --out=face_net.onnx PHOTO_OR_FOLDER...

The labels CSV is predict.py's --labels format (`file` + Kaggle's 30 keypoint columns in the
photo's own pixels, one row per face): hand-made labels, or the keypoints.csv predict.py wrote
for the same photos (a row without keypoints, a picture without a face, teaches what is not
one). Photos are matched to rows by name as predict.py matches them; photos without a row
are left out (counted). Each face's target is the keypoint model's training square, from its
keypoints. Training composes canvases of the photos at random scales, places and tilts
(fkd_jax/data/face_scenes.py); a seed reproduces a run on one machine. Use the file with
`predict.py --face_net=face_net.onnx` or `fkd_jax.Detector.load(..., face_net=...)`. Needs
the `onnx` extra (uv run --extra onnx ...). The defaults: 6000 steps, ~23 min on 2 CPU cores
(~148 canvases/s) for 420 photos.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from absl import flags

from fkd_jax.data.face_scenes import ANY_TILT_P, MAX_TILT
from fkd_jax.training.face_net_training import DEFAULT_BATCH, DEFAULT_LR, DEFAULT_STEPS

_LABELS = flags.DEFINE_string("labels", None, "CSV of the photos' keypoints (file + the 30 "
                              "Kaggle columns, photo pixels).")
_OUT = flags.DEFINE_string("out", None, "The ONNX file to write.")
_STEPS = flags.DEFINE_integer("steps", DEFAULT_STEPS, "Training steps.", lower_bound=1)
_BATCH = flags.DEFINE_integer("batch_size", DEFAULT_BATCH, "Canvases per step.", lower_bound=1)
_LR = flags.DEFINE_float("learning_rate", DEFAULT_LR, "Adam's peak learning rate.",
                         lower_bound=0.0)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the initial weights and the canvases.")
_ANY_TILT = flags.DEFINE_float(
    "any_tilt", ANY_TILT_P, "Share of the placed photos turned by any angle (the rest by up "
    f"to {MAX_TILT:g} degrees): more for collections of photos taken sideways.",
    lower_bound=0.0, upper_bound=1.0)


def main(argv: list[str]) -> None:
    from fkd_jax import cli, files
    from fkd_jax.errors import UserError
    from fkd_jax.geometry.framing import to_gray
    from fkd_jax.inference import onnx_model
    from fkd_jax.pictures import images, inputs, scoring
    from fkd_jax.training import face_net_training

    paths = cli.parse_flags(argv, flags.FLAGS, positional=True)
    if not _LABELS.value or not _OUT.value:
        raise UserError("--labels (the photos' keypoints CSV) and --out (the .onnx file to "
                        "write) are required")
    if not paths:
        raise UserError("give at least one PATH (a photo or a folder of photos)")
    out = Path(_OUT.value)
    cli.check_out_file(out, "face_net.onnx")
    onnx_model.need_package("jax2onnx")  # before minutes of training, not after
    labels = scoring.read_labels(_LABELS.value)
    photos, squares, unlabelled = [], [], 0
    for item in inputs.find_inputs(paths):
        key = scoring.match_label(item.name, labels) if item.kind == "photo" else None
        if key is None:
            unlabelled += 1
            continue
        photos.append(to_gray(images.read_picture(item.path)))
        squares.append(face_net_training.face_squares(labels[key]))
    faces = sum(map(len, squares))
    print(f"{len(photos)} photos with {faces} labelled faces ({unlabelled} inputs without "
          f"labels left out)", flush=True)
    start = time.perf_counter()
    params = face_net_training.train_face_net(
        photos, squares, steps=_STEPS.value, batch_size=_BATCH.value,
        learning_rate=_LR.value, seed=_SEED.value, any_tilt_p=_ANY_TILT.value,
        log=lambda m: print(f"step {m['step']}: loss {m['loss']:.4f} (centres {m['heat']:.4f}, "
                            f"squares {m['box']:.4f}), {m['images_per_s']:.0f} canvases/s",
                            flush=True))
    data = onnx_model.export_face_net(params)
    try:
        files.write_bytes(out, data)
    except OSError as e:
        raise UserError(f"--out {out}: cannot write ({e.strerror or e})") from None
    print(f"wrote {out} ({len(data) / 1e3:.0f} kB) after {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    from fkd_jax.errors import exit_on_user_error

    exit_on_user_error(main)(sys.argv)
