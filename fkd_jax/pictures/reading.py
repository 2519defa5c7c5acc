"""Reading faces' squares: crop them out of their pictures, run the predictor on the crops, and
read a face's last square again in more views (its mirror image, other sides).

A square is a `Framing` in picture pixels; crops are (N, S, S, 1) float32 at the predictor's
input side S; keypoints come back (N, 2K) and spreads (N, K), in crop pixels from `read` and
in picture pixels from `read_views`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

import numpy as np

from fkd_jax.geometry import keypoints
from fkd_jax.geometry.framing import CROP, Framing, crop_faces
from fkd_jax.inference.predictor import pool_views

# A predictor: crops (N, S, S, 1) float32 in [0, 1] -> keypoints (N, 2K) in crop pixels.
# fkd_jax.inference.predictor.Predictor and two_batch.TwoBatchPredictor fit (their `tta`
# keyword is passed when asked for; their `with_spread` and `mirror_view` used where present).
PredictFn = Callable[..., np.ndarray]


def crops(grays: Sequence[np.ndarray], picture_index: Sequence[int],
          framings: Sequence[Framing], size: int = CROP) -> np.ndarray:
    """(N, size, size, 1) float32 crops of N squares, square i in picture `picture_index[i]`
    of `grays`; each picture's squares are cut together."""
    out = np.empty((len(framings), size, size, 1), np.float32)
    by_picture: dict[int, list[int]] = {}
    for i, pic in enumerate(picture_index):
        by_picture.setdefault(int(pic), []).append(i)
    for pic, rows in by_picture.items():
        out[rows] = crop_faces(grays[pic], [framings[i] for i in rows], size)
    return out


def read(predict: PredictFn, images: np.ndarray, tta: bool) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints (N, 2K) and spreads (N, K) in crop pixels (NaN spreads from a bare function)."""
    if len(images) == 0:
        return np.zeros((0, keypoints.NUM_COORDS)), np.zeros((0, keypoints.NUM_COORDS // 2))
    if hasattr(predict, "with_spread"):
        out, spread = predict.with_spread(images, tta=tta)
    else:
        out = predict(images, tta=True) if tta else predict(images)
        spread = np.full((len(out), np.shape(out)[1] // 2), np.nan)
    return np.asarray(out, np.float64), np.asarray(spread, np.float64)


def read_squares(grays: Sequence[np.ndarray], picture_index: Sequence[int],
                 squares: Sequence[Framing], predict: PredictFn, tta: bool
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints (N, 2K) and spreads (N, K), picture pixels, of N faces each read once in its
    square (crop, `read`, `to_picture`)."""
    size = int(getattr(predict, "image_size", CROP))
    pred, spread = read(predict, crops(grays, picture_index, squares, size), tta)
    return to_picture(squares, pred, spread, size)


def read_views(grays: Sequence[np.ndarray], picture_index: Sequence[int],
               framings: Sequence[Framing], predict: PredictFn, scales: Sequence[float],
               known: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints (N, 2K) and spreads (N, K), picture pixels, of N faces each read in its
    square scaled by every one of `scales` (same centre and angle, side x scale), each crop
    with its mirror image, averaged over the 2 x len(scales) views (test-time augmentation:
    the last square, framed from predicted keypoints, misses the training square by a few
    percent; on photos the mirror pays, other sides do not). The spread counts the views'
    disagreement (law of total variance, as an ensemble's members).

    `known`: readings the caller has, keypoints (N, 2K) and spreads (N, K) in picture pixels,
    and (N,) bool, True where that reading is a plain one (no TTA) of this very square. At
    scale 1 such a face costs one crop, its mirror image, and any other face two (a predictor
    without `mirror_view` reads both views of every face).
    """
    size = int(getattr(predict, "image_size", CROP))
    views, spreads = [], []
    for scale in scales:
        squares = [replace(f, side=f.side * scale) for f in framings]
        if scale == 1 and known is not None and hasattr(predict, "mirror_view"):
            images = crops(grays, picture_index, squares, size)
            plain, plain_spread = (np.array(a, np.float64) for a in known[:2])
            rows = np.flatnonzero(~np.asarray(known[2], bool))
            if len(rows):
                plain[rows], plain_spread[rows] = to_picture(
                    [squares[i] for i in rows], *read(predict, images[rows], False), size)
            mirror, mirror_spread = to_picture(squares, *predict.mirror_view(images), size)
            views += [plain, mirror]
            spreads += [plain_spread, mirror_spread]
            continue
        pred, spread = read_squares(grays, picture_index, squares, predict, True)
        views += [pred, pred]  # the TTA mean standing for both of its views (same pooling)
        spreads += [spread, spread]
    return pool_views(np.stack(views), np.stack(spreads))


def to_picture(squares: Sequence[Framing], pred: np.ndarray, spread: np.ndarray, size: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Crop-pixel keypoints (N, 2K) and spreads (N, K) of N squares, in picture pixels."""
    if not len(squares):
        return np.asarray(pred, np.float64), np.asarray(spread, np.float64)
    return (np.stack([f.to_picture(k, size) for f, k in zip(squares, pred)]),
            np.asarray(spread, np.float64) * np.array([f.side / size for f in squares])[:, None])
