"""Faces drawn on pictures: boxes, face numbers and keypoints, for overlays."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from fkd_jax.evaluation.metrics import SURE_CONFIDENCE
from fkd_jax.geometry import keypoints
from fkd_jax.geometry.framing import _SQUARE_WIDTH, kaggle15
from fkd_jax.pictures.location import Face

# ---------------------------------------------------------------------------------------------
# Drawing

# RGB colours: the subject's left side red, right side blue, the midline green (as in the
# project's figures); boxes yellow.
_LEFT, _RIGHT, _MID, _BOX = (230, 40, 40), (40, 90, 255), (40, 200, 60), (255, 210, 0)
_POINT_COLOURS = [(_LEFT if ("left" in n) else _RIGHT if ("right" in n) else _MID)
                  for n in keypoints.KEYPOINT_NAMES]


# Keypoints less sure than this are drawn as hollow rings instead of dots.
UNSURE_BELOW = SURE_CONFIDENCE


def draw_faces(picture: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
    """A colour copy (RGB uint8 (H, W, 3)) of the picture with each face's box, number and
    keypoints drawn (marks scale with the picture's size): a point whose confidence is below
    UNSURE_BELOW is a hollow ring, the others dots."""
    out = np.array(picture, dtype=np.uint8)
    if out.ndim == 2:
        out = cv2.cvtColor(out, cv2.COLOR_GRAY2RGB)
    out = np.ascontiguousarray(out)
    unit = max(1, round(max(out.shape[:2]) / 300))
    shift = 4  # sub-pixel drawing: coordinates in 1/16 px
    for i, f in enumerate(faces):
        x, y, w, h = f.box
        cv2.rectangle(out, (round(x), round(y)), (round(x + w), round(y + h)), _BOX, unit)
        cv2.putText(out, str(i), (round(x) + 2 * unit, round(y) + 12 * unit),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4 * unit, _BOX, unit, cv2.LINE_AA)
        kp = np.asarray(f.keypoints_px, np.float64)
        # A square model's square points are a framing aid: the face's 15 are drawn.
        square = kp.shape[-1] == _SQUARE_WIDTH
        pts = keypoints.as_points(kaggle15(kp) if square else kp)
        conf = f.kaggle15_confidence if square else f.confidence
        sure = ~(conf < UNSURE_BELOW)  # NaN (no confidence): drawn as sure
        colours = _POINT_COLOURS if len(pts) == len(_POINT_COLOURS) else [_MID] * len(pts)
        for (px, py), colour, filled in zip(pts, colours, sure):
            if np.isfinite(px) and np.isfinite(py):
                # continuous coordinates -> OpenCV's pixel-centre-at-integer convention
                centre = (round((px - 0.5) * (1 << shift)), round((py - 0.5) * (1 << shift)))
                cv2.circle(out, centre, (unit + 1) << shift, colour,
                           -1 if filled else max(1, unit // 2), cv2.LINE_AA, shift)
    return out
