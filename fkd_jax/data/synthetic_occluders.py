"""Things in front of procedural faces: hands, beards and hats (vectorised numpy over blocks).

Why: filmed faces are often partly covered (a hand at the chin or cheek, a beard over jaw and
lips, a hat or fringe down to the brows), and a net that never saw cover guesses wildly when a
feature is hidden, where it should place the point from the rest of the face. The labels stay
where the features are, covered or not, as in Kaggle's and the 68-point labels.

Geometry is laid out in each face's own frame: origin at the eyes' midpoint, unit d = the
interocular distance, `a` along the eye line (toward the subject's left eye), `b` down the face.
Images are float32 (B, 96, 96) in [0, 1]; floats only meet + - * / sqrt and clip (rotations
by half-tangents, no sin/cos), keeping the determinism contract of `fkd_jax.data.synthetic`.
"""

from __future__ import annotations

import numpy as np

# The renderer's face frame and per-face helpers: occluders are laid out in the same frame as
# the features they cover.
from fkd_jax.data.synthetic_render import _c, _Face, _grid, _local

_F = np.float32

# Per-face parameters: (name, low, high), drawn uniformly in this order. Positions and sizes
# in interocular distances d; levels relative to the skin's (hands) or in [0, 1] (hats).
OCCLUDERS: tuple[tuple[str, float, float], ...] = (
    ("hand_on", 0.0, 1.0), ("hand_a", -1.6, 1.6), ("hand_b", 0.3, 2.0),  # palm centre
    ("hand_turn", -0.35, 0.35), ("hand_size", 0.8, 1.25), ("hand_level", 0.75, 1.2),
    ("beard_on", 0.0, 1.0), ("beard_k", 0.2, 0.75), ("beard_top", 0.1, 0.9),
    ("beard_lips", 0.0, 1.0), ("beard_width", 0.85, 1.25),
    ("hat_on", 0.0, 1.0), ("hat_level", 0.03, 0.9), ("hat_edge", -0.15, 0.9),
)
HAND_P, BEARD_P, HAT_P = 0.15, 0.15, 0.12  # share of faces with each
_LIPS_CLEAR_P = 0.6  # share of beards that leave the lips uncovered


