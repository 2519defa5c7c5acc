"""Faces in whole pictures: detection, framing a face as the model was trained, mapping back.

The model only knows 96x96 crops framed by one rule (../shared/data/README.md): a square of
side 1.1305 x the 68-landmark box, centred on the mean of the 15 keypoints (+ a small offset).
A picture is turned into such crops in three steps:
  1. detect: OpenCV's Haar cascade (shipped inside opencv-python-headless 4.x) gives boxes;
  2. frame from the box: a fitted map (framing_stats.BOX_*) from the detector's box to the
     training square, then crop and predict (pass 1);
  3. frame from the keypoints: apply the training rule to the predicted keypoints (the side
     from the 15 keypoints' shape by a fitted regression, framing_stats.SIDE_FROM_SHAPE), turned
     with the eye line, crop again, predict again (passes 2, 3, ... until the square settles).
A second look (the cascade again, on the crop a face's keypoints frame) drops boxes that were
not faces. Each crop is one affine resample (cv2.warpAffine, bilinear, edge replicated, as the
training crops were made), and keypoints go back to the picture through the exact inverse.

Conventions: every coordinate is in pixels with fkd_jax.keypoints' continuous convention
(pixel (i, j) covers [j, j+1) x [i, i+1), its centre is (j + 0.5, i + 0.5)), keypoints (..., 30)
in Kaggle column order. Pictures are uint8: RGB (H, W, 3) or grayscale (H, W).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from fkd_jax import face_shape_stats, framing_stats, keypoints
from fkd_jax.data import KeypointData
from fkd_jax.errors import UserError

CROP = keypoints.IMAGE_SIZE  # the model's input side, pixels
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"
# The second look's other opinion: a face this cascade finds again is confirmed too. It finds
# turned faces the default cascade misses in their own crop (a 3/4 face above a tie, whose
# tie the default cascade confirmed instead), and no more boxes on nothing (same extra boxes
# on the training people's photos, same faces in the three scenes).
SECOND_CASCADE = "haarcascade_frontalface_alt2.xml"
# Passes: 1 from the detector box, then re-framed from the keypoints until the square moves
# less than DEFAULT_SETTLE of its side, at most DEFAULT_PASSES in all. Chosen on the training
# people's photos: as accurate as 3 fixed passes with 2.3 crops a face instead of 3, and far-off
# boxes (profile faces) get the passes they need (README, "How a picture is framed").
DEFAULT_PASSES = 8
DEFAULT_SETTLE = 0.02
# Pictures are searched for faces at most this many pixels on their longer side (FaceDetector).
DETECT_MAX_SIDE = 1024
# Where no face is found upright: the tilts (degrees) turned copies are searched at. The
# cascade finds faces within ~15 degrees of upright, so 30-degree steps leave no gap to 105.
TURNS = (30, -30, 60, -60, 90, -90, 180)
# A face is kept only if its keypoints, aligned onto the mean face by a similarity, lie within
# this RMS distance of it (in outer-eye-corner distances): lost tracks and garbage fail. 0.16
# is the 99th percentile of the true keypoints of the training people's 420 photos (0.12, the
# value before, rejected 5% of them: real faces then needed the fallback to be kept).
MAX_SHAPE_ERROR = 0.16
_CONFIRM_SIZE, _CONFIRM_WIDEN = 96, 1.6  # FaceDetector.confirms: crop pixels, x the square
CONFIRM_MIN_SCORE = framing_stats.CONFIRM_MIN_SCORE

_IDX = {name: i for i, name in enumerate(keypoints.KEYPOINT_NAMES)}
_SQUARE_WIDTH = 2 * keypoints.KAGGLE15_SQUARE.num_keypoints  # 38: Kaggle's 15 + 4 square points
_MEAN_POINTS = np.asarray(face_shape_stats.MEAN_SHAPE, np.float64).reshape(-1, 2)

# A predictor: crops (N, 96, 96, 1) float32 in [0, 1] -> keypoints (N, 30) in crop pixels.
# fkd_jax.inference.Predictor fits (its `tta` keyword is passed when asked for).
PredictFn = Callable[..., np.ndarray]


@dataclass(frozen=True)
class Face:
    """One face in a picture. Everything in the picture's own pixels (origin top-left corner,
    the continuous convention of fkd_jax.keypoints)."""

    box: tuple[float, float, float, float]  # x, y, w, h of the detector's (or given) box
    # (found on a turned copy: the upright box around the turned one, Detection.bounds)
    score: float  # detector confidence (higher is surer); 1.0 for a box given by the user
    keypoints_px: np.ndarray  # (2K,) keypoints in Kaggle column order (x, y interleaved)
    # Keypoints after each pass (the last equals keypoints_px): to measure what a pass gains.
    history: tuple[np.ndarray, ...] = field(default=(), compare=False, repr=False)
    shape_error: float = float("nan")  # see MAX_SHAPE_ERROR


@dataclass(frozen=True)
class Detection:
    """A face box in picture pixels (x, y of the top-left corner, w, h) and its score.

    `angle` (radians, the box's x axis in the picture) is set when the box was found on a
    turned copy of the picture (`FaceDetector.detect_turned`): the face's square is then the
    box turned by `angle` about its centre."""

    box: tuple[float, float, float, float]
    score: float
    angle: float = 0.0

    def bounds(self) -> tuple[float, float, float, float]:
        """The axis-aligned box around the (turned) square: what outputs report and draw."""
        x, y, w, h = self.box
        c, n = abs(math.cos(self.angle)), abs(math.sin(self.angle))
        bw, bh = w * c + h * n, w * n + h * c
        return (x + (w - bw) / 2, y + (h - bh) / 2, bw, bh)


def kaggle15(keypoints_px: np.ndarray) -> np.ndarray:
    """(..., 30) Kaggle keypoints of a model's output: as they are, the first 30 of a square
    model's 38, or derived from the 68 iBUG landmarks (..., 136) of a 68-point model
    (fkd_jax.keypoints.kaggle15_from_ibug68)."""
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
# Pictures


def read_picture(path: str | Path) -> np.ndarray:
    """Decode an image file to RGB uint8 (H, W, 3), EXIF orientation applied.

    Raises UserError naming the file when it is missing, empty or not a readable image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not an image file")
    if not path.is_file():
        raise UserError(f"{path}: no such image file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file, not an image")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            rgb = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: not a readable image ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:120]})") from None
    if rgb.ndim != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise UserError(f"{path}: image has no pixels")
    return np.ascontiguousarray(rgb)


