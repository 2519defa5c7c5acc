"""Procedural synthetic faces with exact keypoints: fkd-jax's embedded default data set.

Why: the project must train, evaluate and test end to end without Kaggle's images, on data
whose labels are exact and where a CNN has something real to learn (a constant mean-face
prediction scores clearly worse than a trained net).

How a face is made (vectorised numpy over blocks of faces):
  1. Shape: the 15 keypoints are sampled from a PCA model of Kaggle's complete label rows
     (`fkd_jax.geometry.face_shape_stats`, fitted by scripts/fit_face_shape.py), so position, size,
     in-plane rotation, yaw-like asymmetry and mouth opening follow the real label distribution.
  2. Render: everything else derives from the keypoints, in the face's own frame (eye line as
     x axis, interocular distance d as unit): background clutter, torso, neck, ears, hair and a
     shaded head oval, then the features, drawn so that each sits exactly on its keypoints:
     iris and pupil centred on the eye centre with the eyelids meeting at the eye corners, brows
     spanning their inner/outer ends, the nose-tip highlight centred on the tip between the
     nostrils, the lip outlines through the lip centres and the lips meeting at the corners.
  3. Photometry: skin, hair and background levels, sphere shading from a random light, a global
     lighting gradient, contrast and gamma, blur and noise.

Conventions (fkd_jax.geometry.keypoints): pixel (i, j) has its centre at (j + 0.5, i + 0.5), so a feature
drawn at keypoint (x, y) has its intensity centre at that continuous coordinate; the subject's
left appears on the image's right, as in Kaggle's labels the shape model was fitted to.

Determinism: faces are drawn in blocks of `_BLOCK`; block b uses the random stream
SeedSequence(seed, spawn_key=(b,)) and always draws for the whole block, so face i depends only on
(seed, i) and generate_faces(n, seed)[:k] equals generate_faces(k, seed). Apart from numpy's
seeded samplers, floats only meet + - * / sqrt, floor and clip (no exp, sin or pow, whose last
bits differ between CPUs' math libraries), and sums run in a fixed order (no BLAS), so the same
seed gives the same bytes on every machine.

scripts/make_synthetic.py writes them as Kaggle-format CSV files from the command line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fkd_jax import files
from fkd_jax.data import synthetic_occluders as occ
from fkd_jax.data import synthetic_photo as photo
from fkd_jax.data import synthetic_pose
from fkd_jax.data.synthetic_render import ANATOMY, APPEARANCE, render
from fkd_jax.errors import UserError
from fkd_jax.geometry import face_shape_stats as stats
from fkd_jax.geometry import filmed_shape_stats
from fkd_jax.geometry.keypoints import (
    COLUMNS,
    IMAGE_SIZE,
    KEYPOINT_NAMES,
    SPARSE_SET,
    column_indices,
)

S = IMAGE_SIZE
_BLOCK = 64  # faces per random stream and per render batch (fits the CPU cache)
_KP_DECIMALS = 4  # keypoints are rounded so a CSV written with 4 decimals round-trips exactly
_MARGIN = 1.0  # px: sampled keypoints stay inside [_MARGIN, 96 - _MARGIN]
_MIN_LIP_GAP = 0.5  # px from the top to the bottom lip centre (real: 99% of rows have > 0.45)
_F = np.float32
_IDX = {name: i for i, name in enumerate(KEYPOINT_NAMES)}


def _shape_model(module) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean (30,), components scaled by their stds (K, 30), residual stds (30,)) px."""
    comp = np.array(module.COMPONENTS, dtype=np.float64) * np.array(module.COMPONENT_STD)[:, None]
    return (np.array(module.MEAN_SHAPE, dtype=np.float64), comp,
            np.array(module.RESIDUAL_STD, dtype=np.float64))


