"""User image files -> model inputs, and predictions back to the file's own pixel coordinates.

Conversion (stated so results can be interpreted): the file is decoded (faces.read_picture: Pillow, EXIF
rotation applied, RGB), converted to grayscale with Pillow's "L" mode (ITU-R 601-2 luma:
L = 0.299 R + 0.587 G + 0.114 B; alpha is dropped), padded to a centred square with the image's
mean gray (so faces are not stretched), then resized to 96x96 with bilinear filtering
(antialiased when shrinking). A keypoint at (x, y) in the 96x96 frame maps back to the original
as x_orig = x * s - pad_left, y_orig = y * s - pad_top, with s = side / 96, all in the same
continuous-pixel convention as fkd_jax.keypoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fkd_jax.faces import read_picture
from fkd_jax.keypoints import IMAGE_SIZE


@dataclass(frozen=True)
class Frame:
    """How a file's pixels map onto the 96x96 model input."""

    scale: float  # original pixels per model pixel
    pad_left: float
    pad_top: float
    width: int
    height: int

    def to_original(self, keypoints_px: np.ndarray) -> np.ndarray:
        """(..., 30) keypoints in the 96x96 frame -> the original image's pixels."""
        out = np.array(keypoints_px, dtype=np.float64) * self.scale
        out[..., 0::2] -= self.pad_left
        out[..., 1::2] -= self.pad_top
        return out


def load_face_image(path: str | Path) -> tuple[np.ndarray, Frame, Image.Image]:
    """(image float32 (96, 96, 1) in [0, 1], its Frame, the original as grayscale PIL image)."""
    gray = Image.fromarray(read_picture(path)).convert("L")
    w, h = gray.size
    side = max(w, h)
    pad_left, pad_top = (side - w) / 2.0, (side - h) / 2.0
    mean = int(round(float(np.asarray(gray).mean())))
    square = Image.new("L", (side, side), color=mean)
    square.paste(gray, (int(pad_left), int(pad_top)))
    # Paste offsets are whole pixels: use them exactly in the mapping back.
    pad_left, pad_top = float(int(pad_left)), float(int(pad_top))
    small = square.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR, reducing_gap=None)
    arr = np.asarray(small, dtype=np.float32)[..., None] / 255.0
    return arr, Frame(side / IMAGE_SIZE, pad_left, pad_top, w, h), gray
