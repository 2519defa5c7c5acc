"""conv_impl="auto" is chosen per platform when a function is *lowered*, not when it is traced.

`jax.export` lowers for platforms this machine does not have (no device needed): the CPU
lowering of the training epoch must carry the im2col matmuls and the custom max-pool (no
`stablehlo.convolution`, no `reduce_window`), the CUDA and TPU lowerings XLA's own convolution
and pooling. A forward that is not differentiated convolves with XLA's own convolution on
every platform (faster forward on XLA:CPU too) and keeps the custom max-pool on CPU; one
multi-platform artefact must run on CPU exactly as the model does when called directly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import default
from fkd_jax import models
from fkd_jax.training import steps
from conftest import uniform

PLATFORMS = ("cpu", "cuda", "tpu")
# Tiny models: a conv-pool net (convolutions, max-pools, dropout) and the heatmap U-Net
# (strided convolutions, GroupNorm, upsampling, soft-argmax).
TINY = {"simple_cnn": {"widths": (4, 8), "hidden": (8,), "dropout": 0.1},
        "heatmap_unet": {"widths": (4, 8, 8), "heatmap_size": 24}}
# XLA's convolution, its max-pool and the max-pool's gradient.
XLA_OPS = ("stablehlo.convolution", "stablehlo.reduce_window", "stablehlo.select_and_scatter")


def _model(name: str):
    cfg = default.get_config().model
    cfg.name = name
    for key, value in TINY[name].items():
        cfg[key] = value
    return models.create_model(cfg, 15, 0)


def _forward(name: str):
    """A jitted images -> (B, 30) forward, parameters folded in (as fkd_jax.inference.exported does)."""
    model = _model(name)
    return jax.jit(lambda x: model(x))


def _images(n: int = 2):
    return uniform(0, (n, 96, 96, 1))


def _lowered_ops(fn, args, platforms) -> dict[str, bool]:
    text = jax.export.export(fn, platforms=platforms)(*args).mlir_module()
    return {op: op in text for op in XLA_OPS + ("stablehlo.dot_general",)}


@pytest.mark.parametrize("name", sorted(TINY))
def test_forward_lowers_for_each_platform_with_its_own_convolution(name):
    fn = _forward(name)
    x = jax.ShapeDtypeStruct((2, 96, 96, 1), jnp.float32)
    for platform in PLATFORMS:
        found = _lowered_ops(fn, (x,), (platform,))
        uses_xla = platform != "cpu"
        assert found["stablehlo.convolution"], (platform, found)
        if name == "simple_cnn":  # the only one with max-pools
            assert found["stablehlo.reduce_window"] == uses_xla, (platform, found)
        assert found["stablehlo.dot_general"]  # the soft-argmax or the dense layers


def test_training_epoch_lowers_for_each_platform_with_its_own_convolution():
    """`steps.make_train_epoch` (the scan train.py runs) for a tiny model with dropout:
    forward and gradients use im2col and the custom pool on CPU, XLA's ops elsewhere."""
    cfg = default.get_config()
    cfg.train.batch_size = 4
    tx = steps.make_optimizer(cfg.train, 2)
    graphdef, state = nnx.split(_model("simple_cnn"), nnx.Param)
    params = nnx.to_pure_dict(state)
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
    epoch = steps.make_train_epoch(graphdef, tx, batch_size=4, seed=0)
    data = {"images": _images(8),
            "keypoints": jnp.full((8, 30), 48.0, jnp.float32),
            "mask": jnp.ones((8, 30), bool)}
    args = (state, data, jax.random.key(1))
    for platform in PLATFORMS:
        found = _lowered_ops(epoch, args, (platform,))
        uses_xla = platform != "cpu"
        for op in XLA_OPS:
            assert found[op] == uses_xla, (platform, op)
    assert _lowered_ops(epoch, args, PLATFORMS)["stablehlo.convolution"]


@pytest.mark.parametrize("name", sorted(TINY))
def test_multi_platform_export_round_trip_runs_on_cpu_like_the_model(name):
    fn = _forward(name)
    x = _images()
    exported = jax.export.export(fn, platforms=PLATFORMS)(x)
    assert exported.platforms == PLATFORMS
    restored = jax.export.deserialize(exported.serialize())  # needs the flatbuffers package
    got = restored.call(x)
    assert got.shape == (2, 30)
    np.testing.assert_allclose(got, fn(x), rtol=1e-6, atol=1e-6)