# Where face shapes come from: Kaggle's labels (the default), or the filmed faces' labels of a
# run's training people (YouTube-Faces crops: their labelling convention, framing and turns).
SHAPE_MODELS = {"kaggle": _shape_model(stats), "filmed": _shape_model(filmed_shape_stats)}
_NUM_COMP = len(SHAPE_MODELS["kaggle"][1])
assert all(len(comp) == _NUM_COMP for _, comp, _ in SHAPE_MODELS.values())  # same draws
# spawn-key tails of the photo-like levers' own random streams (see generate_faces)
_POSE_STREAM, _TEXTURE_STREAM, _CAMERA_STREAM, _ANATOMY_STREAM, _OCCLUDER_STREAM = 1, 2, 3, 4, 5


def _stream(seed: int, block: int, lever: int) -> np.random.Generator:
    """The random stream of one lever for one block of faces."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(block, lever)))


def generate_faces(n: int, seed: int, *, plain: bool = False, pose: bool = False,
                   texture: bool = False, camera: bool = False,
                   anatomy: bool = False, occluders: bool = False,
                   shapes: str = "kaggle") -> tuple[np.ndarray, np.ndarray]:
    """`n` synthetic faces: images uint8 (n, 96, 96) and keypoints float32 (n, 30) in pixels,
    Kaggle column order, all present. A pure function of (n, seed) and the switches.

    `plain=True` draws the same faces without glasses, blur, noise, texture and camera effects
    (same keypoints); tests use it to check that features sit where their keypoints say.
    Photo-like levers, each from its own random stream (so switching one leaves the others'
    draws alone; all off gives the original faces): `pose` turns the heads in 3D
    (synthetic_pose), `texture` lays value noise at several scales over face and background,
    `camera` adds exposure, low resolution, motion blur, sensor noise and JPEG blocks
    (synthetic_photo), `anatomy` redraws some appearance ranges closer to filmed faces (wider
    heads, deep sockets, soft brows, a large dark nose base: synthetic_render.ANATOMY),
    `occluders` covers some faces with hands, beards and hats (synthetic_occluders).
    `shapes` names the shape model (SHAPE_MODELS); the same draws map to either.
    """
    if shapes not in SHAPE_MODELS:
        raise UserError(f"unknown shapes {shapes!r}; expected one of {', '.join(SHAPE_MODELS)}")
    n, seed = _check_count(n, "n"), _check_seed(seed)
    images = np.empty((n, S, S), dtype=np.uint8)
    keypoints = np.empty((n, len(COLUMNS)), dtype=np.float32)
    for start in range(0, n, _BLOCK):
        m = min(_BLOCK, n - start)
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(start // _BLOCK,)))
        kp = _sample_shapes(rng.standard_normal((2 * _BLOCK, _NUM_COMP + len(COLUMNS))), _BLOCK,
                            SHAPE_MODELS[shapes])
        u = rng.random((_BLOCK, len(APPEARANCE)))
        p = {name: (lo + (hi - lo) * u[:m, i]).astype(_F)
             for i, (name, lo, hi) in enumerate(APPEARANCE)}
        noise = None if plain else rng.standard_normal((_BLOCK, S, S), dtype=_F)[:m]
        block = start // _BLOCK
        if anatomy:
            u_a = _stream(seed, block, _ANATOMY_STREAM).random((_BLOCK, len(ANATOMY)))[:m]
            p.update({name: (lo + (hi - lo) * u_a[:, i]).astype(_F)
                      for i, (name, lo, hi) in enumerate(ANATOMY)})
        if pose:
            turn = _stream(seed, block, _POSE_STREAM).random((_BLOCK, synthetic_pose.POSE_DRAWS))
            kp = np.round(synthetic_pose.turn_shapes(
                kp[:m], synthetic_pose.half_tangents(turn[:m])), _KP_DECIMALS)
        field = look = None
        if texture and not plain:
            r = _stream(seed, block, _TEXTURE_STREAM)
            grids = [r.random((_BLOCK, g + 1, g + 1))[:m] for g, _ in photo.TEXTURE_LAYERS]
            field = photo.texture_field(grids, r.random((_BLOCK, len(grids)))[:m])
        if camera and not plain:
            r = _stream(seed, block, _CAMERA_STREAM)
            u_cam = r.random((_BLOCK, len(photo.CAMERA)))[:m]
            cam_noise = r.standard_normal((_BLOCK, S, S), dtype=_F)[:m]
            look = lambda img: photo.camera(img, u_cam, cam_noise)  # noqa: E731
        cover = None
        if occluders and not plain:
            r = _stream(seed, block, _OCCLUDER_STREAM)
            u_occ = r.random((_BLOCK, len(occ.OCCLUDERS)))[:m]
            grain = r.standard_normal((_BLOCK, S, S), dtype=_F)[:m]
            cover = lambda img: occ.occlude(img, kp[:m], u_occ, grain, p["skin"])  # noqa: E731
        keypoints[start:start + m] = kp[:m]
        images[start:start + m] = render(kp[:m].astype(_F), p, noise, plain, field, look, cover)
    return images, keypoints


def kaggle_missing_mask(n: int, seed: int) -> np.ndarray:
    """bool (n, 30), True where a label is present, following Kaggle's training.csv pattern.

    About 30% of rows are complete, about 67% carry only the 4 keypoints of
    `keypoints.SPARSE_SET`, the rest miss a few keypoints each (fractions from
    `face_shape_stats`). x and y of a keypoint are present or missing together.
    """
    n, seed = _check_count(n, "n"), _check_seed(seed)
    u = np.random.default_rng(seed).random((n, 1 + len(KEYPOINT_NAMES)))
    complete = u[:, 0] < stats.FRACTION_COMPLETE
    sparse_only = ~complete & (u[:, 0] < stats.FRACTION_COMPLETE + stats.FRACTION_SPARSE_ONLY)
    sparse = np.isin(KEYPOINT_NAMES, SPARSE_SET)
    other = u[:, 1:] < np.array(stats.OTHER_PRESENCE)
    present = np.where(complete[:, None], True, np.where(sparse_only[:, None], sparse, other))
    return np.repeat(present, 2, axis=1)


def write_kaggle_files(out_dir, n: int, seed: int, kaggle_missing: bool = False,
                       n_test: int = 0, **levers: bool) -> dict[str, Path]:
    """Write `n` synthetic faces as Kaggle's training.csv (and, with n_test > 0, test.csv and
    IdLookupTable.csv) into out_dir; returns {"training": path, ...}.

    Test images are faces n .. n + n_test - 1 of the same seed, so never training faces. Like
    Kaggle's lookup table, the leading block of test images asks for all 30 coordinates and the
    rest for the 8 of SPARSE_SET only. `levers` (pose, texture, camera, anatomy, occluders,
    shapes) go to generate_faces.
    Files are byte-identical for the same arguments and are written atomically.
    """
    n, n_test, seed = _check_count(n, "n"), _check_count(n_test, "n_test", 0), _check_seed(seed)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a directory")
    images, keypoints = generate_faces(n + n_test, seed, **levers)
    mask = kaggle_missing_mask(n, seed) if kaggle_missing else np.ones((n, len(COLUMNS)), bool)
    image_text = _image_text(images)

    rows = [",".join((*COLUMNS, "Image"))]
    for kp, present, text in zip(keypoints[:n].tolist(), mask.tolist(), image_text[:n]):
        cells = [f"{v:.{_KP_DECIMALS}f}" if ok else "" for v, ok in zip(kp, present)]
        rows.append(",".join(cells) + "," + text)
    paths = {"training": out_dir / "training.csv"}
    files.write_text(paths["training"], "\n".join(rows) + "\n")
    if n_test == 0:
        return paths

    test_rows = ["ImageId,Image"] + [f"{i + 1},{t}" for i, t in enumerate(image_text[n:])]
    n_full = int(round(stats.LOOKUP_FULL_FRACTION * n_test))
    sparse_columns = [COLUMNS[j] for j in sorted(column_indices(SPARSE_SET))]
    lookup = ["RowId,ImageId,FeatureName,Location"]
    for image_id in range(1, n_test + 1):
        for name in COLUMNS if image_id <= n_full else sparse_columns:
            lookup.append(f"{len(lookup)},{image_id},{name},")
    paths["test"] = out_dir / "test.csv"
    paths["lookup"] = out_dir / "IdLookupTable.csv"
    files.write_text(paths["test"], "\n".join(test_rows) + "\n")
    files.write_text(paths["lookup"], "\n".join(lookup) + "\n")
    return paths


# ---------------------------------------------------------------------------------------------
# Shapes


def _sample_shapes(z: np.ndarray, count: int, model=SHAPE_MODELS["kaggle"]) -> np.ndarray:
    """`count` keypoint rows float64 (count, 30) px from standard normals z (M, K + 30), M >= count.

    Each row of z gives a candidate: PCA coefficients and residuals clipped at 3 sigma. A shape
    straying outside the image is pulled toward the mean shape along its own deviation (so it
    stays a plausible face rather than being clipped coordinate by coordinate). The linear
    model puts the top lip below the bottom lip in ~4% of candidates (real mouths are skewed:
    never less than closed); those are rejected, keeping the first `count` valid candidates in
    order (invalid ones only fill up should too few be valid).
    """
    mean, comp, resid = model
    z = np.clip(z, -3.0, 3.0)
    dev = z[:, _NUM_COMP:] * resid
    for k in range(_NUM_COMP):  # explicit sums, not BLAS: identical bits on every machine
        dev += z[:, k:k + 1] * comp[k]
    limit = np.where(dev > 0, S - _MARGIN, _MARGIN) - mean
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(dev != 0, limit / dev, np.inf)
    shrink = np.minimum(1.0, room.min(axis=1, keepdims=True))
    kp = np.round(mean + dev * shrink, _KP_DECIMALS)
    pts = kp.reshape(len(kp), -1, 2)
    eye_line = pts[:, _IDX["left_eye_center"]] - pts[:, _IDX["right_eye_center"]]
    lips = pts[:, _IDX["mouth_center_bottom_lip"]] - pts[:, _IDX["mouth_center_top_lip"]]
    gap = (lips[:, 1] * eye_line[:, 0] - lips[:, 0] * eye_line[:, 1]) / np.sqrt(
        (eye_line ** 2).sum(axis=1))  # along the face's downward axis
    order = np.argsort(gap < _MIN_LIP_GAP, kind="stable")
    return kp[order[:count]]


# ---------------------------------------------------------------------------------------------
# CSV text and argument checks


_CELL = np.zeros((256, 4), dtype=np.uint8)  # "v " as bytes, zero padded
_CELL_LEN = np.zeros(256, dtype=np.int64)
for _v in range(256):
    _b = f"{_v} ".encode()
    _CELL[_v, : len(_b)] = np.frombuffer(_b, np.uint8)
    _CELL_LEN[_v] = len(_b)


def _image_text(images: np.ndarray) -> list[str]:
    """Kaggle's `Image` cells: the 9216 pixels of each image as space-separated ints, built by
    table lookup (a Python join per pixel is 10x slower)."""
    flat = images.reshape(len(images), -1)
    out = []
    for start in range(0, len(flat), 256):
        block = flat[start:start + 256]
        chars = _CELL[block].reshape(-1)
        chars = chars[chars != 0].tobytes()
        ends = np.cumsum(_CELL_LEN[block].sum(axis=1))
        begins = np.concatenate([[0], ends[:-1]])
        out.extend(chars[b:e - 1].decode("ascii") for b, e in zip(begins, ends))
    return out


def _check_count(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise UserError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"seed must be an integer >= 0, got {seed!r}")
    return int(seed)
