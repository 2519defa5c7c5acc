"""Picture files: decoded to RGB arrays, and single-face files -> model inputs and back.

Conversion (stated so results can be interpreted): the file is decoded (read_picture: Pillow, EXIF
rotation applied, RGB), converted to grayscale with Pillow's "L" mode (ITU-R 601-2 luma:
L = 0.299 R + 0.587 G + 0.114 B; alpha is dropped), padded to a centred square with the image's
mean gray (so faces are not stretched), then resized to 96x96 with bilinear filtering
(antialiased when shrinking). A keypoint at (x, y) in the 96x96 frame maps back to the original
as x_orig = x * s - pad_left, y_orig = y * s - pad_top, with s = side / 96, all in the same
continuous-pixel convention as fkd_jax.geometry.keypoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fkd_jax.errors import UserError
from fkd_jax.geometry.keypoints import IMAGE_SIZE

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def read_picture(path: str | Path) -> np.ndarray:
    """Decode an image file to RGB uint8 (H, W, 3), EXIF orientation applied.

    Raises UserError naming the file when it is missing, empty or not a readable image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not an image file")
    if not path.is_file():
        raise UserError(f"{path}: no such image file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file, not an image")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            rgb = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: not a readable image ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:120]})") from None
    if rgb.ndim != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise UserError(f"{path}: image has no pixels")
    return np.ascontiguousarray(rgb)


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
