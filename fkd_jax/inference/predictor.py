"""A trained model for prediction: its parameters (`Run`), and one compiled predictor.

A `Run` comes from a run directory (`fkd_jax.training.restore.load_run`); an ensemble's is one
Run whose parameters are a tuple, predicting the members' mean. `Predictor` compiles the model once for a fixed batch shape (B, S, S, 1) and
pads every request up to whole batches, so the validation set, a test set and any number of
photo crops of any count reuse the same executable: nothing recompiles per file or per size.

Units: `Predictor` takes images float32 (N, S, S, 1) NHWC in [0, 1] and returns keypoints
(N, 2K) in *pixels* of that S x S crop (Kaggle column order, see fkd_jax.geometry.keypoints).

`Predictor` itself is numpy: jax and the model code are imported only by what builds a JAX
model (`from_run`, `model_apply`), so an ONNX model predicts without loading jax at all.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from fkd_jax.errors import UserError
from fkd_jax.geometry import keypoints

if TYPE_CHECKING:
    import jax
    import ml_collections

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
                 flip_label_offset_px: float = 0.0,
                 spread_fn: Callable[[jax.Array], tuple] | None = None):
        self._fn, self.batch_size, self.image_size = fn, batch_size, image_size
        self.flip_permutation = flip_permutation
        self.flip_label_offset_px = flip_label_offset_px
        # images -> ((B, 2K) normalised keypoints, (B, K) normalised spread); None: no spread
        self._spread_fn = spread_fn

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
        import jax

        from fkd_jax.data import augment

        keypoint_set = keypoints.KEYPOINT_SETS[run.config.data.keypoints]
        offset = augment.read_settings(run.config.get("augment")).flip_label_offset_px
        apply = model_apply(run.graphdef, run.members)
        spread = jax.jit(functools.partial(apply_members_with_spread, run.graphdef, run.members))
        return cls(lambda x: apply(run.params, x), batch_size,
                   flip_permutation=keypoint_set.flip_permutation, flip_label_offset_px=offset,
                   spread_fn=(lambda x: spread(run.params, x)) if has_spread(run) else None)

    def __call__(self, images: np.ndarray, tta: bool = False) -> np.ndarray:
        """(N, 2K) pixels; with `tta`, averaged with the (un-mirrored) mirror-image prediction."""
        pred = self._predict(self._fn, images)[0]
        if tta:
            pred = 0.5 * (pred + self._mirror_view(self._fn, images)[0])
        return pred

    def with_spread(self, images: np.ndarray, tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints (N, 2K) and each one's spread (N, K), both in crop pixels: how far the
        model's belief about a point reaches (its heatmap's RMS radius; an ensemble's also
        counts its members' disagreement, and with `tta` the plain and mirrored views'). NaN
        spreads from a model that gives none (a .jaxexport file, one regression model). The
        keypoints equal `__call__`'s (to float rounding)."""
        if self._spread_fn is None:
            pred = self(images, tta)
            return pred, _no_spread(pred)
        pred, spread = self._predict(self._spread_fn, images)
        if tta:
            m_pred, m_spread = self._mirror_view(self._spread_fn, images)
            pred, spread = pool_views(np.stack([pred, m_pred]), np.stack([spread, m_spread]))
        return pred, spread.astype(np.float32)

    def mirror_view(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flip TTA's second view alone, for a caller that has the first: the mirror images'
        keypoints (N, 2K) and spreads (N, K, NaN where the model gives none), crop pixels,
        mapped back onto the images themselves."""
        pred, spread = self._mirror_view(self._spread_fn or self._fn, images)
        return pred, _no_spread(pred) if spread is None else spread

    def _mirror_view(self, fn: Callable, images: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray | None]:
        """The mirror images' keypoints mapped back, and their spreads if `fn` gives any."""
        out = self._predict(fn, _mirror(images))
        pred = keypoints.flip_keypoints_px(out[0], None, self.image_size, self.flip_permutation,
                                           self.flip_label_offset_px)
        return pred, out[1][:, self.flip_permutation[0::2] // 2] if len(out) > 1 else None

    def _predict(self, fn: Callable, images: np.ndarray) -> tuple[np.ndarray, ...]:
        """`fn`'s outputs for every image, batch by batch; the first (keypoints) and the second
        if any (spread) turned from normalised units into crop pixels."""
        images = np.asarray(images, np.float32)
        n, b = len(images), self.batch_size
        if images.shape[1:] != (self.image_size, self.image_size, 1):
            raise ValueError(f"expected images (N, {self.image_size}, {self.image_size}, 1), "
                             f"got {images.shape}")
        parts = []
        for start in range(0, n, b):
            chunk = images[start:start + b]
            padded = np.zeros((b,) + images.shape[1:], np.float32)
            padded[: len(chunk)] = chunk
            out = fn(padded)
            out = out if isinstance(out, tuple) else (out,)
            parts.append([np.asarray(o)[: len(chunk)] for o in out])
        width = len(self.flip_permutation)
        if not parts:
            return (np.zeros((0, width), np.float32), np.zeros((0, width // 2), np.float32))
        pred = np.asarray(keypoints.to_pixels(np.concatenate([p[0] for p in parts]),
                                              self.image_size), np.float32)
        if len(parts[0]) == 1:
            return (pred,)
        # a spread of d normalised units is d * S / 2 pixels (normalised spans [-1, 1])
        spread = np.concatenate([p[1] for p in parts]) * (self.image_size / 2.0)
        return pred, spread.astype(np.float32)


def pool_views(points: np.ndarray, spreads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """V views of N faces pooled: keypoints (V, N, 2K) -> their mean (N, 2K); spreads (V, N, K)
    -> the RMS radius of the views' beliefs taken together (N, K): the law of total variance,
    their own spreads squared plus their squared distances from the mean, averaged."""
    mean = points.mean(axis=0)
    gap2 = ((points - mean) ** 2).reshape(*points.shape[:2], -1, 2).sum(-1)
    return mean, np.sqrt((spreads ** 2).mean(axis=0) + gap2.mean(axis=0))


def has_spread(run: Run) -> bool:
    """Whether a run's predictions have spreads to tell: heatmap models and ensembles (one
    model that regresses coordinates directly has none)."""
    from fkd_jax import models

    return run.members > 1 or models.has_heatmaps(run.config.model.name)


def check_keypoint_model(in_shapes: list, out_shapes: list, path: str | Path,
                         float32: bool = True) -> keypoints.KeypointSet:
    """The keypoint set of a model file whose one input is float32 (B, S, S, 1) and whose
    outputs are (B, 2K) keypoints, optionally followed by (B, K) spreads (any file format:
    shapes only); UserError naming the file otherwise."""
    ok = (float32 and len(in_shapes) == 1 and len(out_shapes) in (1, 2)
          and len(in_shapes[0]) == 4 and in_shapes[0][3] == 1
          and isinstance(in_shapes[0][1], int) and in_shapes[0][1] == in_shapes[0][2]
          and len(out_shapes[0]) == 2 and isinstance(out_shapes[0][1], int)
          and all(len(o) == 2 and o[1] == out_shapes[0][1] // 2 for o in out_shapes[1:]))
    if not ok:
        raise UserError(f"--model {path}: not a keypoint model (takes {list(in_shapes)}, "
                        f"returns {list(out_shapes)}; expected float32 (B, S, S, 1) -> (B, 2K)"
                        " [and (B, K)])")
    return keypoints.set_for_width(out_shapes[0][1], f"--model {path}")


def _no_spread(pred: np.ndarray) -> np.ndarray:
    """(N, K) NaN spreads for keypoints (N, 2K) from a model that gives none."""
    return np.full((len(pred), pred.shape[1] // 2), np.nan, np.float32)


def _mirror(images: np.ndarray) -> np.ndarray:
    return np.asarray(images)[:, :, ::-1, :]


def model_apply(graphdef, members: int = 1) -> Callable:
    """The jitted `(params, images (B, S, S, 1)) -> (B, 2K) normalised` of a model structure;
    jit's cache compiles it once per batch shape."""
    import jax

    return jax.jit(functools.partial(apply_members, graphdef, members))


def apply_members(graphdef, members: int, params, images: jax.Array) -> jax.Array:
    """The model's normalised prediction; for an ensemble (`members` > 1, `params` a tuple) the
    members' mean, every member in the one compiled function."""
    from fkd_jax import models

    if members == 1:
        return models.apply_model(graphdef, params, images)
    return sum(models.apply_model(graphdef, p, images) for p in params) / members


def apply_members_with_spread(graphdef, members: int, params, images: jax.Array):
    """`apply_members`' keypoints (B, 2K) and their spread (B, K), normalised: the RMS radius
    of the members' beliefs taken together (law of total variance: the mean of their heatmaps'
    variances plus the variance of their answers)."""
    import jax.numpy as jnp

    from fkd_jax import models

    outs = [models.apply_with_spread(graphdef, p, images)
            for p in (params if members > 1 else (params,))]
    mean = sum(m for m, _ in outs) / members
    var = (sum(s * s for _, s in outs) + sum(((m - mean) ** 2).sum(-1) for m, _ in outs)) / members
    return mean.reshape(images.shape[0], -1), jnp.sqrt(var)
