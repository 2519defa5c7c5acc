"""A predictor with two compiled batch sizes: bulk crops in batches of 8, the rest one by one.

Why: on 2 CPU cores heatmap_unet runs 3-3.5 ms a face in batches of 1-8 and 7 ms a face in
batches of 64 (cache-bound), and one fixed batch pads a lone photo or a video frame's faces
up to it. So whole batches of BULK_BATCH go through one executable, the rest through the
batch-1 one; each is compiled once, on first use.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from fkd_jax.inference.predictor import Predictor

BULK_BATCH, SMALL_BATCH = 8, 1


class TwoBatchPredictor:
    """Crops (N, S, S, 1) float32 in [0, 1] -> keypoints (N, 2K) in crop pixels.

    `make(batch_size)` builds a `Predictor` for one batch size (called at most once per size).
    """

    def __init__(self, make: Callable[[int], Predictor]):
        self._make, self._cache = make, {}

    @property
    def image_size(self) -> int:
        """The model's input side S in pixels (crops are rendered at this size)."""
        return int(self._get(SMALL_BATCH).image_size)

    @property
    def width(self) -> int:
        """2K: the number of coordinates a face's keypoints have."""
        return len(self._get(SMALL_BATCH).flip_permutation)

    def _get(self, batch: int) -> Predictor:
        if batch not in self._cache:
            self._cache[batch] = self._make(batch)
        return self._cache[batch]

    def __call__(self, images: np.ndarray, tta: bool = False) -> np.ndarray:
        """(N, 2K) crop pixels; with `tta`, averaged with the mirror image's prediction."""
        return self._split(lambda p, x: (p(x, tta=tta),), images)[0]

    def with_spread(self, images: np.ndarray, tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints (N, 2K) and spreads (N, K) in crop pixels (`Predictor.with_spread`)."""
        return self._split(lambda p, x: p.with_spread(x, tta=tta), images)

    def mirror_view(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flip TTA's second view alone (`Predictor.mirror_view`)."""
        return self._split(lambda p, x: p.mirror_view(x), images)

    def _split(self, run: Callable, images: np.ndarray) -> tuple[np.ndarray, ...]:
        """`run(predictor, images)` on whole bulk batches, then the rest one by one."""
        images = np.asarray(images, np.float32)
        whole = len(images) // BULK_BATCH * BULK_BATCH
        parts = []
        if whole:
            parts.append(run(self._get(BULK_BATCH), images[:whole]))
        if len(images) > whole or not parts:
            parts.append(run(self._get(SMALL_BATCH), images[whole:]))
        return tuple(np.concatenate(outs) for outs in zip(*parts))
