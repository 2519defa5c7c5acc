"""Keypoint regression networks (Flax NNX), chosen by `config.model.name`.

Every model maps images float32 (B, 96, 96, 1) NHWC in [0, 1] to (B, 30) keypoints in
*normalised* coordinates (u = x / 48 - 1, see `fkd_jax.keypoints`), Kaggle column order.
Signature: `model(images, *, train=False, dropout_key=None)`. Dropout draws its randomness from
`dropout_key` at call time, so the only state a model carries is its parameters and the
training step stays a pure function of arrays.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from fkd_jax import ops
from fkd_jax.keypoints import IMAGE_SIZE, NUM_COORDS


def _dtype(name: str):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


class _Dropout(nnx.Module):
    """Dropout whose key is passed at call time (no RNG state stored in the module)."""

    def __init__(self, rate: float):
        self.rate = rate

    def __call__(self, x, train: bool, key):
        if not train or self.rate == 0.0:
            return x
        if key is None:
            raise ValueError("dropout needs a dropout_key when train=True")
        keep = jax.random.bernoulli(key, 1.0 - self.rate, x.shape)
        return jnp.where(keep, x / (1.0 - self.rate), 0).astype(x.dtype)


class ConvPoolNet(nnx.Module):
    """Conv(+ReLU) -> 2x2 max-pool blocks, then dense layers: the classic keypoint CNN.

    `convs` lists (features, kernel_size) per block; `hidden` the dense widths. 'VALID' padding
    follows Nouri's kfkd nets; 'SAME' the seed notebook's simple CNN.
    """

    def __init__(
        self,
        convs: tuple[tuple[int, int], ...],
        hidden: tuple[int, ...],
        *,
        padding: str,
        dropout: float = 0.0,
        conv_impl: str = "auto",
        compute_dtype: str = "float32",
        rngs: nnx.Rngs,
    ):
        dtype = _dtype(compute_dtype)
        conv_fn = ops.get_conv(conv_impl)
        self.convs = nnx.List()
        size, in_ch = IMAGE_SIZE, 1
        for features, k in convs:
            self.convs.append(
                nnx.Conv(in_ch, features, (k, k), padding=padding, dtype=dtype,
                         conv_general_dilated=conv_fn, rngs=rngs)
            )
            size = (size - (k - 1 if padding == "VALID" else 0)) // 2
            in_ch = features
        self.denses = nnx.List()
        in_f = size * size * in_ch
        for width in hidden:
            self.denses.append(nnx.Linear(in_f, width, dtype=dtype, rngs=rngs))
            in_f = width
        self.head = nnx.Linear(in_f, NUM_COORDS, dtype=dtype, rngs=rngs)
        self.dropout = _Dropout(dropout)
        self.compute_dtype = dtype

    def __call__(self, x, *, train: bool = False, dropout_key=None):
        x = x.astype(self.compute_dtype)
        for conv in self.convs:
            x = ops.max_pool_2x2(jax.nn.relu(conv(x)))
        x = x.reshape(x.shape[0], -1)
        keys = (jax.random.split(dropout_key, len(self.denses)) if dropout_key is not None
                else [None] * len(self.denses))
        for dense, key in zip(self.denses, keys):
            x = self.dropout(jax.nn.relu(dense(x)), train, key)
        return self.head(x).astype(jnp.float32)


def simple_cnn(cfg, rngs: nnx.Rngs) -> nnx.Module:
    """The seed notebook's small CNN: three SAME conv+pool blocks and one dense layer."""
    return ConvPoolNet(((16, 3), (32, 3), (64, 3)), (128,), padding="SAME",
                       dropout=cfg.dropout, conv_impl=cfg.conv_impl,
                       compute_dtype=cfg.compute_dtype, rngs=rngs)


def nouri(cfg, rngs: nnx.Rngs, hidden: int = 500) -> nnx.Module:
    """Nouri's kfkd net: conv 32@3x3, 64@2x2, 128@2x2 (VALID, each + 2x2 max-pool), dense x2."""
    return ConvPoolNet(((32, 3), (64, 2), (128, 2)), (hidden, hidden), padding="VALID",
                       dropout=cfg.dropout, conv_impl=cfg.conv_impl,
                       compute_dtype=cfg.compute_dtype, rngs=rngs)


MODELS: dict[str, Callable] = {
    "simple_cnn": simple_cnn,
    "nouri": nouri,
    "nouri1000": lambda cfg, rngs: nouri(cfg, rngs, hidden=1000),
}


def create_model(cfg, seed: int) -> nnx.Module:
    """Build `cfg.name` (a `config.model` block) with parameters initialised from `seed`."""
    if cfg.name not in MODELS:
        from fkd_jax.errors import UserError

        raise UserError(f"--config.model.name={cfg.name!r} is not a model; choose one of "
                        f"{', '.join(sorted(MODELS))}")
    return MODELS[cfg.name](cfg, nnx.Rngs(params=seed))


def count_params(model: nnx.Module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
