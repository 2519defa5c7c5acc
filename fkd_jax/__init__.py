"""fkd-jax: facial keypoint detection in JAX/Flax.

    import fkd_jax
    detector = fkd_jax.Detector.load("runs/unet_pair")
    faces = detector("photo.jpg")

`Detector` and `Face` (fkd_jax.api) are imported on first use, so that `import fkd_jax.errors`
and the other light modules do not load jax or OpenCV.
"""

from __future__ import annotations

__all__ = ["Detector", "Face"]


def __getattr__(name: str):
    if name in __all__:
        from fkd_jax import api

        return getattr(api, name)
    raise AttributeError(f"module 'fkd_jax' has no attribute {name!r}")
