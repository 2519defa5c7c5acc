"""Low-level array ops whose formulation matters for speed (convolution, pooling).

Models pick an implementation by name (`conv_impl` in the config) through `get_conv` and
`get_max_pool`, so a faster formulation can be swapped in here without touching models.
All inputs are NHWC; kernels HWIO.

- "im2col": `conv_im2col` and `max_pool_2x2`, matmuls and selects with hand-written VJPs (fast
  on XLA:CPU);
- "xla": `lax.conv_general_dilated` and `lax.reduce_window` max (what GPUs/TPUs run well);
- "auto": "im2col" on CPU, "xla" on every other platform, chosen with
  `lax.platform_dependent` when the function is *lowered*, not when it is traced: a function
  traced on a CPU host and exported for GPU/TPU (`jax.export`) gets XLA's convolutions there;
- "portable": XLA's convolutions with `max_pool_2x2`'s reshape-and-max pooling: plain Conv,
  Reshape and ReduceMax nodes, what the ONNX export converts (fkd_jax.inference.onnx_model).

Why hand-written gradients: XLA's CPU backend lowers convolution gradients and
`reduce_window`'s select-and-scatter slowly, and even the autodiff of an im2col matmul picks
poor matmul shapes (a weight gradient with a 270k-long contraction runs on one core). Here
every gradient is a matmul of a shape the CPU matmul library parallelises, or an elementwise
select that fuses. docs/experiments/2026-11-24-cpu-training-speed.md records what each choice bought.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

CONV_IMPLS = ("xla", "im2col", "auto", "portable")

# NHWC / HWIO / NHWC, as `nnx.Conv` passes them (lax's canonical form).
_NHWC_HWIO = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
# The weight gradient's long contraction (batch x output pixels) is cut into this many
# independent matmuls, summed after: one long contraction runs on a single core.
_DW_CHUNKS = 16


def _patches(x: jax.Array, kh: int, kw: int, sh: int, sw: int) -> jax.Array:
    """(N, OH, OW, kh*kw*C) patches of (already padded) NHWC `x`, ordered (i, j, c) like HWIO.

    kh*kw strided slices concatenated on channels: cheaper on CPU than
    `lax.conv_general_dilated_patches`.
    """
    n, h, w, c = x.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    cols = [lax.slice(x, (0, i, j, 0), (n, i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, c),
                      (1, sh, sw, 1))
            for i in range(kh) for j in range(kw)]
    return cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)


def _col2im(dp: jax.Array, x_shape: Sequence[int], kh: int, kw: int, sh: int, sw: int):
    """Adjoint of `_patches`: scatter-add (N, OH, OW, kh*kw*C) patch gradients back to x_shape."""
    n, h, w, c = x_shape
    oh, ow = dp.shape[1:3]
    span_h, span_w = (oh - 1) * sh + 1, (ow - 1) * sw + 1
    dx = None
    for i in range(kh):
        for j in range(kw):
            k = (i * kw + j) * c
            part = lax.pad(dp[..., k:k + c], jnp.zeros((), dp.dtype),
                           ((0, 0, 0), (i, h - i - span_h, sh - 1), (j, w - j - span_w, sw - 1),
                            (0, 0, 0)))
            dx = part if dx is None else dx + part
    return dx


def _matmul(a, b, precision, preferred_element_type):
    """a (..., K) @ b (K, N)."""
    return lax.dot_general(a, b, (((a.ndim - 1,), (0,)), ((), ())), precision=precision,
                           preferred_element_type=preferred_element_type)


@lru_cache(maxsize=None)
def _conv_valid_fn(in_hw: tuple[int, int], strides: tuple[int, int], precision,
                   out_dtype: str) -> Callable:
    """VALID convolution of padded x (N, *in_hw, C) with w and its VJP, per static setting:
    lax's convolution when nothing is differentiated, patches @ kernel under autodiff."""

    def forward(x, w):
        kh, kw, cin, cout = w.shape
        p = _patches(x, kh, kw, *strides)
        return _matmul(p, w.reshape(kh * kw * cin, cout), precision, out_dtype), p

    @jax.custom_vjp
    def conv(x, w):
        # Not differentiated (prediction, validation, exported models): XLA's own convolution,
        # which XLA:CPU runs faster forward than the patches matmul; only the gradient needs
        # the patches (docs/experiments/2026-12-01-pytorch-comparison.md).
        return lax.conv_general_dilated(x, w, strides, "VALID", dimension_numbers=_NHWC_HWIO,
                                        precision=precision, preferred_element_type=out_dtype)

    def fwd(x, w):
        y, p = forward(x, w)
        return y, (p, w)

    def bwd(res, dy):
        """dW = patches^T dy as chunked matmuls; dx = col2im(dy @ W^T)."""
        p, w = res
        kh, kw, cin, cout = w.shape
        n, k = p.shape[0], p.shape[-1]
        chunks = math.gcd(n, _DW_CHUNKS)
        dw = lax.dot_general(p.reshape(chunks, -1, k),
                             dy.reshape(chunks, -1, cout).astype(p.dtype),
                             (((1,), (1,)), ((0,), (0,))), precision=precision,
                             preferred_element_type=jnp.float32).sum(0)
        dp = lax.dot_general(dy.astype(w.dtype), w.reshape(k, cout), (((3,), (1,)), ((), ())),
                             precision=precision, preferred_element_type=jnp.float32)
        dx = _col2im(dp, (n, *in_hw, cin), kh, kw, *strides)
        return dx.astype(p.dtype), dw.reshape(w.shape).astype(w.dtype)

    conv.defvjp(fwd, bwd)
    return conv