def occlude(img: np.ndarray, kp: np.ndarray, u: np.ndarray, grain: np.ndarray,
            skin: np.ndarray) -> np.ndarray:
    """Hats, beards and hands drawn over faces img (B, 96, 96) with keypoints kp (B, 30) px.

    u: uniforms (B, len(OCCLUDERS)); grain: standard normals (B, 96, 96) for the hair's and
    the hand's grain; skin: the skin level (B,) the hand takes after. Returns a new array."""
    p = {name: (lo + (hi - lo) * u[:, i]).astype(_F) for i, (name, lo, hi) in enumerate(OCCLUDERS)}
    face = _Face(kp.astype(_F))
    d_px = _c(face.d)
    a, b = (v / d_px for v in _local(*_grid(), face.mid, face.e))  # (B, 96, 96) in units of d

    def b_of(*names: str) -> np.ndarray:  # mean `b` of the named keypoints, (B, 1, 1)
        return _c(face.along(sum(face.pt[n] for n in names) / len(names), face.f)) / d_px

    mouth = face.pt["mouth_left_corner"] - face.pt["mouth_right_corner"]
    half_mouth = np.abs(_c((mouth * face.e).sum(axis=1))) / d_px / 2.0  # along the eyes, in d
    img = img.copy()
    hair = 1.0 + 0.25 * np.clip(grain, -2.0, 2.0)
    # Hat or fringe: everything above a line parallel to the eyes, from above the brows to
    # halfway down over them.
    edge = b_of("left_eyebrow_inner_end", "right_eyebrow_inner_end") - _c(p["hat_edge"])
    hat = _soft((edge - b) * d_px) * _c(p["hat_on"] < HAT_P)
    img = img * (1.0 - hat) + _c(p["hat_level"]) * hair * 0.9 * hat
    # Beard: an ellipse from between nose and mouth down past the chin, lips left clear or not.
    top = b_of("nose_tip") + _c(p["beard_top"]) * (b_of("mouth_center_top_lip") - b_of("nose_tip"))
    bottom = b_of("mouth_center_bottom_lip") + 1.0
    centre_b, half_b = (top + bottom) / 2.0, (bottom - top) / 2.0
    half_a = _c(p["beard_width"]) * half_mouth + 0.45
    r = np.sqrt((a / half_a) ** 2 + ((b - centre_b) / half_b) ** 2)
    beard = _soft((1.0 - r) * half_b * d_px * 0.5)
    lips_b = (b_of("mouth_center_top_lip") + b_of("mouth_center_bottom_lip")) / 2.0
    r_lips = np.sqrt((a / (half_mouth + 0.05)) ** 2 + ((b - lips_b) / 0.22) ** 2)
    clear = _soft((1.0 - r_lips) * d_px * 0.22) * _c(p["beard_lips"] < _LIPS_CLEAR_P)
    beard = beard * (1.0 - clear) * _c(p["beard_on"] < BEARD_P)
    img = img * (1.0 - _c(p["beard_k"]) * np.clip(beard * hair, 0.0, 1.0))
    # Hand: palm, four fingers and the arm toward the image's edge, turned about the palm.
    hand = _hand(a, b, d_px, p) * _c(p["hand_on"] < HAND_P)
    level = _c(skin * p["hand_level"]) * (1.0 + 0.06 * np.clip(grain, -2.0, 2.0))
    img = img * (1.0 - hand) + level * hand
    return img.astype(_F)  # the photometry clips later


def _hand(a: np.ndarray, b: np.ndarray, d_px: np.ndarray, p: dict) -> np.ndarray:
    """Coverage (B, 96, 96) in [0, 1] of a hand whose fingers point up the face, turned by
    hand_turn (the half-tangent of the angle) and entering from below; a, b: each pixel in the
    face's frame (units of d), d_px: d in pixels (B, 1, 1)."""
    t = _c(p["hand_turn"])
    cos, sin = (1.0 - t * t) / (1.0 + t * t), 2.0 * t / (1.0 + t * t)
    s = _c(p["hand_size"])
    # Hand frame: v along the fingers (up the face, turned), w across them; units of d.
    da, db = a - _c(p["hand_a"]), b - _c(p["hand_b"])
    v = -(db * cos - da * sin) / s
    w = (da * cos + db * sin) / s
    cover = _capsule(v, w, (-0.1, 0.0), (0.35, 0.0), 0.42)  # palm
    cover = np.maximum(cover, _capsule(v, w, (-6.0, 0.0), (-0.1, 0.0), 0.34))  # arm
    for across, length in ((-0.3, 0.6), (-0.1, 0.75), (0.1, 0.72), (0.3, 0.55)):
        cover = np.maximum(cover, _capsule(v, w, (0.35, across), (0.35 + length, across), 0.095))
    return _soft(cover * d_px * s)


def _capsule(v, w, start, end, radius) -> np.ndarray:
    """Signed depth (positive inside, units of the frame) of a segment start->end of (v, w)
    points, thickened by radius."""
    (v0, w0), (v1, w1) = start, end
    dv, dw = v1 - v0, w1 - w0
    t = np.clip(((v - v0) * dv + (w - w0) * dw) / (dv * dv + dw * dw), 0.0, 1.0)
    return radius - np.sqrt((v - v0 - t * dv) ** 2 + (w - w0 - t * dw) ** 2)


def _soft(depth_px: np.ndarray) -> np.ndarray:
    """Coverage from a signed depth in pixels: a one-pixel antialiased edge."""
    return np.clip(depth_px + 0.5, 0.0, 1.0).astype(_F)
