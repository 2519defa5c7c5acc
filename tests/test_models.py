"""Model family: pinned parameter counts and output shapes; every shipped config builds."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import base
from fkd_jax import augment, cli, models
from fkd_jax.errors import UserError

# Pinned so an accidental architecture change is caught. nouri: Nouri's kfkd net
# (conv 32@3x3, 64@2x2, 128@2x2 VALID + pools; dense 500, 500, 30) = 8,051,502 parameters.
PARAM_COUNTS = {
    "simple_cnn": 1_206_942,
    "nouri": 8_051_502,
    "nouri1000": 16_561_502,
    "resnet": 3_592_158,
    "resnet_small": 900_606,
    "heatmap": 308_303,
    "heatmap_unet": 363_791,
    "heatmap_unet_wide": 817_167,
}


def _model_cfg(name, **overrides):
    cfg = base.get_config().model
    cfg.name = name
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_param_count_and_output_shape(name):
    model = models.create_model(_model_cfg(name), seed=0)
    assert models.count_params(model) == PARAM_COUNTS[name]
    out = model(jnp.zeros((3, 96, 96, 1), jnp.float32))
    assert out.shape == (3, 30) and out.dtype == jnp.float32


def test_every_registered_model_is_pinned():
    assert set(models.MODELS) == set(PARAM_COUNTS)


def test_same_seed_same_init_and_different_seed_differs():
    a = models.create_model(_model_cfg("simple_cnn"), seed=0)
    b = models.create_model(_model_cfg("simple_cnn"), seed=0)
    c = models.create_model(_model_cfg("simple_cnn"), seed=1)
    x = jax.random.uniform(jax.random.key(0), (2, 96, 96, 1))
    np.testing.assert_array_equal(a(x), b(x))
    assert not np.allclose(a(x), c(x))


def test_dropout_only_in_training_and_keyed():
    model = models.create_model(_model_cfg("nouri", dropout=0.5), seed=0)
    x = jax.random.uniform(jax.random.key(0), (2, 96, 96, 1))
    np.testing.assert_array_equal(model(x), model(x, train=False))
    k1, k2 = jax.random.split(jax.random.key(1))
    y1 = model(x, train=True, dropout_key=k1)
    np.testing.assert_array_equal(y1, model(x, train=True, dropout_key=k1))
    assert not np.allclose(y1, model(x, train=True, dropout_key=k2))
    with pytest.raises(ValueError, match="dropout_key"):
        model(x, train=True)


def test_unknown_model_is_a_user_error():
    with pytest.raises(UserError, match="model.name='resnet9000'"):
        models.create_model(_model_cfg("resnet9000"), seed=0)


def test_soft_argmax_finds_a_peaked_heatmap_at_its_cell_centre():
    logits = jnp.full((1, 24, 24, 15), -1e4).at[0, 5, 17, 3].set(0.0)
    xy = models.soft_argmax(logits)
    assert xy.shape == (1, 15, 2)
    # cell (row 5, col 17) of 24 covers image pixels [68, 72) x [20, 24): centre (70, 22) px
    np.testing.assert_allclose(np.asarray(xy[0, 3]), [70 / 48 - 1, 22 / 48 - 1], atol=1e-6)
    # a flat map averages to the image centre
    np.testing.assert_allclose(np.asarray(models.soft_argmax(jnp.zeros((1, 8, 8, 1))))[0, 0],
                               [0.0, 0.0], atol=1e-6)


def test_upsample_2x_repeats_each_pixel_into_a_2x2_block():
    x = jax.random.normal(jax.random.key(0), (2, 3, 5, 4))
    expected = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    np.testing.assert_array_equal(models._upsample_2x(x), expected)


def test_heatmap_unet_rejects_a_heatmap_size_that_is_no_encoder_level():
    with pytest.raises(ValueError, match="heatmap_size"):
        models.HeatmapUNet(heatmap_size=32, rngs=nnx.Rngs(0))


CONFIG_FILES = sorted(p for p in Path(__file__).parents[1].glob("configs/*.py")
                      if not p.name.startswith("_"))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_every_shipped_config_is_valid_and_builds_its_model(path):
    spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    augment.read_settings(config.augment)
    cli.check_config(config)
    model = models.create_model(config.model, seed=0)
    assert model(jnp.zeros((1, 96, 96, 1))).shape == (1, 30)
