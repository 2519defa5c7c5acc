"""Framing: the square of a picture that becomes the model's crop, and the crop itself.

The model only knows S x S crops (S = 96 for Kaggle's faces) framed by one rule: a square of
side 1.1305 x the 68-landmark box, centred on the mean of the 15 keypoints (+ a small offset).
A face in a picture is framed from a detector box (`framing_from_box`, a fitted map) or from
keypoints (`framing_from_keypoints`: the training rule applied to predicted keypoints, turned
with the eye line). Each crop is one affine resample (bilinear, edge replicated, as the
training crops were made) and keypoints go back to the picture through the exact inverse.

This module sits below both the training data (`fkd_jax.data.preparation` re-frames training
rows with it) and the photo pipeline (`fkd_jax.pictures`).

Conventions: every coordinate is in pixels with fkd_jax.geometry.keypoints' continuous
convention (pixel (i, j) covers [j, j+1) x [i, i+1), its centre is (j + 0.5, i + 0.5)),
keypoints (..., 30) in Kaggle column order. Pictures are uint8: RGB (H, W, 3) or gray (H, W).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from fkd_jax.geometry import face_shape_stats, framing_stats, keypoints

CROP = keypoints.IMAGE_SIZE  # the model's input side, pixels
# A face is kept only if its keypoints, aligned onto the mean face by a similarity, lie within
# this RMS distance of it (in outer-eye-corner distances): lost tracks and garbage fail. 0.16
# is the 99th percentile of the true keypoints of the training people's 420 photos.
MAX_SHAPE_ERROR = 0.16

_IDX = {name: i for i, name in enumerate(keypoints.KEYPOINT_NAMES)}
_SQUARE_WIDTH = 2 * keypoints.KAGGLE15_SQUARE.num_keypoints  # 38: Kaggle's 15 + 4 square points
_MEAN_POINTS = np.asarray(face_shape_stats.MEAN_SHAPE, np.float64).reshape(-1, 2)


def to_gray(picture: np.ndarray) -> np.ndarray:
    """uint8 (H, W) luma 0.299 R + 0.587 G + 0.114 B (as the training crops: Pillow's "L")."""
    picture = np.asarray(picture)
    if picture.ndim == 2:
        return np.ascontiguousarray(picture, dtype=np.uint8)
    return cv2.cvtColor(np.ascontiguousarray(picture, dtype=np.uint8), cv2.COLOR_RGB2GRAY)


def kaggle15(keypoints_px: np.ndarray) -> np.ndarray:
    """(..., 30) Kaggle keypoints of a model's output: as they are, the first 30 of a square
    model's 38, or derived from the 68 iBUG landmarks (..., 136) of a 68-point model
    (fkd_jax.geometry.keypoints.kaggle15_from_ibug68)."""
    kp = np.asarray(keypoints_px, np.float64)
    if kp.shape[-1] == keypoints.NUM_COORDS:
        return kp
    if kp.shape[-1] == _SQUARE_WIDTH:
        return kp[..., :keypoints.NUM_COORDS]
    if kp.shape[-1] == 2 * keypoints.IBUG68.num_keypoints:
        return np.asarray(keypoints.kaggle15_from_ibug68(kp), np.float64)
    raise ValueError(f"keypoints of width {kp.shape[-1]}: expected 30 (Kaggle), 38 (Kaggle + "
                     "square) or 136 (iBUG 68)")

# ---------------------------------------------------------------------------------------------
# Framing: a square in the picture that becomes the 96x96 crop


@dataclass(frozen=True)
class Framing:
    """A square crop of a picture: centre (cx, cy) and side in picture pixels, and the angle
    (radians) of the crop's x axis in the picture (0: upright, axis-aligned as in training).

    A crop point q (crop pixels, 0..S, S = 96 unless a model takes another size) is the
    picture point p = c + side / S * R(angle) (q - S / 2).
    """

    cx: float
    cy: float
    side: float
    angle: float = 0.0

    def _linear(self, size: int = CROP) -> np.ndarray:
        s = self.side / size
        c, n = math.cos(self.angle), math.sin(self.angle)
        return s * np.array([[c, -n], [n, c]])

    def to_picture(self, keypoints_crop: np.ndarray, size: int = CROP) -> np.ndarray:
        """(..., 2K) keypoints in pixels of a size x size crop -> picture pixels (float64)."""
        pts = keypoints.as_points(np.asarray(keypoints_crop, np.float64))
        out = (pts - size / 2) @ self._linear(size).T + (self.cx, self.cy)
        return out.reshape(np.shape(keypoints_crop))

    def to_crop(self, keypoints_px: np.ndarray, size: int = CROP) -> np.ndarray:
        """(..., 2K) keypoints in picture pixels -> pixels of a size x size crop (float64)."""
        pts = keypoints.as_points(np.asarray(keypoints_px, np.float64))
        out = (pts - (self.cx, self.cy)) @ np.linalg.inv(self._linear(size)).T + size / 2
        return out.reshape(np.shape(keypoints_px))

    def warp_matrix(self, size: int = CROP) -> np.ndarray:
        """(2, 3) for cv2.warpAffine(..., WARP_INVERSE_MAP) rendering the square at `size` x
        `size` pixels: output pixel index -> picture pixel index. OpenCV puts pixel centres at
        whole numbers, fkd-jax at +0.5: both shifts are folded in here, so an output pixel's
        centre samples exactly `to_picture(., size)` of its centre."""
        a = self._linear(size)
        t = np.array([self.cx, self.cy]) + a @ np.array([0.5 - size / 2, 0.5 - size / 2]) - 0.5
        return np.concatenate([a, t[:, None]], axis=1)

    def box(self) -> tuple[float, float, float, float]:
        """Axis-aligned (x, y, w, h) around the square."""
        half = 0.5 * self.side * (abs(math.cos(self.angle)) + abs(math.sin(self.angle)))
        return (self.cx - half, self.cy - half, 2 * half, 2 * half)


def turn_picture(image: np.ndarray, degrees: float, border_value: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The picture (H, W[, C]) turned by `degrees` (what pointed along its x axis then points
    `degrees` below it, y down), on a canvas just large enough, and the map of continuous
    coordinates onto it: p_turned = rot @ p + shift. Past the picture's edges: `border_value`,
    or the edge replicated when None."""
    h, w = image.shape[:2]
    c, n = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    rot = np.array([[c, -n], [n, c]])
    size = (math.ceil(w * abs(c) + h * abs(n) - 1e-9), math.ceil(w * abs(n) + h * abs(c) - 1e-9))
    shift = np.array(size) / 2 - rot @ np.array([w / 2, h / 2])
    m = np.hstack([rot, (rot @ [0.5, 0.5] + shift - 0.5)[:, None]])  # on OpenCV's pixel indices
    border = (dict(borderMode=cv2.BORDER_REPLICATE) if border_value is None else
              dict(borderMode=cv2.BORDER_CONSTANT, borderValue=border_value))
    return cv2.warpAffine(image, m, size, flags=cv2.INTER_LINEAR, **border), rot, shift


def crop_faces(gray: np.ndarray, framings: Sequence[Framing], size: int = CROP) -> np.ndarray:
    """Crops (N, size, size, 1) float32 in [0, 1] of a grayscale uint8 picture (H, W): one
    bilinear affine resample each, the picture's border replicated outside it (as in
    training)."""
    gray = to_gray(gray)
    out = np.empty((len(framings), size, size, 1), np.float32)
    for i, f in enumerate(framings):
        out[i, :, :, 0] = _warp(gray, f, size)
    out *= 1.0 / 255.0
    return out


def _warp(image: np.ndarray, framing: Framing, size: int) -> np.ndarray:
    """The square `framing` of a 2-D image (uint8 or float32) resampled to size x size.

    A square more than twice the crop's side (a face of 192+ pixels: high-resolution photos
    and video) is first shrunk by a power of two m (<= side / size) by averaging m x m blocks
    of its region, then resampled: one bilinear resample of a 10x larger face samples 4 of
    every 100 pixels and aliases fine detail into the crop, where the training crops were
    rendered at 1-2x. Below 2x the crop is the single bilinear resample it always was."""
    m = 1 << int(math.floor(math.log2(framing.side / size))) if framing.side >= 2 * size else 1
    if m > 1:
        image, framing = _shrunk_region(image, framing, m)
    return cv2.warpAffine(image, framing.warp_matrix(size), (size, size),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def _shrunk_region(image: np.ndarray, framing: Framing, m: int) -> tuple[np.ndarray, Framing]:
    """The region around `framing`'s square (edge replicated past the picture's border), as
    m x m block means, and the framing in that region's pixels (pixel J covers original
    pixels m J .. m J + m - 1 of the region, so coordinates scale by exactly 1/m)."""
    x, y, w, h = framing.box()
    x0, y0 = (int(math.floor(v / m)) * m - 2 * m for v in (x, y))
    x1, y1 = (int(math.ceil(v / m)) * m + 2 * m for v in (x + w, y + h))
    h, w = image.shape[:2]
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if cx0 >= cx1 or cy0 >= cy1:  # wholly outside: the nearest edge pixels, replicated
        rows = np.clip(np.arange(y0, y1), 0, h - 1)
        cols = np.clip(np.arange(x0, x1), 0, w - 1)
        region = image[rows[:, None], cols[None, :]]
    else:  # a view of the picture, its border replicated past the picture's edges
        region = cv2.copyMakeBorder(image[cy0:cy1, cx0:cx1], cy0 - y0, y1 - cy1, cx0 - x0,
                                    x1 - cx1, cv2.BORDER_REPLICATE)
    small = cv2.resize(region, ((x1 - x0) // m, (y1 - y0) // m), interpolation=cv2.INTER_AREA)
    return small, Framing((framing.cx - x0) / m, (framing.cy - y0) / m, framing.side / m,
                          framing.angle)


def framing_from_box(box: Sequence[float], angle: float = 0.0) -> Framing:
    """The first guess at the training square from a detector (or user) box (x, y, w, h),
    by the map fitted on the training people's photos (framing_stats.BOX_*); a box turned by
    `angle` (a Detection found on a turned copy) gives the square turned with it."""
    x, y, w, h = (float(v) for v in box)
    fx, fy = framing_stats.BOX_CENTRE
    dx, dy = (fx - 0.5) * w, (fy - 0.5) * h  # the fitted offset, in the box's own axes
    c, n = math.cos(angle), math.sin(angle)
    return Framing(x + w / 2 + c * dx - n * dy, y + h / 2 + n * dx + c * dy,
                   framing_stats.BOX_SIDE * math.sqrt(w * h), angle)


def eye_angle(keypoints_px: np.ndarray) -> float:
    """In-plane roll (radians) of the line from the right eye centre to the left eye centre
    (0 when the eyes are level: the subject's left eye is on the picture's right)."""
    p = keypoints.as_points(kaggle15(keypoints_px))
    d = p[_IDX["left_eye_center"]] - p[_IDX["right_eye_center"]]
    return math.atan2(d[1], d[0])


# Distances between Kaggle keypoints (by name) whose ratios to the face's overall size describe
# its shape: eye distance, outer eye corners, eyes to lips, brows to lower lip, mouth width.
_SHAPE_DISTANCES = (
    (("left_eye_center",), ("right_eye_center",)),
    (("left_eye_outer_corner",), ("right_eye_outer_corner",)),
    (("left_eye_center", "right_eye_center"), ("mouth_center_top_lip", "mouth_center_bottom_lip")),
    (("left_eyebrow_inner_end", "right_eyebrow_inner_end"), ("mouth_center_bottom_lip",)),
    (("mouth_left_corner",), ("mouth_right_corner",)),
)


def shape_features(points: np.ndarray) -> tuple[np.ndarray, float]:
    """(features (19,), size in pixels) of 15 keypoints (15, 2) in the square's own axes.

    size = RMS distance of the 15 from their mean. The features do not depend on that size:
    log(x and y range / size), log(distance / size) for each of `_SHAPE_DISTANCES`, the nose
    tip's offset from the eyes' midpoint / size (x, y: how far the head is turned), their
    squares, and 1. `side_from_keypoints` is linear in them in log(side / size)."""
    p = np.asarray(points, np.float64)
    size = float(np.sqrt(((p - p.mean(axis=0)) ** 2).sum(axis=-1).mean()))

    def at(names):
        return p[[_IDX[n] for n in names]].mean(axis=0)

    lengths = [*np.ptp(p, axis=0)] + [np.linalg.norm(at(a) - at(b)) for a, b in _SHAPE_DISTANCES]
    logs = np.log(np.maximum(np.asarray(lengths), 1e-6 * size) / size)
    nose = (at(("nose_tip",)) - at(("left_eye_center", "right_eye_center"))) / size
    return np.concatenate([logs, nose, nose ** 2, logs ** 2, [1.0]]), size


def side_from_keypoints(points: np.ndarray) -> float:
    """Training-square side (pixels) estimated from the 15 keypoints (15, 2) given in the
    square's axes. The training side was set by the 68-landmark box (chin and jaw included),
    which the 15 do not reach: a log-linear regression on their shape
    (framing_stats.SIDE_FROM_SHAPE) explains it to 3.6% (std) where their box's width and
    height alone left 5.5%."""
    features, size = shape_features(points)
    return size * math.exp(float(features @ np.asarray(framing_stats.SIDE_FROM_SHAPE)))


def square_axes(keypoints_px: np.ndarray, rotate: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """(origin (2,), rotation (2, 2), angle) of the square the training rule draws around
    keypoints (2K,) in picture pixels: origin at the 15 Kaggle keypoints' mean, axes turned
    with the eye line when `rotate`. `(points - origin) @ rotation` gives points in its axes."""
    angle = eye_angle(keypoints_px) if rotate else 0.0
    c, n = math.cos(angle), math.sin(angle)
    return keypoints.as_points(kaggle15(keypoints_px)).mean(axis=0), np.array([[c, -n], [n, c]]), angle


def framing_from_keypoints(keypoints_px: np.ndarray, rotate: bool = False) -> Framing:
    """The training rule applied to (predicted) keypoints (2K,) in picture pixels: centre =
    mean of the 15 Kaggle keypoints + TRAIN_CENTRE_OFFSET x side; side from
    `side_from_keypoints` on those 15 (for a 68-point model, the 15 read off its 68: training
    used the landmarks' box, but predicted jaw points are the least sure, and a box of them
    lets the crop drift pass by pass). A square model's four square points say where the
    training square is (`framing_from_square_points`). With `rotate` the square turns with
    the eye line (undoes in-plane roll; training crops were upright, so roll then comes out
    as 0)."""
    all_points = keypoints.as_points(np.asarray(keypoints_px, np.float64))
    p = keypoints.as_points(kaggle15(keypoints_px))
    mean, rot, angle = square_axes(keypoints_px, rotate)
    if len(all_points) * 2 == _SQUARE_WIDTH:
        return framing_from_square_points(all_points[len(p):], angle)
    side = side_from_keypoints((p - mean) @ rot)  # coordinates in the square's own axes
    centre = mean + rot @ (np.asarray(framing_stats.TRAIN_CENTRE_OFFSET) * side)
    return Framing(float(centre[0]), float(centre[1]), side, angle)


def framing_from_square_points(points: np.ndarray, angle: float = 0.0) -> Framing:
    """The training square marked by a square model's four square points (4, 2) in picture
    pixels: centre = their mean (they are symmetric about the crop's centre), side from their
    RMS distance to it (sqrt(2) x 1/3 of the side in a training crop), turned by `angle`."""
    pts = np.asarray(points, np.float64)
    centre = pts.mean(axis=0)
    ref = keypoints.as_points(keypoints.square_points_px(CROP))
    ratio = np.sqrt(((pts - centre) ** 2).sum(-1).mean()) / np.sqrt(
        ((ref - CROP / 2) ** 2).sum(-1).mean())
    return Framing(float(centre[0]), float(centre[1]), float(CROP * ratio), angle)


def training_framing(keypoints_px: np.ndarray, landmarks68_px: np.ndarray) -> Framing:
    """The exact training square from true labels: 15 keypoints (2K,) and 68 landmarks (136,)."""
    p = keypoints.as_points(np.asarray(keypoints_px, np.float64))
    lm = np.asarray(landmarks68_px, np.float64).reshape(-1, 2)
    span = lm.max(axis=0) - lm.min(axis=0)
    side = framing_stats.TRAIN_SIDE_PER_BBOX68 * float(span.max())
    centre = p.mean(axis=0) + np.asarray(framing_stats.TRAIN_CENTRE_OFFSET) * side
    return Framing(float(centre[0]), float(centre[1]), side)


def shape_error(keypoints_px: np.ndarray) -> float:
    """RMS distance of the keypoints (2K,) from the mean face after the best similarity
    alignment, in units of the mean face's outer-eye-corner distance. Real faces (true keypoints
    of photos): median 0.06, 95% below 0.12, 99% below 0.16.
    (68-point models: their 15 Kaggle keypoints.)"""
    p = keypoints.as_points(kaggle15(keypoints_px))
    if not np.all(np.isfinite(p)):
        return float("inf")
    a, b = p - p.mean(0), _MEAN_POINTS - _MEAN_POINTS.mean(0)
    # Complex least squares: b ~ z * a with z = scale * e^{i angle}.
    za, zb = a[:, 0] + 1j * a[:, 1], b[:, 0] + 1j * b[:, 1]
    denom = float(np.vdot(za, za).real)
    if denom <= 1e-12:
        return float("inf")
    z = np.vdot(za, zb) / denom
    resid = np.abs(z * za - zb)
    iod = np.linalg.norm(_MEAN_POINTS[_IDX["left_eye_outer_corner"]]
                         - _MEAN_POINTS[_IDX["right_eye_outer_corner"]])
    return float(np.sqrt(np.mean(resid ** 2)) / iod)


# A face much smaller than another and inside that person's head or the column below it
# (neck, tie, chest) would be behind them, so hidden: such faces are hair, ears, ties, logos.
# Sizes are the training rule's sides. Chosen on the training people's photos, where the false
# faces of that kind were 0.40-0.63 of the other face's side and the one real face behind a
# head (seen beside it) 0.92.
HIDDEN_BELOW = 0.78
HIDDEN_REGION = (0.7, -0.8, 2.5)  # |dx| <=, dy from, to: in sides of the larger face's square


def hidden(keypoints_px: Sequence[np.ndarray]) -> np.ndarray:
    """(N,) bool for N faces' keypoints (2K,) in one picture: True where another face would hide
    it: it is smaller than HIDDEN_BELOW of that face's square's side and centred within
    HIDDEN_REGION of that square (its own axes, turned with its eye line; dy down the face)."""
    squares = [framing_from_keypoints(k, rotate=True) for k in keypoints_px]
    half_width, top, bottom = HIDDEN_REGION

    def hides(a: Framing, b: Framing) -> bool:
        across, down = a.to_crop(np.array([b.cx, b.cy]), size=1) - 0.5  # in a's sides
        return (b.side < HIDDEN_BELOW * a.side and abs(across) <= half_width
                and top <= down <= bottom)

    return np.array([any(hides(a, b) for a in squares) for b in squares], bool)


# ---------------------------------------------------------------------------------------------
# Detection

