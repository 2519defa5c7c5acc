"""Model family: pinned parameter counts and output shapes; every shipped config builds."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import default
from fkd_jax import models
from fkd_jax.models import networks
from fkd_jax.data import augment
from fkd_jax.geometry import keypoints
from fkd_jax.training import config_check
from fkd_jax.errors import UserError
from conftest import normal, uniform

# Pinned so an accidental architecture change is caught, by config: the model name and its
# size overrides (SIZES: the sizes other configs train). nouri: Nouri's kfkd net (conv 32@3x3, 64@2x2, 128@2x2 VALID + pools;
# dense 500, 500, 30) = 8,051,502 parameters.
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


# Sizes pinned beside each model's defaults: a model name and its size overrides.
SIZES = {
    "nouri1000": {"name": "nouri", "hidden": (1000, 1000)},
    "resnet_small": {"name": "resnet", "widths": (16, 32, 64, 128), "hidden": (128,)},
    "heatmap_unet_wide": {"name": "heatmap_unet", "widths": (24, 48, 96, 192)},
}


def _model_cfg(name, **overrides):
    """`config.model` of default.py for `name` (a model, or a size of SIZES), with overrides."""
    cfg = default.get_config().model
    sized = dict(SIZES.get(name, {"name": name}))
    cfg.name = sized.pop("name")
    for k, v in {**sized, **overrides}.items():
        cfg[k] = v
    return cfg


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_param_count_and_output_shape(name):
    # Shapes only, traced and not run (the tiny models below run for real).
    def build_and_apply():
        model = models.create_model(_model_cfg(name), 15, 0)
        return model, model(jnp.zeros((3, 96, 96, 1), jnp.float32))

    model, out = nnx.eval_shape(build_and_apply)
    assert models.count_params(model) == PARAM_COUNTS[name]
    assert out.shape == (3, 30) and out.dtype == jnp.float32


def test_every_registered_model_is_pinned():
    assert set(models.MODELS) | set(SIZES) == set(PARAM_COUNTS)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_model_carries_parameters_only(name):
    """No RNG state or statistics: the whole state is the nnx.Param state (training splits it)."""
    cfg = _model_cfg(name, dropout=0.5 if models.MODELS[name].dropout else 0.0)
    model = nnx.eval_shape(lambda: models.create_model(cfg, 15, 0))  # structure, not values
    assert (jax.tree.structure(nnx.state(model))
            == jax.tree.structure(nnx.state(model, nnx.Param)))


TINY = {"simple_cnn": {"widths": (4, 8), "hidden": (8,)},
        "nouri": {"widths": (4, 4, 8), "hidden": (8,)},
        "resnet": {"widths": (4, 8), "hidden": (8,)},
        "heatmap": {"widths": (4, 8)},
        "heatmap_unet": {"widths": (4, 8, 8), "heatmap_size": 16}}


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_keypoint_count_and_image_size_come_from_the_caller(name):
    """K keypoints -> (B, 2K) outputs; a 64x64 input gives normalised coordinates in [-1, 1]
    for heatmap models (soft-argmax over cells tiling the image)."""
    model = models.create_model(_model_cfg(name, **TINY[name]), 4, 0, image_size=64)
    out = nnx.jit(lambda m, x: m(x))(model, uniform(0, (2, 64, 64, 1)))
    assert out.shape == (2, 8)
    if name.startswith("heatmap"):
        assert np.all(np.abs(out) < 1)
        assert model.heatmaps.out_features == 4


def test_tiny_models_match_a_hand_count_of_parameters():
    """widths/hidden really size the layers: simple_cnn (4, 8), dense 8, 3 keypoints, 32 px."""
    model = models.create_model(_model_cfg("simple_cnn", widths=(4, 8), hidden=(8,)), 3, 0,
                                image_size=32)
    convs = (9 * 1 * 4 + 4) + (9 * 4 * 8 + 8)
    dense = (8 * 8 * 8) * 8 + 8  # 32 -> 16 -> 8 pixels, 8 channels
    head = 8 * 6 + 6
    assert models.count_params(model) == convs + dense + head


def test_model_sizes_fills_in_defaults_and_takes_overrides():
    assert models.model_sizes(_model_cfg("heatmap_unet")) == {
        "widths": (16, 32, 64, 128), "blocks": 1, "heatmap_size": 24, "margin": 0}
    # a config read back from JSON has lists; an int is a 1-tuple
    cfg = ml_collections.ConfigDict({"name": "resnet", "dropout": 0.0, "widths": [8, 16],
                                     "hidden": 64, "blocks": 2, "heatmap_size": None})
    assert models.model_sizes(cfg) == {"widths": (8, 16), "blocks": 2, "hidden": (64,)}


@pytest.mark.parametrize("name,overrides,message", [
    ("nouri", {"heatmap_size": 24},
     r"^--config.model.heatmap_size is not used by model nouri"),
    ("heatmap", {"hidden": (64,)}, r"^--config.model.hidden is not used by model heatmap"),
    ("heatmap_unet", {"heatmap_size": 20},
     r"^--config.model.heatmap_size=20 must be one of 48, 24, 12, 6 for these widths"),
    ("heatmap_unet", {"widths": (16,)},
     r"^--config.model.heatmap_size=24 \(the default\) must be one of 48 "),
    ("heatmap_unet", {"widths": (4, 4, 4, 4, 4, 4)},
     r"^--config.model.widths=\(4,4,4,4,4,4\) has 6 stages; 96x96 images allow at most 5"),
    ("heatmap_unet", {"dropout": 0.1},
     r"^--config.model.dropout=0.1 is not used by model heatmap_unet"),
    ("heatmap", {"dropout": 0.5}, r"^--config.model.dropout=0.5 is not used by model heatmap"),
    ("nouri", {"widths": (32, 64)}, r"^--config.model.widths=\(32,64\) must have 3 entries"),
    ("simple_cnn", {"widths": (4,) * 7}, r"^--config.model.widths=\(4,4,4,4,4,4,4\) has too many"),
    ("resnet", {"hidden": (64, 64)}, r"^--config.model.hidden=\(64,64\) must have one entry"),
    ("resnet", {"widths": ()}, r"^--config.model.widths=\(\) must not be empty"),
    ("resnet", {"widths": (16, 0)}, r"^--config.model.widths=\(16, 0\) must be a tuple of positive"),
    ("resnet", {"widths": ("a",)}, r"^--config.model.widths=\('a',\) must be a tuple of positive"),
    ("resnet", {"blocks": 0}, r"^--config.model.blocks=0 must be a positive integer"),
    ("simple_cnn", {"compute_dtype": "float16"}, r"^--config.model.compute_dtype='float16'"),
    ("simple_cnn", {"conv_impl": "winograd"}, r"^--config.model.conv_impl='winograd'"),
    ("resnet9000", {}, r"^--config.model.name='resnet9000' is not a model; choose one of heatmap,"),
    ("nouri1000", {}, r"^--config.model.name='nouri1000' is not a model; choose one of"),
])
def test_bad_model_options_are_user_errors_naming_the_option(name, overrides, message):
    cfg = _model_cfg("simple_cnn", **overrides)
    cfg.name = name
    with pytest.raises(UserError, match=message):
        models.create_model(cfg, 15, 0)


def test_empty_hidden_puts_the_head_on_the_conv_features():
    model = models.create_model(_model_cfg("simple_cnn", widths=(4,), hidden=()), 2, 0,
                                image_size=16)
    assert len(model.denses) == 0 and models.count_params(model) == (9 * 4 + 4) + (8 * 8 * 4 * 4 + 4)


def test_same_seed_same_init_and_different_seed_differs():
    cfg = _model_cfg("simple_cnn", **TINY["simple_cnn"])
    a, b, c = (models.create_model(cfg, 15, seed, image_size=32) for seed in (0, 0, 1))
    x = uniform(0, (2, 32, 32, 1))
    np.testing.assert_array_equal(a(x), b(x))
    assert not np.allclose(a(x), c(x))


def test_dropout_only_in_training_and_keyed():
    model = models.create_model(_model_cfg("nouri", dropout=0.5, **TINY["nouri"]), 15, 0,
                                image_size=32)
    x = uniform(0, (2, 32, 32, 1))
    np.testing.assert_array_equal(model(x), model(x, train=False))
    k1, k2 = jax.random.split(jax.random.key(1))
    y1 = model(x, train=True, dropout_key=k1)
    np.testing.assert_array_equal(y1, model(x, train=True, dropout_key=k1))
    assert not np.allclose(y1, model(x, train=True, dropout_key=k2))
    with pytest.raises(ValueError, match="dropout_key"):
        model(x, train=True)
    # without dropout, training needs no key and changes nothing
    plain = models.create_model(_model_cfg("nouri", **TINY["nouri"]), 15, 0, image_size=32)
    np.testing.assert_array_equal(plain(x, train=True), plain(x))


def test_dropout_zeroes_and_rescales_dense_activations():
    """nnx.Dropout with the call-time key: the resnet's dense layer output is masked at about
    the rate and the kept units scaled by 1 / (1 - rate)."""
    model = models.create_model(_model_cfg("resnet", widths=(4,), hidden=(4000,), dropout=0.25),
                                1, 0, image_size=8)
    feats = jnp.ones((1, 4000))
    kept = model.dropout(feats, deterministic=False, rngs=jax.random.key(3))
    assert set(np.unique(np.asarray(kept))) == {0.0, np.float32(1 / 0.75)}
    assert abs(float((kept == 0).mean()) - 0.25) < 0.03


def test_soft_argmax_finds_a_peaked_heatmap_at_its_cell_centre():
    logits = jnp.full((1, 24, 24, 15), -1e4).at[0, 5, 17, 3].set(0.0)
    xy = networks.soft_argmax(logits)
    assert xy.shape == (1, 15, 2)
    # cell (row 5, col 17) of 24 covers image pixels [68, 72) x [20, 24): centre (70, 22) px
    np.testing.assert_allclose(np.asarray(xy[0, 3]), [70 / 48 - 1, 22 / 48 - 1], atol=1e-6)
    # a flat map averages to the image centre
    np.testing.assert_allclose(np.asarray(networks.soft_argmax(jnp.zeros((1, 8, 8, 1))))[0, 0],
                               [0.0, 0.0], atol=1e-6)


def test_upsample_2x_repeats_each_pixel_into_a_2x2_block():
    x = normal(0, (2, 3, 5, 4))
    expected = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    np.testing.assert_array_equal(networks._upsample_2x(x), expected)


def test_heatmap_unet_rejects_a_heatmap_size_that_is_no_encoder_level():
    with pytest.raises(ValueError, match="heatmap_size"):
        networks.HeatmapUNet(networks.Layers.create(), widths=(8, 8), blocks=1, heatmap_size=32,
                           num_keypoints=15, image_size=96)


def test_a_heatmap_unet_with_a_margin_reaches_points_outside_the_crop():
    """margin m pads the crop and its maps cover (-m, 96 + m): a map peaked on a cell of the
    padding gives that point, beyond the crop's edge, in the crop's own coordinates."""
    cfg = _model_cfg("heatmap_unet", widths=(8, 8, 8, 8), margin=16, heatmap_size=32)
    model = models.create_model(cfg, 15, 0)
    images = uniform(1, (2, 96, 96, 1))
    logits = model.heatmap_logits(images)
    assert logits.shape == (2, 32, 32, 15)  # 4-pixel cells of the 128-pixel padded square
    peaked = jnp.full((1, 32, 32, 15), -1e4).at[0, 29, 16, 0].set(0.0)
    # cell (row 29, col 16) of 32 over (-16, 112): centre (50, 102) crop pixels, below the crop
    model.heatmap_logits = lambda x: peaked
    points, spread = model.moments(images[:1])
    np.testing.assert_allclose(keypoints.to_pixels(np.asarray(points[0, 0]), 96), [50, 102],
                               atol=1e-4)
    np.testing.assert_allclose(np.asarray(model(images[:1])).reshape(15, 2), points[0], atol=1e-6)
    with pytest.raises(UserError, match=r"heatmap_size=24 \(the default\) must be one of "
                                        r"64, 32, 16, 8"):
        models.create_model(_model_cfg("heatmap_unet", margin=16), 15, 0)
    with pytest.raises(UserError, match="margin is not used by model resnet"):
        models.create_model(_model_cfg("resnet", margin=16), 15, 0)


CONFIG_FILES = sorted(p for p in Path(__file__).parents[1].glob("configs/*.py")
                      if not p.name.startswith("_"))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_every_shipped_config_is_valid_and_builds_its_model(path):
    spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    if config.data.keypoints == "ibug68":  # its files are given on the command line
        config.data.train_path, config.data.keypoints_path = "training.zip", "landmarks68.csv"
    augment.read_settings(config.augment)
    config_check.check_config(config)
    k = keypoints.KEYPOINT_SETS[config.data.keypoints].num_keypoints

    def build_and_apply():
        model = models.create_model(config.model, k, 0)
        return model(jnp.zeros((1, 96, 96, 1), jnp.float32))

    assert nnx.eval_shape(build_and_apply).shape == (1, 2 * k)  # traced, not run