def to_gray(picture: np.ndarray) -> np.ndarray:
    """uint8 (H, W) luma 0.299 R + 0.587 G + 0.114 B (as the training crops: Pillow's "L")."""
    picture = np.asarray(picture)
    if picture.ndim == 2:
        return np.ascontiguousarray(picture, dtype=np.uint8)
    return cv2.cvtColor(np.ascontiguousarray(picture, dtype=np.uint8), cv2.COLOR_RGB2GRAY)


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


def reframe_by_keypoints(data: KeypointData) -> KeypointData:
    """Every fully labelled row re-cropped to the square `framing_from_keypoints(...,
    rotate=True)` draws around its own true keypoints: the framing predict.py's passes 2, 3,
    ... reproduce from predicted keypoints. Rows with a missing keypoint keep their crop.

    Why: Kaggle's crops were framed on the 68-landmark box, which the 15 keypoints predict
    only to 5.5% in size (the jaw is not among them), so a model trained on them is framed
    differently on photos than in training. Trained on these crops, the framing the pipeline
    converges to is the training framing itself. The crop is resampled once (bilinear, edge
    replicated, as predict.py crops); a keypoint that leaves the image loses its label.
    """
    images = data.images.copy()
    kps = data.keypoints.copy()
    mask = data.mask.copy()
    size = data.image_size
    for i in np.flatnonzero(data.mask.all(axis=1)):
        framing = framing_from_keypoints(data.keypoints[i], rotate=True)
        images[i, :, :, 0] = _warp(np.ascontiguousarray(data.images[i, :, :, 0]), framing, size)
        moved = framing.to_crop(data.keypoints[i], size)
        pts = keypoints.as_points(moved)
        inside = np.repeat(np.all((pts >= 0) & (pts < size), axis=1), 2)
        kps[i] = np.where(inside, moved, 0.0)
        mask[i] = inside
    return replace(data, images=images, keypoints=kps, mask=mask)


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
    `side_from_keypoints` (15 keypoints) or exactly as in training, 1.1305 x the larger side of
    the landmarks' box (68-point models). A square model's four square points say where the
    training square is (`framing_from_square_points`). With `rotate` the square turns with
    the eye line (undoes in-plane roll; training crops were upright, so roll then comes out
    as 0)."""
    all_points = keypoints.as_points(np.asarray(keypoints_px, np.float64))
    p = keypoints.as_points(kaggle15(keypoints_px))
    mean, rot, angle = square_axes(keypoints_px, rotate)
    if len(all_points) * 2 == _SQUARE_WIDTH:
        return framing_from_square_points(all_points[len(p):], angle)
    if len(all_points) == len(p):
        side = side_from_keypoints((p - mean) @ rot)  # coordinates in the square's own axes
    else:
        span = np.ptp((all_points - mean) @ rot, axis=0)
        side = framing_stats.TRAIN_SIDE_PER_BBOX68 * float(span.max())
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


# ---------------------------------------------------------------------------------------------
# Detection


def cascade_path(name: str = DEFAULT_CASCADE) -> Path:
    """Path of a Haar cascade shipped inside the opencv-python-headless wheel."""
    return Path(cv2.data.haarcascades) / name


def _load_cascade(name: str) -> cv2.CascadeClassifier:
    path = cascade_path(name)
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise UserError(f"cannot load the face detector {path} (opencv-python-headless "
                        "4.x ships it; 5.x does not)")
    return cascade


class FaceDetector:
    """OpenCV Haar cascade face detector (frontal faces), loaded once and reused.

    `detect(gray)` runs haarcascade_frontalface_default with scaleFactor 1.1, minNeighbors 3,
    minSize 30 px; `detect_loose(gray)` the same with minNeighbors 1 (more faces and more false
    boxes: its results are kept only if the predicted keypoints look like a face).
    A picture whose longer side exceeds `max_side` is searched on a copy shrunk to it (area
    average) and the boxes scaled back: a 12-megapixel photo costs what a 1024-pixel one does,
    and the smallest face searched for (30 px of the copy) grows with the picture instead of
    staying at 30 px, where texture gives the cascade false faces.
    """

    def __init__(self, cascade: str = DEFAULT_CASCADE, scale_factor: float = 1.1,
                 min_neighbors: int = 3, min_size: int = 30, max_side: int = DETECT_MAX_SIDE):
        self._cascade = _load_cascade(cascade)
        self._second_cascade: cv2.CascadeClassifier | None = None  # loaded when first needed
        self.scale_factor, self.min_neighbors, self.min_size = scale_factor, min_neighbors, min_size
        self.max_side = max_side

    def detect(self, gray: np.ndarray, min_neighbors: int | None = None) -> list[Detection]:
        """Face boxes (x, y, w, h in the picture's pixels) of a grayscale uint8 picture (H, W),
        best score first. The score is the cascade's last-stage weight (levelWeights): higher
        is surer, not a probability."""
        gray = to_gray(gray)
        h, w = gray.shape
        sx = sy = 1.0
        if max(h, w) > self.max_side:
            s = self.max_side / max(h, w)
            small = (max(1, round(w * s)), max(1, round(h * s)))
            gray = cv2.resize(gray, small, interpolation=cv2.INTER_AREA)
            sx, sy = w / small[0], h / small[1]
        n = self.min_neighbors if min_neighbors is None else min_neighbors
        rects, _, weights = self._cascade.detectMultiScale3(
            gray, scaleFactor=self.scale_factor, minNeighbors=n,
            minSize=(self.min_size, self.min_size), outputRejectLevels=True)
        found = [Detection((float(x) * sx, float(y) * sy, float(bw) * sx, float(bh) * sy),
                           float(s)) for (x, y, bw, bh), s in
                 zip(np.reshape(rects, (-1, 4)), np.ravel(weights))]
        return sorted(found, key=lambda d: -d.score)

    def detect_loose(self, gray: np.ndarray) -> list[Detection]:
        """The fallback for pictures where `detect` finds nothing (minNeighbors 1)."""
        return self.detect(gray, min_neighbors=1)

    def detect_turned(self, gray: np.ndarray, turns: Sequence[float] = TURNS
                      ) -> list[Detection]:
        """The other fallback where `detect` finds nothing: the cascade only finds faces
        within ~15 degrees of upright, so a tilted head or a photo taken sideways (without
        EXIF orientation) has none. Searches copies of the picture turned by each of `turns`
        (degrees: the face's own tilt in the picture) and returns the boxes of all, each with
        its `angle`, in the picture's pixels. Not only the first copy with any: a copy turned
        30 degrees from the face finds boxes on texture as readily as none on the face (the
        second look then sorts them out)."""
        gray = to_gray(gray)
        fill = int(np.mean(gray))
        out = []
        for degrees in turns:
            # the copy turned back by the tilt: a face tilted by it is upright there
            copy, rot, shift = turn_picture(gray, -degrees, border_value=fill)
            for d in self.detect(copy):
                x, y, bw, bh = d.box
                cx, cy = rot.T @ (np.array([x + bw / 2, y + bh / 2]) - shift)
                out.append(Detection((float(cx) - bw / 2, float(cy) - bh / 2, bw, bh),
                                     d.score, math.radians(degrees)))
        return sorted(out, key=lambda d: -d.score)

    def confirms(self, gray: np.ndarray, keypoints_px: np.ndarray) -> bool:
        """Whether the cascade finds the face again, surely enough (`confirm_score` >=
        CONFIRM_MIN_SCORE), in the upright crop framed by the face's own keypoints. The
        keypoint model puts a face shape onto anything; this second look rejects boxes that
        were not faces."""
        return self.confirm_score(gray, keypoints_px) >= CONFIRM_MIN_SCORE

    def confirm_score(self, gray: np.ndarray, keypoints_px: np.ndarray,
                      second: bool = False) -> float:
        """The cascade's score for a face found in the training square framed by the
        keypoints (1.6x wider, turned with the eye line, rendered at 96 px, so the square is
        60 px) whose box is centred within a quarter side and 0.5-1.5 sides wide; -inf when
        there is none. Searching only those sizes makes it ~10x cheaper than a detection.
        `second` asks SECOND_CASCADE instead (its scores are on another scale)."""
        cascade = self._cascade
        if second:
            if self._second_cascade is None:
                self._second_cascade = _load_cascade(SECOND_CASCADE)
            cascade = self._second_cascade
        f = framing_from_keypoints(keypoints_px, rotate=True)
        size = _CONFIRM_SIZE
        crop = _warp(to_gray(gray), Framing(f.cx, f.cy, f.side * _CONFIRM_WIDEN, f.angle), size)
        side, best = size / _CONFIRM_WIDEN, -math.inf
        lo, hi = math.ceil(0.5 * side), math.floor(1.5 * side)
        rects, _, weights = cascade.detectMultiScale3(
            crop, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(lo, lo), maxSize=(hi, hi), outputRejectLevels=True)
        for (x, y, w, h), score in zip(np.reshape(rects, (-1, 4)), np.ravel(weights)):
            if (abs(x + w / 2 - size / 2) < 0.25 * side and abs(y + h / 2 - size / 2) < 0.25 * side
                    and 0.5 * side < w < 1.5 * side):
                best = max(best, float(score))
        return best


# ---------------------------------------------------------------------------------------------
# Locating keypoints: crops of many pictures per predictor call


def locate(grays: Sequence[np.ndarray], picture_index: Sequence[int],
           framings: Sequence[Framing], predict: PredictFn, passes: int = DEFAULT_PASSES,
           tta: bool = False, rotate: bool = True, relax: float = 1.0,
           settle: float = DEFAULT_SETTLE) -> list[np.ndarray]:
    """Keypoints (N, 2K) in picture pixels after each of `passes` passes, for N faces given by
    the picture each lies in (`picture_index` into `grays`) and its first framing.

    Pass 1 crops the given framings; every later pass re-frames each face from the previous
    pass's keypoints by the training rule (`framing_from_keypoints`). All crops of a pass go
    through `predict` in one call (it batches; nothing recompiles). Crops are rendered at the
    predictor's `image_size` (96 when it has none).

    `settle` > 0 stops re-framing a face once its square moves less than that (centre
    distance and side change, as fractions of the side) between two passes framed by the
    rule: its keypoints are then carried to the later passes unchanged, so far-off starts can
    be given many passes without spending them on faces that have converged. Every face gets
    pass 2: a first re-framing close to the given framing says little (on a real photo the
    crop then crept 2-8% a pass for four more passes, NME 12.5% -> 3.0%).
    `relax` > 1 over-relaxes each re-framing (centre and log side move `relax` times as far
    as the rule says): the model follows a mis-framed face only part of the way (about half
    on best_cpu), so plain re-framing converges geometrically and slowly on far-off boxes.
    """
    if passes < 1:
        raise ValueError("passes must be >= 1")
    framings = list(framings)
    size = int(getattr(predict, "image_size", CROP))
    active = np.ones(len(framings), bool)
    history: list[np.ndarray] = []
    for p in range(passes):
        if p > 0:
            current = history[-1].copy()
            for i in np.flatnonzero(active):
                new = _step(framings[i], framing_from_keypoints(current[i], rotate), relax)
                moved = max(math.hypot(new.cx - framings[i].cx, new.cy - framings[i].cy),
                            abs(new.side - framings[i].side)) / framings[i].side
                framings[i] = new
                if moved < settle and p > 1:  # pass 1's crop came from the box, not the rule
                    active[i] = False
        else:
            current = np.zeros((len(framings), 0))
        rows = np.flatnonzero(active) if p > 0 else np.arange(len(framings))
        crops = _crops(grays, [picture_index[i] for i in rows], [framings[i] for i in rows],
                       size)
        pred = _predict(predict, crops, tta)
        out = (current if p > 0 else
               np.zeros((len(framings), pred.shape[1] if len(pred) else keypoints.NUM_COORDS)))
        for k, i in enumerate(rows):
            out[i] = framings[i].to_picture(pred[k], size)
        history.append(out)
    return history


def _step(old: Framing, new: Framing, relax: float) -> Framing:
    if relax == 1.0:
        return new
    side = old.side * (new.side / old.side) ** relax
    return Framing(old.cx + relax * (new.cx - old.cx), old.cy + relax * (new.cy - old.cy),
                   side, new.angle)


def _crops(grays, picture_index, framings, size: int = CROP) -> np.ndarray:
    out = np.empty((len(framings), size, size, 1), np.float32)
    by_picture: dict[int, list[int]] = {}
    for i, pic in enumerate(picture_index):
        by_picture.setdefault(int(pic), []).append(i)
    for pic, rows in by_picture.items():
        out[rows] = crop_faces(grays[pic], [framings[i] for i in rows], size)
    return out


def _predict(predict: PredictFn, crops: np.ndarray, tta: bool) -> np.ndarray:
    if len(crops) == 0:
        return np.zeros((0, keypoints.NUM_COORDS), np.float64)
    out = predict(crops, tta=True) if tta else predict(crops)
    return np.asarray(out, np.float64)


def detect_faces(grays: Sequence[np.ndarray], detector: FaceDetector
                 ) -> tuple[list[list[Detection]], list[bool]]:
    """Detector boxes of each picture, and whether they came from the fallbacks: where the
    detector finds nothing upright, the boxes of the turned copies and of the loose pass
    (`FaceDetector.detect_turned`, `detect_loose`); a face from these is kept only if
    confirmed."""
    boxes, loose = [], []
    for g in grays:
        found = detector.detect(g)
        loose.append(not found)
        boxes.append(found or detector.detect_turned(g) + detector.detect_loose(g))
    return boxes, loose


def find_faces(grays: Sequence[np.ndarray], predict: PredictFn,
               detector: FaceDetector | None = None,
               boxes: Sequence[Sequence[Detection]] | None = None,
               confirm: bool | None = None, loose: Sequence[bool] | None = None,
               passes: int = DEFAULT_PASSES, tta: bool = False, rotate: bool = True,
               settle: float = DEFAULT_SETTLE, max_shape_error: float = MAX_SHAPE_ERROR,
               retry_tta: bool = True) -> list[list[Face]]:
    """Every face of each picture (grayscale uint8 (H, W)), located: one list of Faces per
    picture, best score first; an empty list when there is no face (never a guess).

    Boxes come from `boxes` (one list per picture) or else from `detect_faces`. With `confirm`
    (default: when the boxes come from the detector here) a face is kept if its keypoints look
    like a face (`shape_error`) and the detector finds it again, surely, in the crop they
    frame (`FaceDetector.confirm_score` >= CONFIRM_MIN_SCORE, or SECOND_CASCADE finds it);
    in a picture where no box is confirmed that way, one is kept unless the boxes come from
    the loose fallback (`loose[i]`): the most face-like, first by how many of the two tests
    it passes, then the largest box (texture gives the cascade its false faces at small sizes,
    where its windows are many), then the detector's score.
    A user's box is kept as given.
    With `retry_tta` (and `settle` > 0, `passes` > 1, no `tta`), faces whose square still moves
    at the last pass are located again from their boxes with flip TTA, and take that result
    if it settles: a head turned far from frontal can send the plain model chasing across the
    picture, where the mirrored view's average pulls it back. Faces that settle unconfirmed
    (the plain model lost on a face, or a box on no face) get the same retry on the same
    terms, and are judged again on its result.
    Faces whose keypoints coincide (two boxes on one face) are merged, keeping the higher score.
    """
    confirm = boxes is None if confirm is None else confirm
    if confirm and detector is None:
        raise ValueError("confirming faces needs the detector")
    if boxes is None:
        if detector is None:
            raise ValueError("give a detector or boxes")
        boxes, loose = detect_faces(grays, detector)
    if len(boxes) != len(grays):
        raise ValueError("one list of boxes per picture")
    loose = [False] * len(grays) if loose is None else list(loose)
    index = [i for i, bs in enumerate(boxes) for _ in bs]
    dets = [d for bs in boxes for d in bs]
    framings = [framing_from_box(d.box, d.angle) for d in dets]
    history = locate(grays, index, framings, predict, passes, tta, rotate, settle=settle)

    def looks(j: int) -> tuple[bool, bool]:  # (shaped, seen by a cascade) of face j
        kp = history[-1][j]
        seen = (detector.confirm_score(grays[index[j]], kp) >= CONFIRM_MIN_SCORE
                or detector.confirm_score(grays[index[j]], kp, second=True) > -math.inf)
        return shape_error(kp) <= max_shape_error, seen

    checks = [looks(j) for j in range(len(dets))] if confirm else []
    if retry_tta and not tta and settle > 0 and passes > 1:
        unconfirmed = np.array([not all(c) for c in checks] if confirm else [], bool)
        history, redone = _retry_unsettled(grays, index, framings, predict, history, rotate,
                                           settle, unconfirmed)
        for j in redone if confirm else ():
            checks[j] = looks(j)
    faces: list[list[Face]] = [[] for _ in grays]
    candidates: dict[int, list[tuple[int, float, float, Face]]] = {}
    for j, (pic, det) in enumerate(zip(index, dets)):
        kp = history[-1][j]
        face = Face(det.bounds(), det.score, kp, tuple(h[j] for h in history), shape_error(kp))
        if not confirm:
            faces[pic].append(face)
            continue
        shaped, seen = checks[j]
        if shaped and seen:
            faces[pic].append(face)
        elif not loose[pic]:
            candidates.setdefault(pic, []).append(
                (int(shaped) + int(seen), det.box[2] * det.box[3], det.score, face))
    for pic, cands in candidates.items():
        if not faces[pic]:  # none confirmed: the most face-like of the detector's boxes
            faces[pic].append(max(cands, key=lambda c: c[:3])[3])
    return [merge_duplicates(fs) for fs in faces]


def _retry_unsettled(grays, index, framings, predict, history, rotate, settle, also=None):
    """find_faces' retry: faces still moving at the last pass (and those marked in `also`),
    located again with flip TTA; a retry that settles replaces the face's history. Returns the
    history and the faces replaced."""
    redo = np.any(history[-1] != history[-2], axis=1)
    if also is not None and len(also):
        redo |= also
    redo = np.flatnonzero(redo)
    if len(redo) == 0:
        return history, []
    again = locate(grays, [index[i] for i in redo], [framings[i] for i in redo], predict,
                   len(history), True, rotate, settle=settle)
    settled = np.all(again[-1] == again[-2], axis=1)
    history = [h.copy() for h in history]
    replaced = []
    for k, i in enumerate(redo):
        if settled[k]:
            replaced.append(int(i))
            for h, a in zip(history, again):
                h[i] = a[k]
    return history, replaced


def merge_duplicates(faces: Sequence[Face], overlap: float = 0.5) -> list[Face]:
    """Drop a face whose keypoints' centre lies within `overlap` x its eye-corner distance of
    a higher-scored face's (two boxes that converged on one face). Best score first."""
    kept: list[Face] = []
    for f in sorted(faces, key=lambda f: -f.score):
        c, d = _centre_and_size(f.keypoints_px)
        if all(np.linalg.norm(c - _centre_and_size(g.keypoints_px)[0]) > overlap * d
               for g in kept):
            kept.append(f)
    return kept


def _centre_and_size(kp: np.ndarray) -> tuple[np.ndarray, float]:
    p = keypoints.as_points(kaggle15(kp))
    d = np.linalg.norm(p[_IDX["left_eye_outer_corner"]] - p[_IDX["right_eye_outer_corner"]])
    return p.mean(axis=0), max(float(d), 1e-6)


def refine_faces(gray: np.ndarray, previous: Sequence[np.ndarray], predict: PredictFn,
                 passes: int = 1, tta: bool = False, rotate: bool = True,
                 max_shape_error: float = MAX_SHAPE_ERROR,
                 detector: FaceDetector | None = None) -> list[Face | None]:
    """Track faces into a new frame: frame each from its previous keypoints (2K,), predict;
    None for a face that is lost: its keypoints fail the face-shape check or (with a
    `detector`) `FaceDetector.confirms` fails. The box is the square the face was framed by;
    the score is 1 - shape error (tracked, not detected)."""
    framings = [framing_from_keypoints(k, rotate) for k in previous]
    history = locate([gray], [0] * len(framings), framings, predict, passes, tta, rotate)
    out: list[Face | None] = []
    for j, f in enumerate(framings):
        kp = history[-1][j]
        err = shape_error(kp)
        ok = err <= max_shape_error and (detector is None or detector.confirms(gray, kp))
        out.append(Face(f.box(), 1.0 - err, kp, tuple(h[j] for h in history), err)
                   if ok else None)
    return out


def with_keypoints(face: Face, keypoints_px: np.ndarray) -> Face:
    """The same face with other keypoints (e.g. smoothed over time)."""
    return replace(face, keypoints_px=np.asarray(keypoints_px, np.float64))


# ---------------------------------------------------------------------------------------------
# Drawing

# RGB colours: the subject's left side red, right side blue, the midline green (as in the
# project's figures); boxes yellow.
_LEFT, _RIGHT, _MID, _BOX = (230, 40, 40), (40, 90, 255), (40, 200, 60), (255, 210, 0)
_POINT_COLOURS = [(_LEFT if ("left" in n) else _RIGHT if ("right" in n) else _MID)
                  for n in keypoints.KEYPOINT_NAMES]


def draw_faces(picture: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
    """A colour copy (RGB uint8 (H, W, 3)) of the picture with each face's box, number and
    keypoints drawn (marks scale with the picture's size)."""
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
        pts = keypoints.as_points(kaggle15(kp) if kp.shape[-1] == _SQUARE_WIDTH else kp)
        colours = _POINT_COLOURS if len(pts) == len(_POINT_COLOURS) else [_MID] * len(pts)
        for (px, py), colour in zip(pts, colours):
            if np.isfinite(px) and np.isfinite(py):
                # continuous coordinates -> OpenCV's pixel-centre-at-integer convention
                centre = (round((px - 0.5) * (1 << shift)), round((py - 0.5) * (1 << shift)))
                cv2.circle(out, centre, (unit + 1) << shift, colour, -1, cv2.LINE_AA, shift)
    return out
