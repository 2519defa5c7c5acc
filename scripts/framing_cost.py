"""What the photo pipeline's framing costs, and how its passes converge.

  uv run --extra onnx python scripts/framing_cost.py --model MODEL [--face_net NET] \
      --labels PHOTOS/keypoints.csv --labels68 PHOTOS/landmarks68.csv [--relax 1,1.4] PHOTO...

Every labelled face is read (plain and mirror image, averaged) in squares drawn several ways,
and scored (NME over the outer-eye-corner distance, 15 points, and 68 for a 68-point model):
the exact training square from its true labels; the training rule (`framing_from_keypoints`)
around its true keypoints; the square the pipeline's final keypoints frame; and that square
with the true side or the true centre. Then how far the model follows a mis-framed crop: the
side and centre its keypoints frame when the true square is zoomed by 8% or shifted by 4% of
its side, as a fraction of that (k; re-framing closes 1 - k of a gap a pass). With `--relax`,
the pipeline (`Detector`, `relax` each) is run on the photos: NME and crops a face. Use the
training people's photos to choose, the validation people's to report. Writes nothing.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

import numpy as np
from absl import app, flags

from fkd_jax.errors import UserError, exit_on_user_error
from fkd_jax.geometry import framing

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A run directory or an exported model file.")
flags.DEFINE_string("face_net", None, "A learned face detector (train_face_net.py's file).")
flags.DEFINE_string("labels", None, "CSV of the photos' 15 keypoints (file + Kaggle's 30 columns).")
flags.DEFINE_string("labels68", None, "CSV of the photos' 68 landmarks (file + p0_x ... p67_y).")
flags.DEFINE_list("relax", [], "Run the pipeline at each of these `relax` values.")


ZOOMS = (0.92, 1.08)  # the side's miss, x the true side
SHIFT = 0.04  # the centre's miss, fraction of the true side


def follow(read: Callable[[list], np.ndarray], true: Sequence[framing.Framing]
           ) -> dict[str, float]:
    """How far a model's keypoints follow a crop that misses the face's training square: k of
    the side for each of ZOOMS, of the centre for a SHIFT along x and y (0: not at all, the
    keypoints frame the true square; 1: fully, they frame the crop). `read`: squares -> the
    keypoints read in them (N, 2K), picture pixels; `true`: the faces' training squares."""
    def framed(squares):
        return [framing.framing_from_keypoints(k, rotate=True) for k in read(squares)]

    at_true, out = framed(true), {}
    for zoom in ZOOMS:
        got = framed([replace(t, side=t.side * zoom) for t in true])
        out[f"side, zoomed {zoom}"] = float(np.mean(
            [np.log(g.side / a.side) for g, a in zip(got, at_true)]) / np.log(zoom))
    for axis in ("cx", "cy"):
        got = framed([replace(t, **{axis: getattr(t, axis) + SHIFT * t.side}) for t in true])
        out[f"centre, shifted along {axis[1]}"] = float(np.mean(
            [(getattr(g, axis) - getattr(a, axis)) / t.side
             for g, a, t in zip(got, at_true, true)]) / SHIFT)
    return out


class Counted:
    """A predictor that counts the crops it reads (a read with TTA counts two)."""

    def __init__(self, inner):
        self.inner, self.crops = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def with_spread(self, images, tta=False):
        self.crops += len(images) * (2 if tta else 1)
        return self.inner.with_spread(images, tta=tta)

    def mirror_view(self, images):
        self.crops += len(images)
        return self.inner.mirror_view(images)


