"""Faces in whole pictures: detection, framing a face as the model was trained, mapping back.

(Being built for issue 12; `Face` is the record every stage passes along.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Face:
    """One face in a picture. Everything in the picture's own pixels (origin top-left corner,
    the continuous convention of fkd_jax.keypoints)."""

    box: tuple[float, float, float, float]  # x, y, w, h of the detector's (or given) box
    score: float  # detector confidence (higher is surer); 1.0 for a box given by the user
    keypoints_px: np.ndarray  # (2K,) keypoints in Kaggle column order (x, y interleaved)