def conv_im2col(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                precision=None, preferred_element_type=None, out_sharding=None):
    """`lax.conv_general_dilated` for 2-D NHWC/HWIO convolutions as patches @ kernel.

    Same signature and result as lax (the forward is one matmul on im2col patches, the
    gradients are matmuls too, see `_conv_valid_fn`). Arguments outside this path (dilation,
    groups, other layouts or ranks, a sharded output) go to `lax.conv_general_dilated`.
    """
    fast = (lhs.ndim == 4 and rhs.ndim == 4 and feature_group_count == 1
            and batch_group_count == 1 and out_sharding is None
            and all(d == 1 for d in (lhs_dilation or (1, 1)))
            and all(d == 1 for d in (rhs_dilation or (1, 1)))
            and dimension_numbers is not None
            and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
            == _NHWC_HWIO)
    if not fast:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count, batch_group_count=batch_group_count,
            precision=precision, preferred_element_type=preferred_element_type,
            out_sharding=out_sharding)
    kh, kw = rhs.shape[:2]
    strides = tuple(int(s) for s in window_strides)
    if isinstance(padding, str):
        pads = lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), strides, padding)
    else:
        pads = [tuple(int(v) for v in p) for p in padding]
    if any(p != (0, 0) for p in pads):
        lhs = lax.pad(lhs, jnp.zeros((), lhs.dtype),
                      ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
    if lhs.shape[1] < kh or lhs.shape[2] < kw:
        raise ValueError(f"conv_im2col: kernel {rhs.shape[:2]} larger than the padded input "
                         f"{lhs.shape[1:3]}")
    if preferred_element_type is None:
        preferred_element_type = jnp.result_type(lhs.dtype, rhs.dtype)
    conv = _conv_valid_fn(lhs.shape[1:3], strides, _hashable(precision), jnp.dtype(preferred_element_type).name)
    return conv(lhs, rhs)


def _hashable(precision):
    return tuple(precision) if isinstance(precision, list) else precision


def conv_auto(lhs, rhs, *args, **kwargs):
    """`conv_im2col` when lowered for CPU, `lax.conv_general_dilated` for any other platform.

    Same signature as lax. Both branches are traced; lowering keeps only the one for the
    target platform (a multi-platform export keeps both behind a platform switch).
    """
    return lax.platform_dependent(
        lhs, rhs,
        cpu=lambda x, w: conv_im2col(x, w, *args, **kwargs),
        default=lambda x, w: lax.conv_general_dilated(x, w, *args, **kwargs))


def get_conv(impl: str) -> Callable:
    """A function with `lax.conv_general_dilated`'s signature, as `nnx.Conv` expects.

    "xla" and "portable": lax itself. "im2col": `conv_im2col`. "auto": `conv_auto` (per
    lowering platform).
    """
    convs = {"xla": lax.conv_general_dilated, "im2col": conv_im2col, "auto": conv_auto,
             "portable": lax.conv_general_dilated}
    if impl not in convs:
        raise ValueError(f"unknown conv_impl {impl!r}; expected one of {CONV_IMPLS}")
    return convs[impl]


def _windows(x: jax.Array) -> jax.Array:
    """Even-sized NHWC `x` as (N, H/2, 2, W/2, 2, C) 2x2 windows (a free reshape)."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c)


@jax.custom_vjp
def _pool_even(x):
    return jnp.max(_windows(x), axis=(2, 4))


def _pool_fwd(x):
    y = jnp.max(_windows(x), axis=(2, 4))
    xw = _windows(x)
    a, b, c = xw[:, :, 0, :, 0], xw[:, :, 0, :, 1], xw[:, :, 1, :, 0]
    # Row-major index of the first maximum in each window, as reduce_window/torch choose it.
    first = jnp.where(a == y, 0, jnp.where(b == y, 1, jnp.where(c == y, 2, 3)))
    return y, first.astype(jnp.int8)


def _pool_bwd(first, dy):
    """The whole gradient goes to the first maximum: one elementwise select, which fuses."""
    n, h2, w2, c = dy.shape
    pos = (2 * lax.broadcasted_iota(jnp.int8, (1, 1, 2, 1, 2, 1), 2)
           + lax.broadcasted_iota(jnp.int8, (1, 1, 2, 1, 2, 1), 4))
    dx = jnp.where(first[:, :, None, :, None, :] == pos, dy[:, :, None, :, None, :],
                   jnp.zeros((), dy.dtype))
    return (dx.reshape(n, 2 * h2, 2 * w2, c),)


_pool_even.defvjp(_pool_fwd, _pool_bwd)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2/stride-2 max-pool of NHWC `x` (odd trailing rows/columns dropped, as 'VALID' does).

    Forward: reshape + max (no `reduce_window`). Backward: a custom VJP that saves only the
    int8 position of each window's first maximum (the subgradient `reduce_window` and torch
    pick) and routes the gradient there with one select. Autodiff of the max instead saves a
    float mask the size of the input and splits ties, and XLA's CPU backend fuses it poorly.
    """
    n, h, w, c = x.shape
    return _pool_even(x[:, : 2 * (h // 2), : 2 * (w // 2), :])


def max_pool_2x2_xla(x: jax.Array) -> jax.Array:
    """2x2/stride-2 max-pool of NHWC `x` by `lax.reduce_window` (XLA's own pooling; its
    gradient is select-and-scatter, fast on GPU/TPU, slow on XLA:CPU). Same values and
    gradients as `max_pool_2x2`, odd trailing rows/columns dropped too."""
    # A concrete (numpy) -inf lets lax recognise the max monoid (reduce_window_max); a traced
    # one (jnp.array inside a platform_dependent branch) gives the generic reduce_window, which
    # jax.grad failed to linearise there.
    return lax.reduce_window(x, np.array(-np.inf, x.dtype), lax.max, (1, 2, 2, 1),
                             (1, 2, 2, 1), "VALID")


def max_pool_2x2_auto(x: jax.Array) -> jax.Array:
    """`max_pool_2x2` when lowered for CPU, `max_pool_2x2_xla` for any other platform."""
    return lax.platform_dependent(x, cpu=max_pool_2x2, default=max_pool_2x2_xla)


def get_max_pool(impl: str) -> Callable[[jax.Array], jax.Array]:
    """The 2x2 max-pool that goes with convolution implementation `impl` (see `get_conv`)."""
    pools = {"xla": max_pool_2x2_xla, "im2col": max_pool_2x2, "auto": max_pool_2x2_auto,
             "portable": max_pool_2x2}
    if impl not in pools:
        raise ValueError(f"unknown conv_impl {impl!r}; expected one of {CONV_IMPLS}")
    return pools[impl]


def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int,
               epsilon: float) -> jax.Array:
    """GroupNorm of NHWC `x` as one scale and shift per (image, channel): `x * a + b`.

    The same values as `flax.nnx.GroupNorm` (its fast variance, E[x^2] - E[x]^2), written so
    that only the two means and the final multiply-add touch the whole tensor. Exported to
    ONNX as flax's layer it became subtract, divide, multiply and add over every activation:
    over half of onnxruntime's time on the CPU; this form ran the keypoint U-Net 1.6x faster.
    Statistics in float32 at least; the result in `x`'s dtype. The groups are a 5th axis,
    (N, H, W, G, C/G), kept in the means: no reshape needs the (symbolic) batch size.
    """
    c = x.shape[-1]
    grouped = x.astype(jnp.promote_types(x.dtype, jnp.float32)).reshape(
        x.shape[:-1] + (groups, c // groups))
    axes = (*range(1, x.ndim - 1), x.ndim)  # all but the batch and the group
    mean = jnp.mean(grouped, axis=axes, keepdims=True)  # (N, 1, 1, G, 1)
    var = jnp.maximum(jnp.mean(jnp.square(grouped), axis=axes, keepdims=True)
                      - jnp.square(mean), 0.0)
    a = lax.rsqrt(var + epsilon) * scale.reshape(groups, c // groups)  # (N, 1, 1, G, C/G)
    b = bias.reshape(groups, c // groups) - mean * a
    return (grouped * a + b).reshape(x.shape).astype(x.dtype)
