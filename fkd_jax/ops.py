"""Low-level array ops whose formulation matters for speed (convolution, pooling).

Models pick a convolution implementation by name (`conv_impl` in the config) and always pool
through `max_pool_2x2`, so a faster formulation can be swapped in here without touching models.
All inputs are NHWC; kernels HWIO.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("xla", "im2col", "auto")

# NHWC / HWIO / NHWC, as `nnx.Conv` passes them (lax's canonical form).
_NHWC_HWIO = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def _pads(padding, in_hw: Sequence[int], k_hw: Sequence[int], strides: Sequence[int]):
    if isinstance(padding, str):
        return lax.padtype_to_pads(in_hw, k_hw, strides, padding)
    return [tuple(p) for p in padding]


def _patches(x: jax.Array, kh: int, kw: int, sh: int, sw: int) -> jax.Array:
    """(N, OH, OW, kh*kw*C) patches of padded NHWC `x`, ordered (i, j, c) like an HWIO kernel.

    kh*kw strided slices concatenated on channels: autodiff turns them into pads and adds,
    which XLA's CPU backend fuses well (unlike its convolution gradients).
    """
    n, h, w, c = x.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    cols = [lax.slice(x, (0, i, j, 0), (n, i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, c),
                      (1, sh, sw, 1))
            for i in range(kh) for j in range(kw)]
    return cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)


def conv_im2col(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                precision=None, preferred_element_type=None, out_sharding=None):
    """`lax.conv_general_dilated` for 2-D NHWC/HWIO convolutions as patches @ kernel.

    Same signature and result as lax; arguments outside the fast path (dilation, groups,
    other layouts or ranks, a sharded output) are passed to `lax.conv_general_dilated`.
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
    kh, kw, cin, cout = rhs.shape
    sh, sw = window_strides
    pads = _pads(padding, lhs.shape[1:3], (kh, kw), (sh, sw))
    if any(p != (0, 0) for p in pads):
        zero = jnp.zeros((), lhs.dtype)
        lhs = lax.pad(lhs, zero, ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
    patches = _patches(lhs, kh, kw, sh, sw)
    return lax.dot_general(patches, rhs.reshape(kh * kw * cin, cout),
                           (((3,), (0,)), ((), ())), precision=precision,
                           preferred_element_type=preferred_element_type)


def get_conv(impl: str) -> Callable:
    """A function with `lax.conv_general_dilated`'s signature, as `nnx.Conv` expects.

    "xla": lax itself. "im2col": `conv_im2col`. "auto": im2col on CPU, lax elsewhere
    (GPU/TPU convolutions are fast natively), decided by `jax.default_backend()` at trace time.
    """
    if impl == "xla":
        return lax.conv_general_dilated
    if impl == "im2col":
        return conv_im2col
    if impl == "auto":
        def conv_auto(*args, **kwargs):
            fn = conv_im2col if jax.default_backend() == "cpu" else lax.conv_general_dilated
            return fn(*args, **kwargs)
        return conv_auto
    raise ValueError(f"unknown conv_impl {impl!r}; expected one of {CONV_IMPLS}")


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2/stride-2 max-pool of NHWC `x` (odd trailing rows/columns dropped, as 'VALID' does).

    Written as reshape + max: its gradient is a cheap compare-and-select, unlike
    `lax.reduce_window`'s select-and-scatter, which XLA's CPU backend lowers slowly.
    """
    n, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    x = x[:, : 2 * h2, : 2 * w2, :].reshape(n, h2, 2, w2, 2, c)
    return jnp.max(x, axis=(2, 4))
