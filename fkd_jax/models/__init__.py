"""Keypoint networks (Flax NNX) and the registry that builds them by name from a config."""

from fkd_jax.models.networks import COMPUTE_DTYPES, SIZE_KEYS
from fkd_jax.models.registry import (MODELS, ModelSpec, apply_model, apply_with_spread,
                                     count_params, create_model, has_heatmaps, model_sizes)

__all__ = ["COMPUTE_DTYPES", "MODELS", "SIZE_KEYS", "ModelSpec", "apply_model",
           "apply_with_spread", "count_params", "create_model", "has_heatmaps", "model_sizes"]
