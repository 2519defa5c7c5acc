"""Fit the scale that turns a model's keypoint spreads into calibrated confidences.

  uv run python scripts/fit_confidence.py --workdir RUN --labels PHOTOS/keypoints.csv PHOTO...

A heatmap's RMS radius is wider than the model's real error (soft-argmax heatmaps are broad),
so `confidence_from_spread` of the raw spread calls almost every point unsure. This finds the
factor c by which spreads are multiplied so that the mean confidence equals the share of
points really within 10% of the eye distance on the photos given (use the training people's,
never those that report the figures), and prints it with the before/after calibration.
"""

from __future__ import annotations

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Run directory (or ensemble) to calibrate.")
flags.DEFINE_string("labels", None, "CSV of the photos' keypoints (file + Kaggle's 30 columns).")


def main(argv):
    from fkd_jax.api import Detector
    from fkd_jax.evaluation import metrics as pm
    from fkd_jax.pictures import location, scoring

    paths = argv[1:]
    detector = Detector.load(FLAGS.workdir)
    labels = scoring.read_labels(FLAGS.labels)
    faces = {str(r.path): r.faces for r in detector.detect_files(paths) if r.error is None}
    per_face = scoring.match_labelled(faces, labels, detector.options.passes)[0]
    spread_rel, errors = [], []  # spreads in eye distances, errors likewise (15 per face)
    for rec in per_face:
        if rec["face"] is not None:
            face = faces[rec["file"]][rec["face"]]
            spread_rel.append(face.kaggle15_spread_px / face.eye_distance_px)
            errors.append(rec["point_errors"])
    spread_rel, errors = np.concatenate(spread_rel), np.concatenate(errors)
    within = errors <= location.CONFIDENT_WITHIN
    c = pm.fit_spread_scale(spread_rel, within, location.CONFIDENT_WITHIN)
    for name, scale in (("raw", 1.0), ("in force", location.SPREAD_SCALE), ("fitted", c)):
        conf = location.confidence_from_spread(spread_rel, 1.0, scale)
        print(f"{name} (scale {scale:.4f}): mean confidence {conf.mean():.3f} against "
              f"{within.mean():.3f} of points within; AUROC {pm.auroc(1 - conf, ~within):.3f}; "
              f"{np.mean(conf >= pm.SURE_CONFIDENCE):.1%} of points sure")
    print(f"SPREAD_SCALE = {c:.4f}  # {len(spread_rel)} points of {len(paths)} photos")


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir", "labels"])
    app.run(main)
