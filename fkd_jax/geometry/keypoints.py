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

Other keypoint sets (`KeypointSet`, chosen by `config.data.keypoints`): the module-level names
below describe Kaggle's 15 (`KAGGLE15`), the default everywhere; `IBUG68` is the 68-landmark
iBUG/300W set. Code that must work for any set takes a `KeypointSet` (names, flip permutation,
groups) from the data instead of these constants. `KAGGLE15_SQUARE` adds four points that
mark the crop's own square (`SQUARE_NAMES`): a model trained on them says where the training
framing lies in a crop that is framed differently (predict.py re-frames photos by them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fkd_jax.errors import UserError

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


def to_normalised(keypoints_px, size: int = IMAGE_SIZE):
    """Pixels in [0, size] -> normalised [-1, 1]. Works on numpy and jax arrays."""
    half = size / 2.0
    return keypoints_px / half - 1.0


def to_pixels(keypoints_norm, size: int = IMAGE_SIZE):
    """Normalised [-1, 1] -> pixels in [0, size]. Inverse of `to_normalised`."""
    half = size / 2.0
    return (keypoints_norm + 1.0) * half


def flip_keypoints_px(keypoints_px, mask=None, width: int = IMAGE_SIZE,
                      flip_permutation: np.ndarray = FLIP_PERMUTATION,
                      label_offset_px: float = 0.0):
    """Keypoints (..., 2K) in pixels of a horizontally flipped image.

    x -> width + 2 * label_offset_px - x, y unchanged, and left/right names swap
    (`flip_permutation`, Kaggle's by default; `KeypointSet.flip_permutation` for another set).
    `label_offset_px`: how far right of their content the labels sit (a labelling convention,
    `augment.flip_label_offset_px`); mirrored about the content's axis they stay so. The mask
    (..., 2K), if given, is permuted alongside and returned as a second value.
    """
    flipped = keypoints_px[..., flip_permutation]
    n = len(flip_permutation)
    sign = np.where(np.arange(n) % 2 == 0, -1.0, 1.0).astype(np.float32)
    offset = np.where(np.arange(n) % 2 == 0, float(width) + 2.0 * label_offset_px,
                      0.0).astype(np.float32)
    flipped = flipped * sign + offset
    if mask is None:
        return flipped
    return flipped, mask[..., flip_permutation]


def as_points(keypoints):
    """(..., 2K) interleaved -> (..., K, 2) as (x, y) per keypoint."""
    return keypoints.reshape(keypoints.shape[:-1] + (keypoints.shape[-1] // 2, 2))


def column_indices(names, all_names: tuple[str, ...] = KEYPOINT_NAMES) -> np.ndarray:
    """Indices into the 2K columns of both coordinates of the named keypoints."""
    idx = [all_names.index(n) for n in names]
    return np.array([c for i in idx for c in (2 * i, 2 * i + 1)], dtype=np.int32)


@dataclass(frozen=True)
class KeypointSet:
    """A set of K keypoints: names (CSV columns NAME_x, NAME_y), mirror partners, groups."""

    name: str
    names: tuple[str, ...]
    mirror: tuple[int, ...]  # mirror[i]: the keypoint that lands in slot i after a flip
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # The keypoints of the headline RMSE (empty: all of them); the square set's four frame
    # points are a framing aid, not part of the face.
    scored: tuple[str, ...] = ()

    def __post_init__(self):
        m = np.asarray(self.mirror)
        if sorted(self.mirror) != list(range(len(self.names))) or not np.array_equal(m[m],
                                                                                     np.arange(len(m))):
            raise ValueError(f"{self.name}: mirror must be an involutive permutation")

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(f"{n}_{axis}" for n in self.names for axis in "xy")

    @property
    def flip_permutation(self) -> np.ndarray:
        """The mirror permutation on the 2K interleaved columns."""
        m = np.asarray(self.mirror, np.int32)
        return np.stack([2 * m, 2 * m + 1], axis=-1).reshape(-1)


KAGGLE15 = KeypointSet("kaggle15", KEYPOINT_NAMES, tuple(int(i) for i in KEYPOINT_FLIP_PERMUTATION),
                       GROUPS)


def _ibug68_mirror() -> tuple[int, ...]:
    """The iBUG 68-point mirror pairs (0-based): jaw, brows, nose, eyes, outer and inner lips."""
    pairs = [(i, 16 - i) for i in range(8)]  # jaw 0-16, 8 is the chin
    pairs += [(17 + i, 26 - i) for i in range(5)]  # brows
    pairs += [(31, 35), (32, 34)]  # nostrils; 27-30 and 33 lie on the midline
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lips; 51, 57 midline
    pairs += [(60, 64), (61, 63), (65, 67)]  # inner lips; 62, 66 midline
    mirror = list(range(68))
    for a, b in pairs:
        mirror[a], mirror[b] = b, a
    return tuple(mirror)


_IBUG_NAMES = tuple(f"p{i}" for i in range(68))  # landmarks68.csv's header: p0_x, p0_y, ...
IBUG68 = KeypointSet("ibug68", _IBUG_NAMES, _ibug68_mirror(), {
    "jaw": _IBUG_NAMES[0:17], "eyebrows": _IBUG_NAMES[17:27], "nose": _IBUG_NAMES[27:36],
    "eyes": _IBUG_NAMES[36:48], "mouth": _IBUG_NAMES[48:68]})


# The square points: four fixed points of every crop, at 1/6 and 5/6 of its side, named by the
# image's corners (not the subject's sides). Every training crop is framed by one rule, so in
# an un-augmented crop they always sit here; augmentation moves them with the face, and a
# model learns where the training square lies in a crop framed otherwise.
SQUARE_NAMES: tuple[str, ...] = ("square_top_west", "square_top_east", "square_bottom_west",
                                 "square_bottom_east")


def square_points_px(size: int = IMAGE_SIZE) -> np.ndarray:
    """(8,) the square points of a size x size crop in pixels, x y interleaved in
    `SQUARE_NAMES` order; symmetric about the crop's centre, so their mean is the centre."""
    lo, hi = size / 6.0, 5.0 * size / 6.0
    return np.array([lo, lo, hi, lo, lo, hi, hi, hi], np.float64)


KAGGLE15_SQUARE = KeypointSet(
    "kaggle15_square", KEYPOINT_NAMES + SQUARE_NAMES,
    tuple(int(i) for i in KEYPOINT_FLIP_PERMUTATION) + (16, 15, 18, 17),  # west <-> east
    {**GROUPS, "square": SQUARE_NAMES}, scored=KEYPOINT_NAMES)

KEYPOINT_SETS: dict[str, KeypointSet] = {s.name: s for s in (KAGGLE15, IBUG68, KAGGLE15_SQUARE)}


def set_for_width(width: int, where: str = "model") -> KeypointSet:
    """Which keypoint set a model predicts, from its output width 2K (exported models carry no
    config); `where` names the model in the error."""
    for candidate in KEYPOINT_SETS.values():
        if 2 * candidate.num_keypoints == width:
            return candidate
    known = ", ".join(f"{s.name} ({2 * s.num_keypoints})" for s in KEYPOINT_SETS.values())
    raise UserError(f"{where}: predicts {width} coordinates, none of the keypoint sets {known}")


def kaggle15_from_ibug68(points68):
    """(..., 136) iBUG landmarks -> (..., 30) Kaggle keypoints, by the usual correspondence:
    eye centres = mean of each eye's six points, corners 42/45 (left) 39/36 (right), brow ends
    22/26 (left) 21/17 (right), nose tip 30, mouth corners 54 (left) / 48, lips 51 / 57."""
    p = np.asarray(points68).reshape(np.shape(points68)[:-1] + (68, 2))
    rows = [p[..., 42:48, :].mean(-2), p[..., 36:42, :].mean(-2)]
    rows += [p[..., i, :] for i in (42, 45, 39, 36, 22, 26, 21, 17, 30, 54, 48, 51, 57)]
    return np.stack(rows, axis=-2).reshape(np.shape(points68)[:-1] + (NUM_COORDS,))
