"""fkd_jax.models.ops: the fast convolution, pooling and GroupNorm compute the same functions as
lax's and flax's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from fkd_jax.models import ops
from conftest import normal, uniform

DN = ("NHWC", "HWIO", "NHWC")
TOL = dict(rtol=2e-5, atol=2e-5)

# (input NHWC, kernel HWIO, strides, padding)
CASES = [
    ((2, 11, 11, 1), (3, 3, 1, 4), (1, 1), "VALID"),  # Nouri's first layer, small
    ((3, 8, 7, 3), (2, 2, 3, 5), (1, 1), "VALID"),
    ((2, 8, 7, 3), (3, 3, 3, 4), (1, 1), "SAME"),
    ((2, 9, 10, 2), (3, 2, 2, 3), (2, 2), "SAME"),
    ((2, 9, 8, 2), (3, 3, 2, 3), (2, 1), "VALID"),
    ((2, 7, 7, 3), (3, 3, 3, 2), (2, 3), ((1, 0), (2, 1))),  # explicit, asymmetric
    ((1, 6, 6, 4), (2, 2, 4, 2), (1, 1), ((0, 2), (1, 1))),
    ((2, 5, 5, 3), (1, 1, 3, 6), (1, 1), "VALID"),
]


def _conv_loss(conv, x, w, strides, padding, cotangent):
    y = conv(x, w, strides, padding, dimension_numbers=lax.conv_dimension_numbers(
        x.shape, w.shape, DN))
    return jnp.sum(y * cotangent), y


@pytest.mark.parametrize("x_shape,w_shape,strides,padding", CASES)
def test_conv_im2col_matches_lax_values_and_gradients(x_shape, w_shape, strides, padding):
    seed = sum(x_shape) + sum(w_shape)
    x, w = normal(seed, x_shape), normal(seed + 1, w_shape)
    y_ref = lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=DN)
    cot = normal(seed + 2, y_ref.shape)

    results = {}
    for name, conv in (("lax", lax.conv_general_dilated), ("im2col", ops.conv_im2col)):
        grad_fn = jax.jit(jax.grad(_conv_loss, argnums=(1, 2), has_aux=True),
                          static_argnums=(0, 3, 4))
        (dx, dw), y = grad_fn(conv, x, w, strides, padding, cot)
        results[name] = (y, dx, dw)
    for ref, got, what in zip(results["lax"], results["im2col"], ("output", "d/dx", "d/dw")):
        assert got.shape == ref.shape, what
        np.testing.assert_allclose(got, ref, **TOL, err_msg=what)


def test_nnx_conv_with_im2col_matches_default_conv():
    """The way models use it: nnx.Conv(conv_general_dilated=ops.get_conv(...)), bias included."""
    x = uniform(0, (4, 12, 12, 2))

    def build(impl):
        return nnx.Conv(2, 6, (2, 2), padding="VALID", rngs=nnx.Rngs(params=1),
                        conv_general_dilated=ops.get_conv(impl))

    def loss(model, x):
        return jnp.sum(jax.nn.relu(model(x)) ** 2)

    ref, fast = build("xla"), build("im2col")
    np.testing.assert_allclose(fast(x), ref(x), **TOL)
    g_ref, g_fast = nnx.grad(loss)(ref, x), nnx.grad(loss)(fast, x)
    for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_fast)):
        np.testing.assert_allclose(b, a, **TOL)


def test_conv_im2col_keeps_low_precision_dtypes():
    x = jnp.asarray(normal(1, (2, 6, 6, 3)), jnp.bfloat16)
    w = jnp.asarray(normal(2, (2, 2, 3, 4)), jnp.bfloat16)
    ref = lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=DN)
    got = ops.conv_im2col(x, w, (1, 1), "VALID", dimension_numbers=DN)
    assert got.dtype == ref.dtype == jnp.bfloat16
    np.testing.assert_allclose(got.astype(np.float32), ref.astype(np.float32), rtol=2e-2, atol=5e-2)
    dx, dw = jax.grad(lambda x, w: ops.conv_im2col(
        x, w, (1, 1), "VALID", dimension_numbers=DN).astype(jnp.float32).sum(), (0, 1))(x, w)
    assert (dx.dtype, dw.dtype) == (jnp.bfloat16, jnp.bfloat16)


def test_conv_im2col_falls_back_to_lax_for_dilation_and_groups():
    x = normal(3, (2, 9, 9, 4))
    w = normal(4, (3, 3, 2, 4))
    kwargs = dict(rhs_dilation=(2, 2), dimension_numbers=DN, feature_group_count=2)
    ref = lax.conv_general_dilated(x, w, (1, 1), "SAME", **kwargs)
    np.testing.assert_allclose(ops.conv_im2col(x, w, (1, 1), "SAME", **kwargs), ref, **TOL)


def test_get_conv_and_get_max_pool_names():
    assert ops.get_conv("xla") is lax.conv_general_dilated
    assert ops.get_conv("im2col") is ops.conv_im2col
    assert ops.get_conv("auto") is ops.conv_auto
    assert ops.get_max_pool("xla") is ops.max_pool_2x2_xla
    assert ops.get_max_pool("im2col") is ops.max_pool_2x2
    assert ops.get_max_pool("auto") is ops.max_pool_2x2_auto
    for get in (ops.get_conv, ops.get_max_pool):
        with pytest.raises(ValueError, match="conv_impl"):
            get("winograd")


@pytest.mark.parametrize("x_shape,w_shape,strides,padding", CASES[2:4])
def test_conv_auto_matches_lax_values_and_gradients_under_jit(x_shape, w_shape, strides, padding):
    """"auto" is a platform switch; on this CPU it runs im2col, jitted and differentiated."""
    x, w = normal(7, x_shape), normal(8, w_shape)
    cot = normal(9, lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=DN).shape)
    grad_fn = jax.jit(jax.grad(_conv_loss, argnums=(1, 2), has_aux=True), static_argnums=(0, 3, 4))
    (dx, dw), y = grad_fn(ops.conv_auto, x, w, strides, padding, cot)
    (dx_ref, dw_ref), y_ref = grad_fn(lax.conv_general_dilated, x, w, strides, padding, cot)
    for got, ref in ((y, y_ref), (dx, dx_ref), (dw, dw_ref)):
        np.testing.assert_allclose(got, ref, **TOL)


def _reduce_window_pool(x):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


@pytest.mark.parametrize("shape", [(2, 8, 6, 3), (1, 7, 9, 2)])  # odd sizes drop the last row/col
def test_max_pool_matches_reduce_window_without_ties(shape):
    x = normal(5, shape)  # continuous: no ties
    cot = normal(6, (shape[0], shape[1] // 2, shape[2] // 2, shape[3]))
    for fn in (ops.max_pool_2x2, _reduce_window_pool):
        assert fn(x).shape == cot.shape
    np.testing.assert_array_equal(ops.max_pool_2x2(x), _reduce_window_pool(x))
    grad = lambda f: jax.jit(jax.grad(lambda x: jnp.sum(f(x) * cot)))(x)  # noqa: E731
    np.testing.assert_array_equal(grad(ops.max_pool_2x2), grad(_reduce_window_pool))


def test_max_pool_gradient_goes_to_first_maximum_on_ties():
    """Ties (flat image regions, ReLU zeros) must not multiply the gradient."""
    x = jnp.array([[1.0, 1.0, 0.0, 2.0], [1.0, 1.0, 2.0, 2.0]])[None, :, :, None]
    g = jax.grad(lambda x: ops.max_pool_2x2(x).sum())(x)[0, :, :, 0]
    np.testing.assert_array_equal(g, [[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(g, jax.grad(lambda x: _reduce_window_pool(x).sum())(x)[0, :, :, 0])


@pytest.mark.parametrize("pool", [ops.max_pool_2x2_xla, ops.max_pool_2x2_auto])
def test_xla_and_auto_pools_match_the_custom_pool_with_ties_under_jit(pool):
    """Same values and the same first-maximum gradient as `max_pool_2x2`, odd sizes included.
    (Jitted: the platform switch is differentiated through a cond, as training does.)"""
    x = jnp.round(jnp.asarray(normal(8, (2, 7, 9, 3))) * 2) / 2  # many ties
    x = x.at[0, :4, :4, 0].set(0.0)
    cot = normal(9, (2, 3, 4, 3))
    grad = lambda f: jax.jit(jax.grad(lambda x: jnp.sum(f(x) * cot)))(x)  # noqa: E731
    np.testing.assert_array_equal(jax.jit(pool)(x), ops.max_pool_2x2(x))
    np.testing.assert_array_equal(grad(pool), grad(ops.max_pool_2x2))


def test_xla_pool_keeps_bfloat16():
    x = jnp.asarray(normal(10, (1, 4, 4, 2)), jnp.bfloat16)
    y = ops.max_pool_2x2_xla(x)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(y, ops.max_pool_2x2(x))


@pytest.mark.parametrize("channels,groups,shape", [(16, 4, (3, 12, 10)), (8, 2, (2, 5, 5)),
                                                   (48, 8, (1, 3, 3)), (4, 1, (2, 4, 6))])
def test_group_norm_matches_flax_values_and_gradients(channels, groups, shape):
    from fkd_jax.models.networks import GroupNorm

    ref = nnx.GroupNorm(channels, num_groups=groups, rngs=nnx.Rngs(0))
    mine = GroupNorm(channels, num_groups=groups, rngs=nnx.Rngs(0))
    for layer in (ref, mine):  # away from the initial ones and zeros
        layer.scale[...] = normal(1, (channels,))
        layer.bias[...] = normal(2, (channels,))
    x = 3.0 * normal(3, (shape[0], *shape[1:], channels)) + 1.5  # NHWC, mean far from 0
    cot = normal(4, x.shape)
    np.testing.assert_allclose(mine(x), ref(x), **TOL)
    grad_ref = jax.grad(lambda v: jnp.sum(ref(v) * cot))(x)
    grad_mine = jax.grad(lambda v: jnp.sum(mine(v) * cot))(x)
    np.testing.assert_allclose(grad_mine, grad_ref, **TOL)


def test_group_norm_keeps_bfloat16_and_computes_statistics_in_float32():
    x = (100.0 + normal(5, (2, 4, 4, 8))).astype(jnp.bfloat16)  # var 1 on a mean of 100
    y = ops.group_norm(x, jnp.ones(8), jnp.zeros(8), 2, 1e-6)
    assert y.dtype == jnp.bfloat16
    ref = ops.group_norm(x.astype(jnp.float32), jnp.ones(8), jnp.zeros(8), 2, 1e-6)
    np.testing.assert_allclose(np.asarray(y, np.float32), ref, atol=0.05)
    assert 0.5 < float(jnp.std(ref)) < 1.5
