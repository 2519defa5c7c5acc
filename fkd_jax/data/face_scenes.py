"""The face detector's canvas (`fkd_jax.models.face_net`): how a picture becomes its input
(`to_canvas`), what its outputs mean (`targets`), and training canvases composed from photos
whose faces' keypoints are known (`compose`). numpy and OpenCV only: the exported detector
runs without jax.

The net sees a picture shrunk onto an INPUT_SIZE x INPUT_SIZE canvas (NHWC, grayscale in
[0, 1]) and answers on a grid of STRIDE-pixel cells, CenterNet style (it is convolutional:
a canvas of any sides that are multiples of CANVAS_MULTIPLE gives a grid of its own size,
`to_fine_canvas`, the finer look at large pictures):

  channel 0     the logit that a face's square is centred in the cell;
  channels 1-2  that centre's offset from the cell's centre, in cells (x, y);
  channel 3     log(side / INPUT_SIZE) of the square;
  channels 4-5  cos and sin of the square's angle (its x axis in the picture).

Why composed: a few hundred labelled photos show one large face each, near the middle. A
detector trained on them as they are learns that; placed at random scales, positions and
tilts, mirrored, relit, and tiled two or three a side (small faces, several a picture), the
same photos teach it to find faces anywhere, at any tilt; some tiles show a face-free part of
a photo instead, magnified, so that clutter is not taken for a face. Outside a placed photo the
canvas is a flat grey, as around a picture letterboxed onto the detector's canvas.

Faces are described by their training squares (`Framing`: centre, side, angle), from the
keypoints by the training rule. Canvases are float32 (B, S, S) in [0, 1], S = INPUT_SIZE;
squares are in canvas pixels.
"""

from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

from fkd_jax.geometry.framing import Framing, to_gray

INPUT_SIZE = 160  # canvas side, pixels
STRIDE = 8  # canvas pixels per output cell: a 20 x 20 grid
CANVAS_MULTIPLE = 32  # the net's coarsest stage is 1/32 of the canvas
CHANNELS = 6
SIDE_RANGE = (20.0, 150.0)  # a single photo's face square, canvas pixels (log-uniform)
GRID_P = 0.5  # share of canvases tiled with 2 x 2 or 3 x 3 photos
BACKGROUND_P = 0.1  # share of tiles showing a face-free part of a photo instead of a face
MAX_TILT = 40.0  # degrees: placed photos are turned by up to this (normal, sd MAX_TILT / 2)
ANY_TILT_P = 0.25  # ... or, this often, by any angle: heads tilted far, photos taken sideways


def to_canvas(gray: np.ndarray, size: int = INPUT_SIZE) -> tuple[np.ndarray, float]:
    """The picture (H, W) uint8 shrunk (or grown) so its longer side is `size`, in the
    top-left corner of a size x size float32 canvas in [0, 1] filled with its mean, and the
    canvas pixels per picture pixel."""
    gray = to_gray(gray)
    h, w = gray.shape
    scale = size / max(h, w)
    small = (max(1, min(size, round(w * scale))), max(1, min(size, round(h * scale))))
    resized = cv2.resize(gray, small, interpolation=cv2.INTER_AREA if scale < 1
                         else cv2.INTER_LINEAR)
    return _pad(resized, (size, size)), scale


