"""Keypoint regression networks (Flax NNX), chosen by `config.model.name`, sized by config.

The model contract (what every model here does; what a new one must do):

- Input: images float32 (B, S, S, 1), NHWC, grey values in [0, 1]; S = `image_size` (96 for
  Kaggle's faces).
- Output: float32 (B, 2K) keypoints in *normalised* coordinates u = x / (S/2) - 1 (x in pixels,
  so the image spans [-1, 1]; `fkd_jax.geometry.keypoints` states the pixel convention), in Kaggle's
  interleaved order x0, y0, x1, y1, ...; K = `num_keypoints`, given by the data.
- Call: `model(images, *, train=False, dropout_key=None)`. Dropout (`nnx.Dropout`) draws from
  `dropout_key` at call time; `train=True` with dropout > 0 needs the key.
- The module carries parameters only (every `nnx.Variable` is an `nnx.Param`): no RNG state,
  no running statistics. `training.py` splits it into a static `GraphDef` and a params dict, so
  the training step is a pure function of arrays. This is why normalisation is GroupNorm, not
  BatchNorm: BatchNorm's running means are state updated by the forward pass, and its batch
  statistics make a prediction depend on the other images of the batch (GroupNorm works the
  same at batch 8 and 128, and at evaluation).
- Layers come from a `Layers` factory (compute dtype, convolution, pooling, initialisation
  keys in one place); it is passed to constructors and never stored, so models stay
  parameters only. Parameters are float32; `compute_dtype` only sets what convolutions and
  matrix multiplies compute in.

Sizes are config values, not model names (`--config.model.name=heatmap_unet
--config.model.widths="(24,48,96,192)"`). The size keys (`SIZE_KEYS`) are `widths` (conv
channels per stage), `hidden` (dense widths), `blocks` (residual blocks per stage) and
`heatmap_size` (side of the heatmaps, cells) and `margin` (pixels of padding around the crop
that heatmap_unet's heatmaps also cover, for landmarks that lie outside the crop, such as the
chin of iBUG's 68 in Kaggle's framing); None in the config means "this model's default".
A model declares which keys it takes and their defaults in its `ModelSpec`; setting any other
key is a `UserError`.

The registry of these networks, and how to add one, is `fkd_jax.models.registry`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from fkd_jax.errors import UserError
from fkd_jax.models import ops

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
CONV_IMPLS = ops.CONV_IMPLS  # see ops.get_conv
SIZE_KEYS = ("widths", "hidden", "blocks", "heatmap_size", "margin")


# --------------------------------------------------------------------------- layer factory

@dataclasses.dataclass(frozen=True)
class Layers:
    """Makes one model's layers with its compute dtype and convolution, drawing initial values
    from `rngs` in construction order (which therefore fixes a seed's initial parameters).

    Pass it to constructors; never store it in a module (it holds the RNG state).
    """

    dtype: Any
    conv_impl: str
    rngs: nnx.Rngs

    @classmethod
    def create(cls, compute_dtype: str = "float32", conv_impl: str = "auto", seed: int = 0
               ) -> "Layers":
        if compute_dtype not in COMPUTE_DTYPES:
            raise UserError(f"--config.model.compute_dtype={compute_dtype!r} must be one of "
                            f"{', '.join(COMPUTE_DTYPES)}")
        if conv_impl not in CONV_IMPLS:
            raise UserError(f"--config.model.conv_impl={conv_impl!r} must be one of "
                            f"{', '.join(CONV_IMPLS)}")
        return cls(COMPUTE_DTYPES[compute_dtype], conv_impl, nnx.Rngs(params=seed))

    @property
    def max_pool(self) -> Callable[[jax.Array], jax.Array]:
        """The 2x2 max-pool matching the convolution (`ops.get_max_pool`); a plain function."""
        return ops.get_max_pool(self.conv_impl)

    def conv(self, in_ch: int, out_ch: int, kernel: int, *, stride: int = 1,
             padding: str = "SAME", bias: bool = True) -> nnx.Conv:
        return nnx.Conv(in_ch, out_ch, (kernel, kernel), strides=stride, padding=padding,
                        use_bias=bias, dtype=self.dtype,
                        conv_general_dilated=ops.get_conv(self.conv_impl), rngs=self.rngs)

    def dense(self, in_features: int, out_features: int) -> nnx.Linear:
        return nnx.Linear(in_features, out_features, dtype=self.dtype, rngs=self.rngs)

    def group_norm(self, channels: int) -> "GroupNorm":
        """GroupNorm with up to 8 groups of at least 4 channels each."""
        return GroupNorm(channels, num_groups=max(1, min(8, channels // 4)),
                         dtype=self.dtype, rngs=self.rngs)


class GroupNorm(nnx.GroupNorm):
    """flax's GroupNorm (same parameters, same values) computed by `ops.group_norm`: the
    form that exports to a fast ONNX graph. NHWC input, statistics over H, W and the group."""

    def __call__(self, x: jax.Array, *, mask=None) -> jax.Array:
        if mask is not None:
            raise ValueError("GroupNorm here takes no mask")
        return ops.group_norm(x.astype(self.dtype or x.dtype), self.scale[...], self.bias[...],
                              self.num_groups, self.epsilon)


def _check_dropout_key(train: bool, rate: float, key) -> None:
    if train and rate > 0 and key is None:
        raise ValueError("dropout needs a dropout_key when train=True")


# --------------------------------------------------------------------------- conv-pool nets

def _dropout(layer: nnx.Dropout, x, train: bool, key):
    """Dropout while training; at inference not even called, so the traced graph holds no
    dropout at all (what converters such as jax2onnx expect)."""
    return layer(x, deterministic=False, rngs=key) if train else x


class ConvPoolNet(nnx.Module):
    """Conv(+ReLU) -> 2x2 max-pool blocks, then dense layers: the classic keypoint CNN.

    `convs` lists (features, kernel_size) per block; `hidden` the dense widths. 'VALID' padding
    follows Nouri's kfkd nets; 'SAME' the seed notebook's simple CNN.
    """

    def __init__(self, make: Layers, convs: tuple[tuple[int, int], ...], hidden: tuple[int, ...],
                 *, padding: str, num_keypoints: int, image_size: int, dropout: float = 0.0):
        self.convs = nnx.List()
        in_ch = 1
        for features, k in convs:
            self.convs.append(make.conv(in_ch, features, k, padding=padding))
            in_ch = features
        size = self.out_size(convs, padding, image_size)
        self.denses = nnx.List()
        in_f = size * size * in_ch
        for width in hidden:
            self.denses.append(make.dense(in_f, width))
            in_f = width
        self.head = make.dense(in_f, 2 * num_keypoints)
        self.dropout = nnx.Dropout(dropout)
        self.pool = make.max_pool
        self.compute_dtype = make.dtype

    @staticmethod
    def out_size(convs, padding: str, image_size: int) -> int:
        """Side of the last pooled feature map (pixels of the final grid)."""
        size = image_size
        for _, k in convs:
            size = (size - (k - 1 if padding == "VALID" else 0)) // 2
        return size

    def __call__(self, x, *, train: bool = False, dropout_key=None):
        _check_dropout_key(train, self.dropout.rate, dropout_key)
        x = x.astype(self.compute_dtype)
        for conv in self.convs:
            x = self.pool(jax.nn.relu(conv(x)))
        x = x.reshape(x.shape[0], -1)
        keys = (jax.random.split(dropout_key, len(self.denses)) if dropout_key is not None
                else [None] * len(self.denses))
        for dense, key in zip(self.denses, keys):
            x = _dropout(self.dropout, jax.nn.relu(dense(x)), train, key)
        return self.head(x).astype(jnp.float32)


def _check_conv_pool(kernels: Callable[[tuple], tuple], padding: str):
    def check(sizes, image_size: int, set_keys) -> None:
        convs = tuple(zip(sizes["widths"], kernels(sizes["widths"])))
        if ConvPoolNet.out_size(convs, padding, image_size) < 1:
            raise UserError(f"{_option('widths', sizes, set_keys)} has too many conv+pool "
                            f"blocks for {image_size}x{image_size} images")
    return check


def simple_cnn(make: Layers, *, widths, hidden, **kw) -> ConvPoolNet:
    """The seed notebook's CNN: one SAME 3x3 conv + 2x2 pool block per width, dense layers."""
    return ConvPoolNet(make, tuple((w, 3) for w in widths), hidden, padding="SAME", **kw)


NOURI_KERNELS = (3, 2, 2)


def nouri(make: Layers, *, widths, hidden, **kw) -> ConvPoolNet:
    """Nouri's kfkd net: VALID convs 3x3, 2x2, 2x2 (each + 2x2 max-pool), dense layers."""
    return ConvPoolNet(make, tuple(zip(widths, NOURI_KERNELS)), hidden, padding="VALID", **kw)


def _check_nouri(sizes, image_size: int, set_keys) -> None:
    if len(sizes["widths"]) != len(NOURI_KERNELS):
        raise UserError(f"{_option('widths', sizes, set_keys)} must have "
                        f"{len(NOURI_KERNELS)} entries for model nouri (kernels 3, 2, 2)")
    _check_conv_pool(lambda w: NOURI_KERNELS, "VALID")(sizes, image_size, set_keys)


# --------------------------------------------------------------------------- residual nets

class ResidualBlock(nnx.Module):
    """conv3x3-GN-ReLU-conv3x3-GN plus a (projected) skip."""

    def __init__(self, make: Layers, in_ch: int, out_ch: int, stride: int):
        self.conv1 = make.conv(in_ch, out_ch, 3, stride=stride, bias=False)
        self.conv2 = make.conv(out_ch, out_ch, 3, bias=False)
        self.norm1 = make.group_norm(out_ch)
        self.norm2 = make.group_norm(out_ch)
        self.proj = (make.conv(in_ch, out_ch, 1, stride=stride, bias=False)
                     if (stride != 1 or in_ch != out_ch) else None)

    def __call__(self, x):
        y = jax.nn.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        skip = x if self.proj is None else self.proj(x)
        return jax.nn.relu(y + skip)


class ResNetBackbone(nnx.Module):
    """Stem conv (stride 2: S -> S/2) and one stride-2 residual stage per width after the
    first; `blocks` residual blocks per stage."""

    def __init__(self, make: Layers, widths, blocks: int, image_size: int):
        self.stem = make.conv(1, widths[0], 3, stride=2)
        self.blocks = nnx.List()
        in_ch = widths[0]
        for i, w in enumerate(widths):
            for b in range(blocks):
                stride = 2 if (i > 0 and b == 0) else 1
                self.blocks.append(ResidualBlock(make, in_ch, w, stride))
                in_ch = w
        self.stage_sizes = stage_sizes(widths, image_size)  # 48, 24, ... for 96
        self.out_size = self.stage_sizes[-1]
        self.out_ch = in_ch
        self.blocks_per_stage = blocks

    def __call__(self, x):
        return self.stages(x)[-1]

    def stages(self, x) -> list[jax.Array]:
        """The feature map at the end of each stage, finest (S/2 x S/2) first."""
        x = jax.nn.relu(self.stem(x))
        outs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if (i + 1) % self.blocks_per_stage == 0:
                outs.append(x)
        return outs


def stage_sizes(widths, image_size: int) -> list[int]:
    """Side of each residual stage's feature map: S/2, S/4, ... (one per width)."""
    return [image_size // 2 ** (i + 1) for i in range(len(widths))]


def _check_backbone(sizes, image_size: int, set_keys) -> None:
    """Every stage must halve its input exactly (the decoder doubles back, heatmap cells
    must tile the image)."""
    n = len(sizes["widths"])
    if image_size % 2 ** n:
        most = (image_size & -image_size).bit_length() - 1  # powers of 2 dividing image_size
        raise UserError(f"{_option('widths', sizes, set_keys)} has {n} stages; "
                        f"{image_size}x{image_size} images allow at most {most} "
                        "(each stage halves the size)")


class ResNetRegressor(nnx.Module):
    """Small residual CNN; the final feature map (B, S/2^n, S/2^n, C) is flattened into a dense
    head, which keeps where features are (global average pooling would throw that away)."""

    def __init__(self, make: Layers, *, widths, blocks: int, hidden, num_keypoints: int,
                 image_size: int, dropout: float = 0.0):
        self.backbone = ResNetBackbone(make, widths, blocks, image_size)
        flat = self.backbone.out_size ** 2 * self.backbone.out_ch
        (width,) = hidden
        self.dense = make.dense(flat, width)
        self.head = make.dense(width, 2 * num_keypoints)
        self.dropout = nnx.Dropout(dropout)
        self.compute_dtype = make.dtype

    def __call__(self, x, *, train: bool = False, dropout_key=None):
        _check_dropout_key(train, self.dropout.rate, dropout_key)
        x = self.backbone(x.astype(self.compute_dtype))
        x = jax.nn.relu(self.dense(x.reshape(x.shape[0], -1)))
        x = _dropout(self.dropout, x, train, dropout_key)
        return self.head(x).astype(jnp.float32)


def _check_resnet(sizes, image_size: int, set_keys) -> None:
    _check_backbone(sizes, image_size, set_keys)
    if len(sizes["hidden"]) != 1:
        raise UserError(f"{_option('hidden', sizes, set_keys)} must have one entry for "
                        "model resnet (one dense layer before the head)")


# --------------------------------------------------------------------------- heatmap nets

def soft_argmax(logits):
    """Expected (x, y) of each heatmap's softmax, in normalised coordinates.

    logits (B, H, W, K) -> (B, K, 2). Cell (i, j) of an HxW map covers the image region whose
    centre is at normalised ((j + 0.5) / W * 2 - 1, (i + 0.5) / H * 2 - 1); the expectation is
    differentiable (integral regression), so the net is trained with the same coordinate loss.
    """
    return heatmap_moments(logits)[0]  # (jit drops the unused spread)


def heatmap_moments(logits):
    """Mean (B, K, 2) and spread (B, K) of each heatmap's softmax, in normalised coordinates.

    The spread is the RMS distance of the softmax's mass from its mean, sqrt(var_x + var_y):
    a sharp single peak gives about a cell's width, a flat or two-peaked map (a point the net
    cannot place) much more. The mean is exactly `soft_argmax`'s.
    """
    b, h, w, k = logits.shape
    probs = jax.nn.softmax(logits.reshape(b, h * w, k).astype(jnp.float32), axis=1)
    probs = probs.reshape(b, h, w, k)
    xs = (jnp.arange(w) + 0.5) / w * 2.0 - 1.0
    ys = (jnp.arange(h) + 0.5) / h * 2.0 - 1.0
    mx = jnp.einsum("bhwk,w->bk", probs, xs)
    my = jnp.einsum("bhwk,h->bk", probs, ys)
    ex2 = jnp.einsum("bhwk,w->bk", probs, xs * xs)
    ey2 = jnp.einsum("bhwk,h->bk", probs, ys * ys)
    var = jnp.maximum(ex2 - mx * mx, 0.0) + jnp.maximum(ey2 - my * my, 0.0)
    return jnp.stack([mx, my], axis=-1), jnp.sqrt(var)


def crop_moments(logits, image_size: int, margin: int = 0):
    """`heatmap_moments` of maps that cover the crop and `margin` pixels around it, in the
    crop's normalised coordinates: the padded square's, scaled by its side over the crop's
    ((S + 2m) / S, same centre). What a heatmap net predicts, and what training scores."""
    points, spread = heatmap_moments(logits)
    scale = (image_size + 2 * margin) / image_size
    return points * scale, spread * scale


class HeatmapRegressor(nnx.Module):
    """Residual backbone to an S/2^n map, a 1x1 conv to K heatmaps, soft-argmax to coordinates."""

    def __init__(self, make: Layers, *, widths, blocks: int, num_keypoints: int,
                 image_size: int, dropout: float = 0.0):
        del dropout  # rejected by the spec: no dense layer to drop from
        self.backbone = ResNetBackbone(make, widths, blocks, image_size)
        self.heatmaps = make.conv(self.backbone.out_ch, num_keypoints, 1)
        self.compute_dtype = make.dtype

    margin = 0  # heatmaps cover the crop exactly

    def heatmap_logits(self, x):
        """Logits (B, H, W, K) of the K heatmaps (what `__call__` soft-argmaxes)."""
        return self.heatmaps(self.backbone(x.astype(self.compute_dtype)))

    def moments(self, x):
        """Keypoints (B, K, 2) and spreads (B, K), normalised coordinates of the crop."""
        return crop_moments(self.heatmap_logits(x), x.shape[1], self.margin)

    def __call__(self, x, *, train: bool = False, dropout_key=None):
        return self.moments(x)[0].reshape(x.shape[0], -1)


def _upsample_2x(x):
    """Nearest-neighbour 2x upsampling of NHWC `x` (its gradient is a cheap 2x2 sum)."""
    b, h, w, c = x.shape
    return jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)


def top_down_layers(make: Layers, widths, finest: int) -> tuple[nnx.List, nnx.List, nnx.List]:
    """The layers of a top-down decoder from a backbone's coarsest stage back to stage
    `finest`, one step per stage between: lateral 1x1 convs, smoothing 3x3 convs, norms."""
    laterals, smooths, norms = nnx.List(), nnx.List(), nnx.List()
    for coarse in range(len(widths) - 1, finest, -1):
        w_in, w_out = widths[coarse], widths[coarse - 1]
        laterals.append(make.conv(w_in, w_out, 1, bias=False))
        smooths.append(make.conv(w_out, w_out, 3, bias=False))
        norms.append(make.group_norm(w_out))
    return laterals, smooths, norms


def top_down(feats: list, laterals, smooths, norms):
    """The decoder of `top_down_layers` on a backbone's stage outputs (finest first): each
    step upsamples, adds the next-finer stage and smooths (conv3x3-GN-ReLU)."""
    y = feats[-1]
    for lateral, smooth, norm, skip in zip(laterals, smooths, norms, feats[-2::-1]):
        y = jax.nn.relu(norm(smooth(_upsample_2x(lateral(y)) + skip)))
    return y


class HeatmapUNet(nnx.Module):
    """Residual encoder down to S/2^n for context, a light top-down decoder (upsample, add the
    encoder's skip, conv3x3-GN-ReLU) back up to `heatmap_size`, K heatmaps, soft-argmax.

    Coordinates through heatmaps keep the net translation-equivariant, which is what lets it
    learn from a few thousand faces; the decoder puts the coarse context onto a finer grid.
    A soft-argmax cannot leave its map, so with `margin` m > 0 the crop is padded with m black
    pixels a side first and the maps cover (-m, S + m): iBUG's chin lies ~8 px below a
    Kaggle-framed 96-pixel crop in 93% of the training faces, out of reach of maps that end
    at the crop's edge. `heatmap_size` then counts cells of the padded square.
    """

    def __init__(self, make: Layers, *, widths, blocks: int, heatmap_size: int,
                 num_keypoints: int, image_size: int, margin: int = 0, dropout: float = 0.0):
        del dropout  # rejected by the spec: no dense layer to drop from
        self.margin = margin
        self.backbone = ResNetBackbone(make, widths, blocks, image_size + 2 * margin)
        sizes = self.backbone.stage_sizes
        if heatmap_size not in sizes:
            raise ValueError(f"heatmap_size must be one of {sizes}, got {heatmap_size}")
        self.laterals, self.smooths, self.norms = top_down_layers(make, widths,
                                                                  sizes.index(heatmap_size))
        self.heatmaps = make.conv(widths[sizes.index(heatmap_size)], num_keypoints, 1)
        self.compute_dtype = make.dtype

    def heatmap_logits(self, x):
        """Logits (B, H, W, K) of the K heatmaps (what `__call__` soft-argmaxes), over the
        crop and its margin."""
        m = self.margin
        if m:
            x = jnp.pad(x, ((0, 0), (m, m), (m, m), (0, 0)))
        feats = self.backbone.stages(x.astype(self.compute_dtype))
        return self.heatmaps(top_down(feats, self.laterals, self.smooths, self.norms))

    def moments(self, x):
        """Keypoints (B, K, 2) and spreads (B, K), normalised coordinates of the crop."""
        return crop_moments(self.heatmap_logits(x), x.shape[1], self.margin)

    def __call__(self, x, *, train: bool = False, dropout_key=None):
        return self.moments(x)[0].reshape(x.shape[0], -1)


def _check_heatmap_unet(sizes, image_size: int, set_keys) -> None:
    image_size += 2 * sizes["margin"]  # the padded square is what the net sees
    _check_backbone(sizes, image_size, set_keys)
    levels = stage_sizes(sizes["widths"], image_size)
    if sizes["heatmap_size"] not in levels:
        raise UserError(f"{_option('heatmap_size', sizes, set_keys)} must be one of "
                        f"{', '.join(map(str, levels))} for these widths "
                        f"({_option('widths', sizes, set_keys)})")


# --------------------------------------------------------------------------- size options

def _show(value) -> str:
    """A size as it is written on the command line: 24, (16,32) or (128,)."""
    if isinstance(value, tuple):
        return "(" + ",".join(map(str, value)) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def _option(key: str, sizes: Mapping[str, Any], set_keys) -> str:
    """How to name a size in an error: as the user set it, or as the model's default."""
    return (f"--config.model.{key}={_show(sizes[key])}"
            + ("" if key in set_keys else " (the default)"))
