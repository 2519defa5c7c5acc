"""A trained model for prediction: its parameters (`Run`), and one compiled predictor.

A `Run` comes from a run directory (`fkd_jax.training.restore.load_run`); an ensemble's is one
Run whose parameters are a tuple, predicting the members' mean. `Predictor` compiles the model once for a fixed batch shape (B, S, S, 1) and
pads every request up to whole batches, so the validation set, a test set and any number of
photo crops of any count reuse the same executable: nothing recompiles per file or per size.

Units: `Predictor` takes images float32 (N, S, S, 1) NHWC in [0, 1] and returns keypoints
(N, 2K) in *pixels* of that S x S crop (Kaggle column order, see fkd_jax.geometry.keypoints).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from fkd_jax import models
from fkd_jax.data import augment
from fkd_jax.geometry import keypoints

# Prediction batch: larger ones run slower on CPU (640 faces through heatmap_unet on 2 cores:
# 3.8 s in batches of 64, 4.9 s in batches of 256).
EVAL_BATCH = 64


@dataclass(frozen=True)
class Run:
    """A trained run, restored: its config, model structure, parameters and checkpoint meta.

    `params` are the averaged parameters (EMA or SWA, `config.train.ema_decay` /
    `swa_start_epoch`) when the run kept them, else the raw ones: what the run predicts with.
    An ensemble (`members` > 1) holds a tuple of its members' parameters (one model structure)
    and its meta the members' epochs (`meta["epoch"]` a list).
    """

    config: ml_collections.ConfigDict
    graphdef: Any
    params: Any
    meta: dict
    members: int = 1


class Predictor:
    """Keypoints in pixels from crops, through one function compiled for (batch, S, S, 1).

    `fn(images)` maps a batch (batch_size, S, S, 1) to (batch_size, 2K) *normalised*
    coordinates; a request of N images runs ceil(N / batch_size) calls, the last one padded,
    so every request reuses the executable compiled for the first. Flip TTA un-mirrors about
    the axis training mirrored labels about (`flip_label_offset_px`, the run's
    `augment.flip_label_offset_px`).
    """

    def __init__(self, fn: Callable[[jax.Array], jax.Array], batch_size: int = EVAL_BATCH,
                 image_size: int = keypoints.IMAGE_SIZE,
                 flip_permutation: np.ndarray = keypoints.FLIP_PERMUTATION,
                 flip_label_offset_px: float = 0.0):
        self._fn, self.batch_size, self.image_size = fn, batch_size, image_size
        self.flip_permutation = flip_permutation
        self.flip_label_offset_px = flip_label_offset_px

    @classmethod
    def from_params(cls, apply: Callable, params, batch_size: int = EVAL_BATCH,
                    image_size: int = keypoints.IMAGE_SIZE,
                    flip_permutation: np.ndarray = keypoints.FLIP_PERMUTATION,
                    flip_label_offset_px: float = 0.0) -> "Predictor":
        """`apply` is a jitted `(params, images) -> normalised` (`model_apply`); the
        parameters stay an argument, not baked-in constants, so a training loop reuses the
        compiled function with each epoch's parameters."""
        return cls(lambda x: apply(params, x), batch_size, image_size, flip_permutation,
                   flip_label_offset_px)

    @classmethod
    def from_run(cls, run: Run, batch_size: int = EVAL_BATCH) -> "Predictor":
        keypoint_set = keypoints.KEYPOINT_SETS[run.config.data.keypoints]
        offset = augment.read_settings(run.config.get("augment")).flip_label_offset_px
        return cls.from_params(model_apply(run.graphdef, run.members), run.params, batch_size,
                               flip_permutation=keypoint_set.flip_permutation,
                               flip_label_offset_px=offset)

    def __call__(self, images: np.ndarray, tta: bool = False) -> np.ndarray:
        """(N, 2K) pixels; with `tta`, averaged with the (un-mirrored) mirror-image prediction."""
        pred = self._predict(images)
        if tta:
            mirrored = self._predict(np.asarray(images)[:, :, ::-1, :])
            pred = 0.5 * (pred + keypoints.flip_keypoints_px(mirrored, None, self.image_size,
                                                              self.flip_permutation,
                                                              self.flip_label_offset_px))
        return pred

    def _predict(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, np.float32)
        n, b = len(images), self.batch_size
        if images.shape[1:] != (self.image_size, self.image_size, 1):
            raise ValueError(f"expected images (N, {self.image_size}, {self.image_size}, 1), "
                             f"got {images.shape}")
        out = []
        for start in range(0, n, b):
            chunk = images[start:start + b]
            padded = np.zeros((b,) + images.shape[1:], np.float32)
            padded[: len(chunk)] = chunk
            out.append(np.asarray(self._fn(padded))[: len(chunk)])
        if not out:
            return np.zeros((0, len(self.flip_permutation)), np.float32)
        return np.asarray(keypoints.to_pixels(np.concatenate(out), self.image_size), np.float32)


def model_apply(graphdef, members: int = 1) -> Callable:
    """The jitted `(params, images (B, S, S, 1)) -> (B, 2K) normalised` of a model structure;
    jit's cache compiles it once per batch shape."""
    return jax.jit(functools.partial(apply_members, graphdef, members))


def apply_members(graphdef, members: int, params, images: jax.Array) -> jax.Array:
    """The model's normalised prediction; for an ensemble (`members` > 1, `params` a tuple) the
    members' mean, every member in the one compiled function."""
    if members == 1:
        return models.apply_model(graphdef, params, images)
    return sum(models.apply_model(graphdef, p, images) for p in params) / members
