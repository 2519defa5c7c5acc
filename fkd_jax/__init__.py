"""fkd-jax: facial keypoint detection in JAX/Flax."""
