"""Every config key's type and allowed values, in one place, checked before a run does anything.

`check_config(config)` runs first in train.py (before any data is read or file written); a
mistake is a `UserError` that names the option as a user types it on the command line:
  --config.train.schedule='cosin' must be one of constant, cosine, onecycle
Keys a config has but the schema lacks are refused too (a typo in a config file). What each
key means is documented in configs/default.py; how values combine with a particular model or
data file is checked where that is known (models.create_model, data loading).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from fkd_jax import models
from fkd_jax.errors import UserError


@dataclass(frozen=True)
class Key:
    """One config key: its type, whether None is allowed, and a value check with its reason."""

    kind: str  # "bool", "int", "float", "str", "ints" (tuple of ints)
    optional: bool = False  # None allowed (a path not given, a model's own default)
    ok: Callable[[Any], bool] | None = None
    why: str = ""


def _choice(*values: str) -> Key:
    return Key("str", ok=lambda v: v in values, why=f"must be one of {', '.join(values)}")


def _at_least(low: float, kind: str = "int", optional: bool = False) -> Key:
    return Key(kind, optional, lambda v: v >= low, f"must be >= {low:g}")


def _in_range(low: float, high: float, closed_high: bool = True, kind: str = "float") -> Key:
    bracket = "]" if closed_high else ")"
    ok = (lambda v: low <= v <= high) if closed_high else (lambda v: low <= v < high)
    return Key(kind, ok=ok, why=f"must be in [{low:g}, {high:g}{bracket}")


_PATH = Key("str", optional=True)
_POSITIVE_INTS = Key("ints", optional=True, ok=lambda v: len(v) > 0 and min(v) >= 1,
                     why="must be a non-empty tuple of integers >= 1, e.g. \"(16,32,64)\"")


def _schema() -> dict[str, Key]:
    # Imported here so that the schema lists exactly what the code accepts.
    from fkd_jax.geometry import keypoints
    from fkd_jax.models import ops
    from fkd_jax.training import ensemble, steps

    return {
        "seed": _at_least(0),
        # data
        "data.train_path": _PATH,
        "data.test_path": _PATH,
        "data.lookup_path": _PATH,
        "data.groups_path": _PATH,
        "data.missing_pattern_path": _PATH,
        "data.keypoints": _choice(*keypoints.KEYPOINT_SETS),
        "data.keypoints_path": _PATH,
        "data.label_policy": _choice("mask", "drop"),
        "data.framing": _choice("as_given", "keypoints"),
        "data.split_seed": _at_least(0, optional=True),
        "data.val_fraction": Key("float", ok=lambda v: 0.0 < v < 1.0,
                                 why="must be between 0 and 1 (exclusive)"),
        "data.train_fraction": Key("float", ok=lambda v: 0.0 < v <= 1.0,
                                   why="must be in (0, 1]"),
        "data.synthetic_n": _at_least(2),
        "data.synthetic_seed": _at_least(0),
        "data.synthetic_kaggle_missing": Key("bool"),
        "data.synthetic_pose": Key("bool"),
        "data.synthetic_texture": Key("bool"),
        "data.synthetic_camera": Key("bool"),
        "data.synthetic_anatomy": Key("bool"),
        "data.synthetic_occluders": Key("bool"),
        "data.synthetic_shapes": _choice("kaggle", "filmed"),
        # model
        "model.name": Key("str"),  # with its sizes, checked by models.model_sizes
        "model.dropout": _in_range(0.0, 1.0, closed_high=False),
        "model.conv_impl": _choice(*ops.CONV_IMPLS),
        "model.compute_dtype": _choice(*models.COMPUTE_DTYPES),
        "model.widths": _POSITIVE_INTS,
        "model.hidden": _POSITIVE_INTS,
        "model.blocks": _at_least(1, optional=True),
        "model.heatmap_size": _at_least(1, optional=True),
        "model.margin": _at_least(1, optional=True),
        # train
        "train.epochs": _at_least(1),
        "train.batch_size": _at_least(1),
        "train.learning_rate": Key("float", ok=lambda v: v > 0, why="must be > 0"),
        "train.schedule": _choice("constant", "cosine", "onecycle"),
        "train.warmup_epochs": _at_least(0, "float"),
        "train.weight_decay": _at_least(0, "float"),
        "train.grad_clip": _at_least(0, "float"),
        "train.early_stop_patience": _at_least(0),
        "train.loss": _choice(*steps.LOSSES),
        "train.wing_w": Key("float", ok=lambda v: v > 0, why="must be > 0 (pixels)"),
        "train.wing_epsilon": Key("float", ok=lambda v: v > 0, why="must be > 0 (pixels)"),
        "train.ema_decay": _in_range(0.0, 1.0, closed_high=False),
        "train.swa_start_epoch": _at_least(0),
        "train.heatmap_loss_weight": _at_least(0, "float"),
        "train.heatmap_sigma_px": Key("float", ok=lambda v: v > 0, why="must be > 0 (pixels)"),
        "train.init_from": _PATH,
        "train.members": _at_least(1),
        "train.members_mode": _choice(*ensemble.MODES),
        # augment
        "augment.flip": Key("bool"),
        "augment.rotate_deg": _in_range(0.0, 180.0),
        "augment.scale": _in_range(0.0, 1.0, closed_high=False),
        "augment.shift_px": _in_range(0.0, float(keypoints.IMAGE_SIZE)),
        "augment.brightness": _in_range(0.0, 1.0),
        "augment.contrast": _in_range(0.0, 1.0, closed_high=False),
        "augment.gamma": _at_least(0, "float"),
        "augment.noise_std": _in_range(0.0, 1.0),
        "augment.blur_prob": _in_range(0.0, 1.0),
        "augment.erase_prob": _in_range(0.0, 1.0),
        "augment.erase_size": _in_range(0.0, 1.0),
        "augment.flip_label_offset_px": _in_range(-2.0, 2.0),
    }


def _has_kind(value: Any, kind: str) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value))
    if kind == "str":
        return isinstance(value, str)
    if kind == "ints":
        return (isinstance(value, (tuple, list))
                and all(isinstance(v, int) and not isinstance(v, bool) for v in value))
    raise ValueError(kind)


_KIND_TEXT = {"bool": "true or false", "int": "an integer", "float": "a finite number",
              "str": "a string", "ints": "a tuple of integers"}


def _flatten(config, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if hasattr(value, "items"):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def check_config(config) -> None:
    """Raise UserError for the first key that is unknown, missing, mistyped or out of range,
    or for values that cannot work together."""
    schema = _schema()
    values = _flatten(config)
    for name in values:
        if name not in schema:
            raise UserError(f"unknown config key config.{name} (not in fkd_jax/training/config_check.py; "
                            "a typo in the config file?)")
    for name, key in schema.items():
        option = f"--config.{name}"
        if name not in values:
            raise UserError(f"{option} is missing from the config (start from configs/default.py)")
        value = values[name]
        if value is None:
            if key.optional:
                continue
            raise UserError(f"{option} must be set (it has no default)")
        if not _has_kind(value, key.kind):
            raise UserError(f"{option}={value!r} must be {_KIND_TEXT[key.kind]}")
        if key.ok is not None and not key.ok(value):
            raise UserError(f"{option}={value!r} {key.why}")
    _check_combinations(config)


def _check_combinations(config) -> None:

    models.model_sizes(config.model)  # the model exists and takes the sizes given
    t, d = config.train, config.data
    if t.warmup_epochs >= t.epochs:
        raise UserError(f"--config.train.warmup_epochs={t.warmup_epochs!r} must be smaller than "
                        f"--config.train.epochs={t.epochs}")
    if t.ema_decay > 0 and t.swa_start_epoch > 0:
        raise UserError(f"--config.train.ema_decay={t.ema_decay!r} and "
                        f"--config.train.swa_start_epoch={t.swa_start_epoch} both average the "
                        "parameters; set one of them to 0")
    if t.swa_start_epoch > t.epochs:
        raise UserError(f"--config.train.swa_start_epoch={t.swa_start_epoch} must be at most "
                        f"--config.train.epochs={t.epochs} (0 disables averaging)")
    if t.heatmap_loss_weight > 0 and not models.has_heatmaps(config.model.name):
        raise UserError(f"--config.train.heatmap_loss_weight={t.heatmap_loss_weight!r} needs a "
                        f"heatmap model (--config.model.name={config.model.name!r} has none)")
    if d.keypoints == "ibug68" and not d.keypoints_path:
        raise UserError(f"--config.data.keypoints={d.keypoints!r} needs "
                        "--config.data.keypoints_path (a CSV of those keypoints, row for row "
                        "with --config.data.train_path)")
    if d.keypoints_path and not d.train_path:
        raise UserError("--config.data.keypoints_path needs --config.data.train_path (the "
                        "images its rows belong to)")
