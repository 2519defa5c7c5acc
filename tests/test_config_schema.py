"""The one config schema: every key typed and bounded, typos refused, before any work."""

from __future__ import annotations


import ml_collections
import pytest

from configs import default
from fkd_jax.training import config_check
from fkd_jax.errors import UserError


def _with(**overrides):
    """default.py's config with `section__key=value` set, bypassing ConfigDict's own type checks
    (as a config file that builds its own sections could)."""
    c = default.get_config()
    c.unlock()
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        c[section] = ml_collections.ConfigDict({**c[section].to_dict(), key: value},
                                               type_safe=False)
    return c


@pytest.mark.parametrize("overrides, message", [
    ({"train__schedule": "cosin"}, "--config.train.schedule='cosin' must be one of constant, "
                                   "cosine, onecycle"),
    ({"train__early_stop_patience": -1}, "--config.train.early_stop_patience=-1 must be >= 0"),
    ({"train__warmup_epochs": 30}, "--config.train.warmup_epochs=30 must be smaller than"),
    ({"augment__scale": 1.5}, "--config.augment.scale=1.5 must be in [0, 1)"),
    ({"augment__rotate_deg": -5.0}, "--config.augment.rotate_deg=-5.0 must be in [0, 180]"),
    ({"augment__flip": 1}, "--config.augment.flip=1 must be true or false"),
    ({"model__dropout": 1.0}, "--config.model.dropout=1.0 must be in [0, 1)"),
    ({"model__name": "resnet9000"}, "--config.model.name='resnet9000' is not a model"),
    ({"model__heatmap_size": 24}, "--config.model.heatmap_size is not used by model simple_cnn"),
    ({"model__widths": (16, 0)}, "--config.model.widths=(16, 0) must be a non-empty tuple"),
    ({"model__conv_impl": "cudnn"}, "--config.model.conv_impl='cudnn' must be one of"),
    ({"data__label_policy": "keep"}, "--config.data.label_policy='keep' must be one of mask, drop"),
    ({"data__val_fraction": 1.0}, "--config.data.val_fraction=1.0 must be between 0 and 1"),
    ({"data__keypoints": "ibug68"}, "--config.data.keypoints='ibug68' needs "
                                    "--config.data.keypoints_path"),
    ({"data__keypoints_path": "lm.csv"}, "--config.data.keypoints_path needs "
                                         "--config.data.train_path"),
    ({"train__learning_rate": float("nan")}, "--config.train.learning_rate=nan must be a finite"),
])
def test_bad_values_name_the_option_as_typed(overrides, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace(")", r"\)")
                       .replace("(", r"\(")):
        config_check.check_config(_with(**overrides))


def test_unknown_and_missing_keys_are_refused():
    c = default.get_config()
    c.unlock()
    c.train.eval_evry = 2
    with pytest.raises(UserError, match="unknown config key config.train.eval_evry"):
        config_check.check_config(c)
    c = default.get_config()
    c.unlock()
    del c.train["epochs"]
    with pytest.raises(UserError, match="--config.train.epochs is missing"):
        config_check.check_config(c)


def test_optional_keys_take_none_and_required_ones_do_not():
    config_check.check_config(_with(model__widths=None, data__train_path=None))
    with pytest.raises(UserError, match="--config.train.epochs must be set"):
        config_check.check_config(_with(train__epochs=None))


def test_the_python_api_checks_the_config_as_train_py_does(tmp_path):
    from fkd_jax.training import loop

    c = default.get_config()
    c.train.heatmap_loss_weight = 1e-3  # the simple CNN has no heatmaps
    with pytest.raises(UserError, match="heatmap"):
        loop.train_and_evaluate(c, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything was written