@exit_on_user_error
def main(argv):
    from fkd_jax.api import Detector, Options, read
    from fkd_jax.evaluation import metrics
    from fkd_jax.geometry import keypoints
    from fkd_jax.pictures import reading, scoring

    paths = argv[1:]
    try:
        relaxes = [float(r) for r in FLAGS.relax]
    except ValueError:
        raise UserError(f"--relax={','.join(FLAGS.relax)}: numbers, e.g. 1,1.4") from None
    for relax in relaxes:
        Options(relax=relax)  # a value out of range stops here, before the photos are read
    labels = scoring.read_labels(FLAGS.labels)
    labels68 = scoring.read_labels(FLAGS.labels68, "--labels68", keypoints.IBUG68.columns)
    grays = [framing.to_gray(read(p)) for p in paths]
    truth = []  # (picture index, 15 keypoints (30,), 68 landmarks (136,)) of each labelled face
    for i, path in enumerate(paths):
        k, k68 = scoring.match_label(path, labels), scoring.match_label(path, labels68)
        truth += [(i, a, b) for a, b in zip(labels[k], labels68[k68])] if k and k68 else []
    index = [t[0] for t in truth]

    def nme(kp):  # (N, 2K) picture pixels, one row a labelled face
        e15 = [metrics.point_errors(framing.kaggle15(k), t[1]).mean() for k, t in zip(kp, truth)]
        text = f"15 points {100 * np.mean(e15):.3f}% (median {100 * np.median(e15):.2f}%)"
        if kp.shape[1] == 2 * keypoints.IBUG68.num_keypoints:
            e68 = [metrics.point_errors(k, t[2], eyes=metrics.IBUG68_OUTER_EYES).mean()
                   for k, t in zip(kp, truth)]
            text += f", 68 points {100 * np.mean(e68):.3f}%"
        return text

    def detect(detector):  # each picture's faces, in chunks of 16 pictures as predict.py
        return [f for s in range(0, len(grays), 16) for f in detector.detect_many(grays[s:s + 16])]

    def matched(found):  # each labelled face's keypoints (2K,), paired as predict.py --labels
        out = []  # pairs them (metrics.match_faces), or None; truth's order
        for i in dict.fromkeys(index):
            labelled = np.stack([t15 for j, t15, _ in truth if j == i])
            pairs = dict((t, p) for p, t in metrics.match_faces(
                [framing.kaggle15(f.keypoints_px) for f in found[i]], labelled))
            out += [found[i][pairs[t]].keypoints_px if t in pairs else None
                    for t in range(len(labelled))]
        return out

    detector = Detector.load(FLAGS.model, face_net=FLAGS.face_net, final_scales=(1.0,))
    predict = detector.predictor
    found = detect(detector)
    pipeline = matched(found)
    missing = sum(k is None for k in pipeline)
    final = [framing.training_framing(t15, t68) if k is None else
             framing.framing_from_keypoints(k, rotate=True)
             for k, (_, t15, t68) in zip(pipeline, truth)]
    true = [framing.training_framing(t15, t68) for _, t15, t68 in truth]
    squares = {
        "the training square (true labels)": true,
        "the training rule around the true keypoints": [
            framing.framing_from_keypoints(t15, rotate=True) for _, t15, _ in truth],
        "the square the pipeline's keypoints frame": final,
        "  with the true side": [replace(f, side=t.side) for f, t in zip(final, true)],
        "  with the true centre": [replace(f, cx=t.cx, cy=t.cy) for f, t in zip(final, true)],
    }
    print(f"{len(truth)} labelled faces in {len(paths)} photos ({missing} not found: framed "
          "by their true square)")
    for name, sq in squares.items():
        kp, _ = reading.read_views(grays, index, sq, predict, (1.0,))
        print(f"{name:45s} {nme(kp)}")
    log_side = np.log([f.side / t.side for f, t in zip(final, true)])
    print(f"pipeline square against the true one: side {100 * log_side.mean():+.1f}% "
          f"(sd {100 * log_side.std():.1f}%)")

    ks = follow(lambda sq: reading.read_views(grays, index, sq, predict, (1.0,))[0], true)
    print("how far the keypoints follow a crop that misses: " + ", ".join(
        f"{name} k = {k:.2f}" for name, k in ks.items()))

    for relax in relaxes:
        detector = Detector.load(FLAGS.model, face_net=FLAGS.face_net, relax=relax)
        detector.predictor = counted = Counted(detector.predictor)
        found = detect(detector)
        kp = np.stack([np.full(counted.width, np.nan) if k is None else k
                       for k in matched(found)])
        n_faces = sum(len(f) for f in found)
        print(f"relax {relax}: {nme(kp)}; {counted.crops / max(n_faces, 1):.2f} crops a "
              f"face, {n_faces} faces")


if __name__ == "__main__":
    flags.mark_flags_as_required(["model", "labels", "labels68"])
    app.run(main)
