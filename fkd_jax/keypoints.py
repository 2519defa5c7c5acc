"""The 15 Kaggle facial keypoints: names, column order, flip pairs and coordinate units.

Pixel convention (used everywhere in fkd-jax):
  * Coordinates are continuous, in pixels, with the origin at the top-left *corner* of the
    image: pixel (row i, column j) covers [j, j+1) x [i, i+1) and its centre is (j + 0.5, i + 0.5).
    A 96x96 image spans [0, 96] on both axes. Kaggle's labels lie in that range.
  * A horizontal flip maps x -> 96 - x (the image's width minus x) and keeps y; the subject's
    left and right keypoints swap names (see `FLIP_PERMUTATION`).
  * "Left" is the subject's left, which appears on the image's right (larger x).
  * Normalised coordinates map [0, 96] onto [-1, 1]: u = x / 48 - 1. Models predict these.

Arrays of keypoints have shape (..., 30) in Kaggle's column order (x, y interleaved) or
(..., 15, 2) after `as_points`.
"""

from __future__ import annotations

import numpy as np

IMAGE_SIZE = 96  # pixels, both height and width

KEYPOINT_NAMES: tuple[str, ...] = (
    "left_eye_center",
    "right_eye_center",
    "left_eye_inner_corner",
    "left_eye_outer_corner",
    "right_eye_inner_corner",
    "right_eye_outer_corner",
    "left_eyebrow_inner_end",
    "left_eyebrow_outer_end",
    "right_eyebrow_inner_end",
    "right_eyebrow_outer_end",
    "nose_tip",
    "mouth_left_corner",
    "mouth_right_corner",
    "mouth_center_top_lip",
    "mouth_center_bottom_lip",
)
NUM_KEYPOINTS = len(KEYPOINT_NAMES)  # 15
NUM_COORDS = 2 * NUM_KEYPOINTS  # 30

# The 30 CSV columns, exactly as in Kaggle's training.csv.
COLUMNS: tuple[str, ...] = tuple(f"{name}_{axis}" for name in KEYPOINT_NAMES for axis in "xy")

# Keypoints present in (almost) every row of Kaggle's training.csv; the other 11 are
# labelled only in ~2200 of its 7049 rows.
SPARSE_SET: tuple[str, ...] = (
    "left_eye_center",
    "right_eye_center",
    "nose_tip",
    "mouth_center_bottom_lip",
)

# Coarse groups for reporting errors per facial part.
GROUPS: dict[str, tuple[str, ...]] = {
    "eyes": KEYPOINT_NAMES[0:6],
    "eyebrows": KEYPOINT_NAMES[6:10],
    "nose": ("nose_tip",),
    "mouth": KEYPOINT_NAMES[11:15],
}


def _mirror_name(name: str) -> str:
    if name.startswith("left_"):
        return "right_" + name[len("left_"):]
    if name.startswith("right_"):
        return "left_" + name[len("right_"):]
    if name == "mouth_left_corner":
        return "mouth_right_corner"
    if name == "mouth_right_corner":
        return "mouth_left_corner"
    return name  # nose tip and lip centres lie on the symmetry axis


# FLIP_PAIRS: (left, right) keypoint index pairs that swap under a horizontal flip.
FLIP_PAIRS: tuple[tuple[int, int], ...] = tuple(
    (i, KEYPOINT_NAMES.index(_mirror_name(n)))
    for i, n in enumerate(KEYPOINT_NAMES)
    if i < KEYPOINT_NAMES.index(_mirror_name(n))
)
# KEYPOINT_FLIP_PERMUTATION[i]: which keypoint lands in slot i after a flip.
KEYPOINT_FLIP_PERMUTATION: np.ndarray = np.array(
    [KEYPOINT_NAMES.index(_mirror_name(n)) for n in KEYPOINT_NAMES], dtype=np.int32
)
# The same permutation on the 30 interleaved columns.
FLIP_PERMUTATION: np.ndarray = np.stack(
    [2 * KEYPOINT_FLIP_PERMUTATION, 2 * KEYPOINT_FLIP_PERMUTATION + 1], axis=-1
).reshape(-1)
# Indices of the x and of the y columns among the 30.
X_COLUMNS: np.ndarray = np.arange(0, NUM_COORDS, 2)
Y_COLUMNS: np.ndarray = np.arange(1, NUM_COORDS, 2)


def to_normalised(keypoints_px, size: int = IMAGE_SIZE):
    """Pixels in [0, size] -> normalised [-1, 1]. Works on numpy and jax arrays."""
    half = size / 2.0
    return keypoints_px / half - 1.0


def to_pixels(keypoints_norm, size: int = IMAGE_SIZE):
    """Normalised [-1, 1] -> pixels in [0, size]. Inverse of `to_normalised`."""
    half = size / 2.0
    return (keypoints_norm + 1.0) * half


def flip_keypoints_px(keypoints_px, mask=None, width: int = IMAGE_SIZE):
    """Keypoints (..., 30) in pixels of a horizontally flipped image.

    x -> width - x, y unchanged, and left/right names swap. The mask (..., 30), if given, is
    permuted alongside and returned as a second value.
    """
    flipped = keypoints_px[..., FLIP_PERMUTATION]
    sign = np.where(np.arange(NUM_COORDS) % 2 == 0, -1.0, 1.0).astype(np.float32)
    offset = np.where(np.arange(NUM_COORDS) % 2 == 0, float(width), 0.0).astype(np.float32)
    flipped = flipped * sign + offset
    if mask is None:
        return flipped
    return flipped, mask[..., FLIP_PERMUTATION]


def as_points(keypoints):
    """(..., 30) interleaved -> (..., 15, 2) as (x, y) per keypoint."""
    return keypoints.reshape(keypoints.shape[:-1] + (NUM_KEYPOINTS, 2))


def column_indices(names) -> np.ndarray:
    """Indices into the 30 columns of both coordinates of the named keypoints."""
    idx = [KEYPOINT_NAMES.index(n) for n in names]
    return np.array([c for i in idx for c in (2 * i, 2 * i + 1)], dtype=np.int32)
