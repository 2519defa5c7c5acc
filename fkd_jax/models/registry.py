"""The models by name: `create_model(config.model, ...)` builds one with its sizes checked.

Adding a model: write an `nnx.Module` whose `__init__(make, *, num_keypoints, image_size,
dropout, **sizes)` builds its layers with `make` (a `Layers`), and whose `__call__` follows the
contract above; optionally a `check(sizes, image_size, set_keys)` raising `UserError` naming
the option for sizes it cannot take; then add a `ModelSpec` to `MODELS` with its size
defaults. `tests/test_models.py` pins every model's parameter count.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from fkd_jax.errors import UserError
from fkd_jax.geometry.keypoints import IMAGE_SIZE
from fkd_jax.models.networks import (
    SIZE_KEYS,
    HeatmapRegressor,
    HeatmapUNet,
    Layers,
    ResNetRegressor,
    _check_backbone,
    _check_conv_pool,
    _check_heatmap_unet,
    _check_nouri,
    _check_resnet,
    nouri,
    simple_cnn,
)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered model: its builder, the size keys it takes with their defaults, whether
    `--config.model.dropout` applies, and an optional check of the sizes (raises UserError)."""

    build: Callable[..., nnx.Module]
    sizes: Mapping[str, Any]
    dropout: bool = True
    check: Callable[[dict, int, set], None] | None = None


MODELS: dict[str, ModelSpec] = {
    "simple_cnn": ModelSpec(simple_cnn, {"widths": (16, 32, 64), "hidden": (128,)},
                            check=_check_conv_pool(lambda w: (3,) * len(w), "SAME")),
    "nouri": ModelSpec(nouri, {"widths": (32, 64, 128), "hidden": (500, 500)},
                       check=_check_nouri),
    "resnet": ModelSpec(ResNetRegressor,
                        {"widths": (32, 64, 128, 256), "blocks": 1, "hidden": (256,)},
                        check=_check_resnet),
    "heatmap": ModelSpec(HeatmapRegressor, {"widths": (32, 64, 128), "blocks": 1},
                         dropout=False, check=_check_backbone),
    "heatmap_unet": ModelSpec(HeatmapUNet,
                              {"widths": (16, 32, 64, 128), "blocks": 1, "heatmap_size": 24,
                               "margin": 0},
                              dropout=False, check=_check_heatmap_unet),
}

def has_heatmaps(name: str) -> bool:
    """Whether model `name` predicts through heatmaps, i.e. has
    `heatmap_logits(images) -> (B, H, W, K)` (what `train.heatmap_loss_weight` needs)."""
    spec = MODELS.get(name)
    return spec is not None and hasattr(spec.build, "heatmap_logits")


def _as_ints(key: str, value, *, tuple_: bool, allow_empty: bool = False):
    """A size value from the config as int or tuple of ints (lists from JSON accepted)."""
    where = f"--config.model.{key}={value!r}"
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    if not tuple_:
        if not is_int(value) or value < 1:
            raise UserError(f"{where} must be a positive integer")
        return value
    if is_int(value):
        value = (value,)
    if not isinstance(value, (tuple, list)) or not all(is_int(v) and v >= 1 for v in value):
        raise UserError(f'{where} must be a tuple of positive integers, e.g. "(16,32,64)"')
    if not value and not allow_empty:
        raise UserError(f"{where} must not be empty")
    return tuple(value)


def _spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise UserError(f"--config.model.name={name!r} is not a model; choose one of "
                        f"{', '.join(sorted(MODELS))}")
    return MODELS[name]


def model_sizes(model_cfg, image_size: int = IMAGE_SIZE) -> dict[str, Any]:
    """The sizes `model_cfg` (a `config.model` block) builds, defaults filled in, after checking
    every model option; a mistake is a `UserError` naming the option. Cheap (no arrays):
    callable from a config check before any data is loaded."""
    spec = _spec(model_cfg.name)
    sizes, set_keys = dict(spec.sizes), set()
    for key in SIZE_KEYS:
        value = model_cfg.get(key)
        if value is None:
            continue
        if key not in spec.sizes:
            raise UserError(f"--config.model.{key} is not used by model {model_cfg.name} (it "
                            f"takes {', '.join(spec.sizes)}); leave it unset (None)")
        sizes[key] = _as_ints(key, value, tuple_=key in ("widths", "hidden"),
                              allow_empty=key == "hidden" and spec.build in (simple_cnn, nouri))
        set_keys.add(key)
    dropout = model_cfg.get("dropout", 0.0) or 0.0
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"--config.model.dropout={dropout!r} must be in [0, 1)")
    if dropout > 0 and not spec.dropout:
        raise UserError(f"--config.model.dropout={dropout!r} is not used by model "
                        f"{model_cfg.name} (no dense layer to drop from); set it to 0")
    if spec.check is not None:
        spec.check(sizes, image_size, set_keys)
    return sizes


def create_model(model_cfg, num_keypoints: int, seed: int, *,
                 image_size: int = IMAGE_SIZE) -> nnx.Module:
    """Build `model_cfg.name` (a `config.model` block: name, dropout, conv_impl,
    compute_dtype and the size keys) for `num_keypoints` keypoints on `image_size`-pixel
    square images, with parameters initialised from `seed`.

    Bad options are a `UserError` naming the option (see `model_sizes`).
    """
    sizes = model_sizes(model_cfg, image_size)
    if num_keypoints < 1:
        raise ValueError(f"num_keypoints must be >= 1, got {num_keypoints}")
    make = Layers.create(model_cfg.get("compute_dtype", "float32"),
                         model_cfg.get("conv_impl", "auto"), seed)
    return MODELS[model_cfg.name].build(make, num_keypoints=num_keypoints, image_size=image_size,
                                        dropout=model_cfg.get("dropout", 0.0) or 0.0, **sizes)


def count_params(model: nnx.Module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def apply_model(graphdef: nnx.GraphDef, params, images, *, train: bool = False, dropout_key=None):
    """Predicted keypoints (B, 2K) in normalised coordinates, from a model's structure and
    parameters (a plain dict: what checkpoints and the training state hold)."""
    return nnx.merge(graphdef, params)(images, train=train, dropout_key=dropout_key)


def apply_with_spread(graphdef: nnx.GraphDef, params, images) -> tuple[jax.Array, jax.Array]:
    """Keypoints (B, K, 2) and each one's spread (B, K), normalised coordinates, in inference
    mode. A heatmap model's spread is its heatmap's (its `moments`); a model that
    regresses coordinates directly has none of its own (zeros: an ensemble of such models
    still has its members' disagreement)."""
    model = nnx.merge(graphdef, params)
    if hasattr(model, "moments"):
        return model.moments(images)
    points = model(images).reshape(images.shape[0], -1, 2)
    return points, jnp.zeros(points.shape[:2], points.dtype)
