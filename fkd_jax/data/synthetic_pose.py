"""Head pose for procedural faces: the 15 keypoints turned in 3D and projected.

Why: Kaggle's labels, which the 2D shape model is fitted to, are nearly frontal (the nose tip
sits 0.10 interocular distances (d) off the eyes' midpoint, standard deviation), while photos
of people filmed as they talk turn twice as far (0.20 d on the YouTube-Faces landmarks) and
roll twice as much (7.8 vs 4.1 degrees). Here each sampled 2D shape gets a depth per keypoint
(a generic profile, `DEPTH`), is rotated by yaw, pitch and roll about its keypoints' mean and
projected orthographically, so the nose moves across the face, the far eye and brow shorten
and the mouth slants as on a turned head; the renderer draws every feature from the moved
keypoints, so the picture follows.

Angles are drawn as tangents of half-angles, t, with cos = (1 - t^2) / (1 + t^2) and
sin = 2t / (1 + t^2): no trigonometric function meets a float, keeping the determinism
contract of `fkd_jax.data.synthetic` (same bytes on every CPU).
"""

from __future__ import annotations

import numpy as np

from fkd_jax.geometry.keypoints import IMAGE_SIZE, KEYPOINT_NAMES

# Depth of each keypoint toward the camera, in interocular distances, eye centres at 0
# (a generic adult face: the nose tip ~0.35 d in front of the eyes, outer eye and brow ends
# and the mouth corners set back on the curved face).
DEPTH: dict[str, float] = {
    "left_eye_center": 0.0, "right_eye_center": 0.0,
    "left_eye_inner_corner": -0.02, "right_eye_inner_corner": -0.02,
    "left_eye_outer_corner": -0.12, "right_eye_outer_corner": -0.12,
    "left_eyebrow_inner_end": 0.08, "right_eyebrow_inner_end": 0.08,
    "left_eyebrow_outer_end": -0.1, "right_eyebrow_outer_end": -0.1,
    "nose_tip": 0.35,
    "mouth_left_corner": -0.06, "mouth_right_corner": -0.06,
    "mouth_center_top_lip": 0.08, "mouth_center_bottom_lip": 0.05,
}
_DEPTH = np.array([DEPTH[name] for name in KEYPOINT_NAMES], dtype=np.float64)

# Largest yaw, pitch and added roll (degrees) as tangents of their half-angles; each angle is
# the mean of two uniform draws in [-max, max] (triangular: std = max / sqrt(6), i.e. yaw
# ~18 degrees, as the YouTube-Faces nose offsets imply, reaching 45 now and then).
POSE_MAX_DEG = (45.0, 25.0, 20.0)
_HALF_TAN = np.array([0.41421356, 0.22169466, 0.17632698])  # tan(22.5), tan(12.5), tan(10)
POSE_DRAWS = 6  # uniforms per face
_MARGIN = 1.0  # px: turned keypoints stay inside [_MARGIN, 96 - _MARGIN]


def half_tangents(u: np.ndarray) -> np.ndarray:
    """Uniforms (B, 6) in [0, 1) -> (B, 3) tangents of the half-angles of (yaw, pitch, roll)."""
    return (u[:, 0:3] + u[:, 3:6] - 1.0) * _HALF_TAN


def _cos_sin(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of the angle whose half-angle tangent is t (rational, exact to rounding)."""
    t2 = t * t
    return (1.0 - t2) / (1.0 + t2), 2.0 * t / (1.0 + t2)


def turn_shapes(kp: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Keypoints (B, 30) px of frontal-ish shapes -> the same faces turned by the half-angle
    tangents t (B, 3) = (yaw, pitch, roll), projected orthographically, float64 px.

    The rotation is about the keypoints' mean, which stays put (the training crops are centred
    on it); a turned shape that would leave the image is shrunk toward that mean.
    """
    pts = kp.reshape(len(kp), -1, 2).astype(np.float64)
    centre = pts.mean(axis=1, keepdims=True)
    rel = pts - centre
    eyes = (pts[:, KEYPOINT_NAMES.index("left_eye_center")]
            - pts[:, KEYPOINT_NAMES.index("right_eye_center")])
    d = np.sqrt((eyes * eyes).sum(axis=1))[:, None]
    z = _DEPTH[None, :] * d
    z = z - z.mean(axis=1, keepdims=True)
    x, y = rel[..., 0], rel[..., 1]
    (cy, sy), (cp, sp), (cr, sr) = (_cos_sin(t[:, k:k + 1]) for k in range(3))
    x, z = x * cy + z * sy, z * cy - x * sy  # yaw: about the image's vertical axis
    y = y * cp - z * sp  # pitch: about the horizontal axis (depth is dropped afterwards)
    x, y = x * cr - y * sr, x * sr + y * cr  # roll: in the image plane
    turned = np.stack([x, y], axis=-1)
    turned -= turned.mean(axis=1, keepdims=True)
    limit = np.where(turned > 0, IMAGE_SIZE - _MARGIN, _MARGIN) - centre
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(turned != 0, limit / turned, np.inf)
    shrink = np.minimum(1.0, room.min(axis=(1, 2)))[:, None, None]
    return (centre + turned * shrink).reshape(len(kp), -1)
