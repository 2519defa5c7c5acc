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


COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
CONV_IMPLS = ("auto", "im2col", "xla")  # see ops.get_conv


def _dtype(name: str):
    return COMPUTE_DTYPES[name]


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


def _group_norm(channels: int, dtype, rngs: nnx.Rngs) -> nnx.GroupNorm:
    """GroupNorm with up to 8 groups of at least 4 channels each."""
    return nnx.GroupNorm(channels, num_groups=min(8, channels // 4), dtype=dtype, rngs=rngs)


class ResidualBlock(nnx.Module):
    """conv3x3-GN-ReLU-conv3x3-GN plus a (projected) skip. GroupNorm, not BatchNorm, so the
    model carries no running statistics and the step stays a pure function of parameters."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, conv_fn, dtype, rngs: nnx.Rngs):
        conv = lambda i, o, k, s: nnx.Conv(i, o, (k, k), strides=s, padding="SAME", use_bias=False,
                                           dtype=dtype, conv_general_dilated=conv_fn, rngs=rngs)
        self.conv1, self.conv2 = conv(in_ch, out_ch, 3, stride), conv(out_ch, out_ch, 3, 1)
        self.norm1 = _group_norm(out_ch, dtype, rngs)
        self.norm2 = _group_norm(out_ch, dtype, rngs)
        self.proj = conv(in_ch, out_ch, 1, stride) if (stride != 1 or in_ch != out_ch) else None

    def __call__(self, x):
        y = jax.nn.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        skip = x if self.proj is None else self.proj(x)
        return jax.nn.relu(y + skip)


class ResNetBackbone(nnx.Module):
    """Stem conv (stride 2: 96 -> 48) and one stride-2 residual stage per width after the first."""

    def __init__(self, widths, blocks: int, conv_fn, dtype, rngs: nnx.Rngs):
        self.stem = nnx.Conv(1, widths[0], (3, 3), strides=2, padding="SAME", dtype=dtype,
                             conv_general_dilated=conv_fn, rngs=rngs)
        self.blocks = nnx.List()
        in_ch = widths[0]
        for i, w in enumerate(widths):
            for b in range(blocks):
                stride = 2 if (i > 0 and b == 0) else 1
                self.blocks.append(ResidualBlock(in_ch, w, stride, conv_fn, dtype, rngs))
                in_ch = w
        self.stage_sizes = [IMAGE_SIZE // 2 // 2 ** i for i in range(len(widths))]  # 48, 24, ...
        self.out_size = self.stage_sizes[-1]
        self.out_ch = in_ch
        self.blocks_per_stage = blocks

    def __call__(self, x):
        return self.stages(x)[-1]

    def stages(self, x) -> list[jax.Array]:
        """The feature map at the end of each stage, finest (48x48) first."""
        x = jax.nn.relu(self.stem(x))
        outs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if (i + 1) % self.blocks_per_stage == 0:
                outs.append(x)
        return outs


class ResNetRegressor(nnx.Module):
    """Small residual CNN; the final feature map (B, 6, 6, C) is flattened into a dense head,
    which keeps where features are (global average pooling would throw that away)."""

    def __init__(self, widths=(32, 64, 128, 256), blocks: int = 1, hidden: int = 256, *,
                 dropout: float = 0.0, conv_impl: str = "auto", compute_dtype: str = "float32",
                 rngs: nnx.Rngs):
        dtype = _dtype(compute_dtype)
        self.backbone = ResNetBackbone(widths, blocks, ops.get_conv(conv_impl), dtype, rngs)
        flat = self.backbone.out_size ** 2 * self.backbone.out_ch
        self.dense = nnx.Linear(flat, hidden, dtype=dtype, rngs=rngs)
        self.head = nnx.Linear(hidden, NUM_COORDS, dtype=dtype, rngs=rngs)
        self.dropout = _Dropout(dropout)
        self.compute_dtype = dtype

    def __call__(self, x, *, train: bool = False, dropout_key=None):
        x = self.backbone(x.astype(self.compute_dtype))
        x = self.dropout(jax.nn.relu(self.dense(x.reshape(x.shape[0], -1))), train, dropout_key)
        return self.head(x).astype(jnp.float32)


def soft_argmax(logits):
    """Expected (x, y) of each heatmap's softmax, in normalised coordinates.

    logits (B, H, W, K) -> (B, K, 2). Cell (i, j) of an HxW map covers the image region whose
    centre is at normalised ((j + 0.5) / W * 2 - 1, (i + 0.5) / H * 2 - 1); the expectation is
    differentiable (integral regression), so the net is trained with the same coordinate loss.
    """
    b, h, w, k = logits.shape
    probs = jax.nn.softmax(logits.reshape(b, h * w, k).astype(jnp.float32), axis=1)
    probs = probs.reshape(b, h, w, k)
    xs = (jnp.arange(w) + 0.5) / w * 2.0 - 1.0
    ys = (jnp.arange(h) + 0.5) / h * 2.0 - 1.0
    x = jnp.einsum("bhwk,w->bk", probs, xs)
    y = jnp.einsum("bhwk,h->bk", probs, ys)
    return jnp.stack([x, y], axis=-1)


class HeatmapRegressor(nnx.Module):
    """Residual backbone to a 12x12 map, a 1x1 conv to 15 heatmaps, soft-argmax to coordinates."""

    def __init__(self, widths=(32, 64, 128), blocks: int = 1, *, dropout: float = 0.0,
                 conv_impl: str = "auto", compute_dtype: str = "float32", rngs: nnx.Rngs):
        del dropout  # no dense layers to drop from
        dtype = _dtype(compute_dtype)
        conv_fn = ops.get_conv(conv_impl)
        self.backbone = ResNetBackbone(widths, blocks, conv_fn, dtype, rngs)
        self.heatmaps = nnx.Conv(self.backbone.out_ch, NUM_COORDS // 2, (1, 1), dtype=dtype,
                                 conv_general_dilated=conv_fn, rngs=rngs)
        self.compute_dtype = dtype

    def __call__(self, x, *, train: bool = False, dropout_key=None):
        logits = self.heatmaps(self.backbone(x.astype(self.compute_dtype)))
        return soft_argmax(logits).reshape(x.shape[0], NUM_COORDS)


def _upsample_2x(x):
    """Nearest-neighbour 2x upsampling of NHWC `x` (its gradient is a cheap 2x2 sum)."""
    b, h, w, c = x.shape
    return jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)


class HeatmapUNet(nnx.Module):
    """Residual encoder down to 6x6 for context, a light top-down decoder (upsample, add the
    encoder's skip, conv3x3-GN-ReLU) back up to `heatmap_size`, 15 heatmaps, soft-argmax.

    Coordinates through heatmaps keep the net translation-equivariant, which is what lets it
    learn from a few thousand faces; the decoder puts the 6x6 context onto a finer grid.
    """

    def __init__(self, widths=(16, 32, 64, 128), blocks: int = 1, heatmap_size: int = 24, *,
                 dropout: float = 0.0, conv_impl: str = "auto", compute_dtype: str = "float32",
                 rngs: nnx.Rngs):
        del dropout  # no dense layers to drop from
        dtype = _dtype(compute_dtype)
        conv_fn = ops.get_conv(conv_impl)
        self.backbone = ResNetBackbone(widths, blocks, conv_fn, dtype, rngs)
        sizes = self.backbone.stage_sizes
        if heatmap_size not in sizes:
            raise ValueError(f"heatmap_size must be one of {sizes}, got {heatmap_size}")
        self.laterals, self.smooths, self.norms = nnx.List(), nnx.List(), nnx.List()
        # One decoder step per stage between the coarsest and the heatmap's.
        for coarse in range(len(widths) - 1, sizes.index(heatmap_size), -1):
            w_in, w_out = widths[coarse], widths[coarse - 1]
            self.laterals.append(nnx.Conv(w_in, w_out, (1, 1), use_bias=False, dtype=dtype,
                                          conv_general_dilated=conv_fn, rngs=rngs))
            self.smooths.append(nnx.Conv(w_out, w_out, (3, 3), padding="SAME", use_bias=False,
                                         dtype=dtype, conv_general_dilated=conv_fn, rngs=rngs))
            self.norms.append(_group_norm(w_out, dtype, rngs))
        self.heatmaps = nnx.Conv(widths[sizes.index(heatmap_size)], NUM_COORDS // 2, (1, 1),
                                 dtype=dtype, conv_general_dilated=conv_fn, rngs=rngs)
        self.compute_dtype = dtype

    def __call__(self, x, *, train: bool = False, dropout_key=None):
        feats = self.backbone.stages(x.astype(self.compute_dtype))
        y = feats[-1]
        skips = feats[-2::-1]  # next-finer stage first
        for lateral, smooth, norm, skip in zip(self.laterals, self.smooths, self.norms, skips):
            y = jax.nn.relu(norm(smooth(_upsample_2x(lateral(y)) + skip)))
        return soft_argmax(self.heatmaps(y)).reshape(x.shape[0], NUM_COORDS)


def _from_config(cls, **kw) -> Callable:
    """A builder `(config.model, rngs) -> cls(...)` passing the config's shared options."""
    return lambda cfg, rngs: cls(dropout=cfg.dropout, conv_impl=cfg.conv_impl,
                                 compute_dtype=cfg.compute_dtype, rngs=rngs, **kw)


MODELS: dict[str, Callable] = {
    "simple_cnn": simple_cnn,
    "nouri": nouri,
    "nouri1000": lambda cfg, rngs: nouri(cfg, rngs, hidden=1000),
    "resnet": _from_config(ResNetRegressor),
    "resnet_small": _from_config(ResNetRegressor, widths=(16, 32, 64, 128), hidden=128),
    "heatmap": _from_config(HeatmapRegressor),
    "heatmap_unet": _from_config(HeatmapUNet),
    "heatmap_unet_wide": _from_config(HeatmapUNet, widths=(24, 48, 96, 192)),
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