def to_fine_canvas(gray: np.ndarray, scale: float) -> np.ndarray:
    """The picture (H, W) uint8 resized by `scale`, in the top-left corner of a float32
    canvas in [0, 1] whose sides are the next multiples of CANVAS_MULTIPLE, filled with its
    mean: a larger canvas than `to_canvas`'s, for faces too small to see on that one."""
    gray = to_gray(gray)
    h, w = gray.shape
    small = (max(1, round(w * scale)), max(1, round(h * scale)))
    resized = cv2.resize(gray, small, interpolation=cv2.INTER_AREA if scale < 1
                         else cv2.INTER_LINEAR)
    m = CANVAS_MULTIPLE
    return _pad(resized, (-(-small[1] // m) * m, -(-small[0] // m) * m))


def _pad(resized: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    canvas = np.full(shape, float(resized.mean()) / 255.0, np.float32)
    canvas[:resized.shape[0], :resized.shape[1]] = resized * np.float32(1 / 255.0)
    return canvas


def _placement(face: Framing, side: float, tilt: float, flip: bool, centre) -> np.ndarray:
    """(2, 3) affine map picture pixels -> canvas pixels putting `face`'s square at `centre`
    with `side`, turned by `tilt` (radians), mirrored first when `flip`."""
    s = side / face.side
    c, n = math.cos(tilt), math.sin(tilt)
    a = s * np.array([[c, -n], [n, c]]) @ np.diag([-1.0 if flip else 1.0, 1.0])
    t = np.asarray(centre, np.float64) - a @ (face.cx, face.cy)
    return np.concatenate([a, t[:, None]], axis=1)


def _on_indices(m: np.ndarray) -> np.ndarray:
    """The continuous map `m` on OpenCV's pixel indices (pixel centres at whole numbers)."""
    a, t = m[:, :2], m[:, 2]
    return np.concatenate([a, (a @ (0.5, 0.5) + t - 0.5)[:, None]], axis=1)


def _moved(face: Framing, m: np.ndarray, flip: bool, tilt: float) -> Framing:
    """The square of `face` after the placement `m` (a mirrored face's eye line turns from
    angle a to -a, since its left and right eyes swap)."""
    cx, cy = m[:, :2] @ (face.cx, face.cy) + m[:, 2]
    scale = math.sqrt(abs(np.linalg.det(m[:, :2])))
    return Framing(float(cx), float(cy), face.side * scale,
                   (-face.angle if flip else face.angle) + tilt)


def compose(rng: np.random.Generator, photos: Sequence[np.ndarray],
            faces: Sequence[Sequence[Framing]], n: int, size: int = INPUT_SIZE,
            any_tilt_p: float = ANY_TILT_P) -> tuple[np.ndarray, list[list[Framing]]]:
    """`n` canvases (n, size, size) float32 in [0, 1] and the squares of the faces centred on
    each, from grayscale uint8 `photos` with `faces[i]` the squares of photo i's faces.
    `any_tilt_p`: the share of placed photos turned by any angle (the rest by up to
    MAX_TILT); more for collections of photos taken sideways."""
    out = np.empty((n, size, size), np.float32)
    squares: list[list[Framing]] = []
    for b in range(n):
        fill = float(rng.uniform(0, 255))
        canvas = np.full((size, size), fill, np.float32)
        found: list[Framing] = []
        tiles = int(rng.choice([2, 3])) if rng.random() < GRID_P else 1
        cell = size / tiles
        for ty in range(tiles):
            for tx in range(tiles):
                if tiles > 1 and rng.random() < 0.15:
                    continue
                i = int(rng.integers(len(photos)))
                x0, y0 = int(round(tx * cell)), int(round(ty * cell))
                x1, y1 = int(round((tx + 1) * cell)), int(round((ty + 1) * cell))
                if rng.random() < BACKGROUND_P:
                    _paste_background(rng, photos[i], faces[i], canvas[y0:y1, x0:x1])
                    continue
                if not faces[i]:
                    continue
                face = faces[i][int(rng.integers(len(faces[i])))]
                if tiles == 1:
                    side = math.exp(rng.uniform(*np.log(SIDE_RANGE)))
                    lo, hi = 0.1 * side, size - 0.1 * side
                    centre = rng.uniform(min(lo, hi), max(lo, hi), 2)
                else:
                    side = cell * rng.uniform(0.35, 0.7)
                    centre = (np.array([tx, ty]) + 0.5 + rng.uniform(-0.12, 0.12, 2)) * cell
                tilt = math.radians(
                    float(rng.uniform(-180, 180)) if rng.random() < any_tilt_p else
                    float(np.clip(rng.normal(0, MAX_TILT / 2), -MAX_TILT, MAX_TILT)))
                flip = bool(rng.random() < 0.5)
                m = _placement(face, side, tilt, flip, centre)
                placed = cv2.warpAffine(photos[i].astype(np.float32), _on_indices(m), (size, size),
                                        flags=cv2.INTER_AREA if side < face.side / 2
                                        else cv2.INTER_LINEAR,
                                        borderMode=cv2.BORDER_CONSTANT, borderValue=-1.0)
                region = placed[y0:y1, x0:x1]
                view = canvas[y0:y1, x0:x1]
                view[region >= 0] = region[region >= 0]
                for other in faces[i]:
                    moved = _moved(other, m, flip, tilt)
                    if x0 <= moved.cx < x1 and y0 <= moved.cy < y1:
                        found.append(moved)
        out[b] = _relight(rng, canvas / 255.0)
        squares.append(found)
    return out, squares


def _paste_background(rng: np.random.Generator, photo: np.ndarray, faces: Sequence[Framing],
                      view: np.ndarray, tries: int = 20) -> None:
    """Fill `view` (a tile of the canvas) with a square of `photo` that holds no face (clear
    of every face's square by a quarter of its side), magnified: the clutter beside faces,
    lit patterns and textures, shown as large as faces are, so that none is taken for one.
    Leaves `view` as it is where the photo has no such square."""
    h, w = photo.shape
    for _ in range(tries):
        r = rng.uniform(0.1, 0.35) * min(h, w)
        x, y = rng.uniform(0, w - r), rng.uniform(0, h - r)
        if all(x + r < f.cx - 0.75 * f.side or x > f.cx + 0.75 * f.side
               or y + r < f.cy - 0.75 * f.side or y > f.cy + 0.75 * f.side for f in faces):
            scale = view.shape[0] / r
            m = np.array([[scale, 0.0, -scale * x], [0.0, scale, -scale * y]])
            view[:] = cv2.warpAffine(photo.astype(np.float32), _on_indices(m),
                                     (view.shape[1], view.shape[0]), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REPLICATE)
            return


def _relight(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Exposure, contrast, gamma, blur and sensor noise (none of which moves a face)."""
    img = np.clip((img - 0.5) * rng.uniform(0.6, 1.4) + 0.5 + rng.uniform(-0.15, 0.15), 0, 1)
    img = img ** math.exp(rng.uniform(-0.4, 0.4))
    if rng.random() < 0.25:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.5))
    img = img + rng.normal(0, rng.uniform(0, 0.03), img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


def targets(squares: Sequence[Sequence[Framing]], size: int = INPUT_SIZE
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What `face_net_loss` compares the net's outputs with, per canvas: heat (B, G, G)
    Gaussian bumps (sd a tenth of the square's side, at least half a cell) peaking at 1 in
    each face's centre cell; centres (B, G, G) 1 at those cells; regression targets
    (B, G, G, 5) in the 3 x 3 cells around each centre, each cell's own offset to it (a peak
    found one cell off still reads the right square), and near (B, G, G) 1 at those cells.
    G = size / STRIDE."""
    g = size // STRIDE
    heat = np.zeros((len(squares), g, g), np.float32)
    reg = np.zeros((len(squares), g, g, CHANNELS - 1), np.float32)
    centres = np.zeros((len(squares), g, g), np.float32)
    near = np.zeros((len(squares), g, g), np.float32)
    cells = np.arange(g) + 0.5
    for b, faces in enumerate(squares):
        for f in sorted(faces, key=lambda f: -f.side):  # small faces' cells win overlaps
            u, v = f.cx / STRIDE, f.cy / STRIDE
            j, i = int(u), int(v)
            if not (0 <= i < g and 0 <= j < g):
                continue
            sd = max(0.5, f.side / STRIDE / 10)
            bump = np.exp(-((cells[:, None] - (i + 0.5)) ** 2 + (cells[None, :] - (j + 0.5)) ** 2)
                          / (2 * sd * sd))
            heat[b] = np.maximum(heat[b], bump)
            centres[b, i, j] = 1.0
            for ii in range(max(i - 1, 0), min(i + 2, g)):
                for jj in range(max(j - 1, 0), min(j + 2, g)):
                    near[b, ii, jj] = 1.0
                    reg[b, ii, jj] = (u - jj - 0.5, v - ii - 0.5, math.log(f.side / size),
                                      math.cos(f.angle), math.sin(f.angle))
    return heat, reg, centres, near
