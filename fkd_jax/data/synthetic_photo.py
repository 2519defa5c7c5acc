"""What a camera and a real scene add to procedural faces: texture at several scales, exposure,
low resolution, motion blur, sensor noise and JPEG blocks (vectorised numpy over blocks).

Why: the flat-shaded faces of `fkd_jax.data.synthetic_render` are cleaner than any photo
crop; a net trained on them keys on sharp, high-contrast strokes that photos do not show.
None of these effects moves a feature: resampling and blur are centred (pixel centres at
+0.5, as everywhere), so the keypoints stay exact.

Images are float32 (B, 96, 96) in [0, 1]. Floats only meet + - * / sqrt, floor and clip, and
sums run in a fixed order (the DCT is written out, no BLAS), keeping the determinism contract
of `fkd_jax.data.synthetic`.
"""

from __future__ import annotations

import numpy as np

from fkd_jax.geometry.keypoints import IMAGE_SIZE

S = IMAGE_SIZE
_F = np.float32

# Value-noise layers: grid cells across the image and the largest relative amplitude of each
# (shading blotches and lighting at coarse scales, skin and background grain at fine ones).
TEXTURE_LAYERS: tuple[tuple[int, float], ...] = ((3, 0.3), (6, 0.2), (12, 0.12), (24, 0.08),
                                                 (48, 0.06))
# Per-face camera parameters: (name, low, high), drawn uniformly in this order.
CAMERA: tuple[tuple[str, float, float], ...] = (
    ("gain", 0.6, 1.5),  # exposure: multiplies the image, then clips (blown highlights)
    ("lowres_on", 0.0, 1.0), ("lowres", 1.0, 2.6),  # downscale factor, then back up
    ("lowres_phase_x", 0.0, 1.0), ("lowres_phase_y", 0.0, 1.0),
    ("motion_on", 0.0, 1.0), ("motion_len", 0.5, 4.0),  # px
    ("motion_dx", -1.0, 1.0), ("motion_dy", -1.0, 1.0),
    ("shot", 0.0, 0.04), ("read", 0.0, 0.02),  # noise std: shot x sqrt(level), plus read
    ("jpeg_on", 0.0, 1.0), ("jpeg_quality", 20.0, 90.0),
)
_LOWRES_P = 0.5
_MOTION_P = 0.3
_JPEG_P = 0.7

# 8x8 DCT-II basis with the cosines written out (cos(m pi / 16), m = 0..8), not computed.
_COS16 = (1.0, 0.98078528040323, 0.92387953251129, 0.83146961230255, 0.70710678118655,
          0.55557023301960, 0.38268343236509, 0.19509032201613, 0.0)


def _dct_basis() -> np.ndarray:
    c = np.empty((8, 8), dtype=np.float64)
    for u in range(8):
        for k in range(8):
            m = ((2 * k + 1) * u) % 32  # cos(m pi / 16), period 32
            sign = 1.0
            if m > 16:
                m = 32 - m
            if m > 8:
                m, sign = 16 - m, -1.0
            c[u, k] = sign * _COS16[m] * (0.35355339059327 if u == 0 else 0.5)
    return c.astype(_F)


_DCT = _dct_basis()
# JPEG's standard luminance quantisation table (ITU T.81, Annex K).
_JPEG_Q = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113,
    92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=_F).reshape(8, 8)


def texture_field(grids: list[np.ndarray], amp: np.ndarray) -> np.ndarray:
    """A multiplicative texture (B, 96, 96) around 1 from value-noise grids.

    grids[k]: uniforms (B, g + 1, g + 1) for TEXTURE_LAYERS[k] (g cells); amp: uniforms (B, K)
    scaling each layer's amplitude between 0 and its largest. Bilinear value noise: smooth at
    its own scale, so each layer adds detail of one size only.
    """
    field = np.ones((len(amp), S, S), dtype=_F)
    for (cells, largest), grid, a in zip(TEXTURE_LAYERS, grids, amp.T):
        layer = _upsample(grid.astype(_F) * 2.0 - 1.0, cells)
        field += (a * largest).astype(_F)[:, None, None] * layer
    return field


def _upsample(grid: np.ndarray, cells: int) -> np.ndarray:
    """(B, g + 1, g + 1) grid values at cell corners -> (B, 96, 96) bilinear at pixel centres."""
    q = (np.arange(S, dtype=_F) + _F(0.5)) * _F(cells / S)
    i0 = np.minimum(np.floor(q).astype(np.int64), cells - 1)
    w = (q - i0).astype(_F)
    rows = grid[:, i0, :] * (1.0 - w)[None, :, None] + grid[:, i0 + 1, :] * w[None, :, None]
    return rows[:, :, i0] * (1.0 - w)[None, None, :] + rows[:, :, i0 + 1] * w[None, None, :]


def camera(img: np.ndarray, u: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Exposure, low resolution, motion blur, sensor noise and JPEG blocks on images (B, 96, 96)
    in [0, 1]; u: uniforms (B, len(CAMERA)), noise: standard normals (B, 96, 96)."""
    p = {name: (lo + (hi - lo) * u[:, i]).astype(_F) for i, (name, lo, hi) in enumerate(CAMERA)}
    img = np.clip(img * p["gain"][:, None, None], 0.0, 1.0)
    img = np.where((p["lowres_on"] < _LOWRES_P)[:, None, None],
                   low_resolution(img, p["lowres"], p["lowres_phase_x"], p["lowres_phase_y"]),
                   img)
    length = np.where(p["motion_on"] < _MOTION_P, p["motion_len"], 0.0).astype(_F)
    img = motion_blur(img, length, p["motion_dx"], p["motion_dy"])
    std = p["shot"][:, None, None] * np.sqrt(img) + p["read"][:, None, None]
    img = np.clip(img + std * noise, 0.0, 1.0)
    quality = np.where(p["jpeg_on"] < _JPEG_P, p["jpeg_quality"], 0.0)
    return jpeg_blocks(img, quality)


def shift_along(img: np.ndarray, offset: np.ndarray, axis: int) -> np.ndarray:
    """Sample img at x + offset (B,) px along axis 1 (rows) or 2 (columns), linear, edges held."""
    return sample_along(img, np.arange(S, dtype=_F)[None, :] + offset[:, None].astype(_F), axis)


def sample_along(img: np.ndarray, coords: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation along one axis at coords (B, n) in pixel indices (centre of pixel k
    at k), edges held: -> (B, n, 96) for axis 1, (B, 96, n) for axis 2."""
    c = np.clip(coords, 0.0, S - 1.0)
    i0 = np.minimum(np.floor(c).astype(np.int64), S - 2)
    w = (c - i0).astype(_F)
    b = np.arange(len(img))[:, None]
    if axis == 1:
        return img[b, i0] * (1.0 - w)[:, :, None] + img[b, i0 + 1] * w[:, :, None]
    t = np.swapaxes(img, 1, 2)
    out = t[b, i0] * (1.0 - w)[:, :, None] + t[b, i0 + 1] * w[:, :, None]
    return np.swapaxes(out, 1, 2)


def low_resolution(img: np.ndarray, factor: np.ndarray, phase_x: np.ndarray,
                   phase_y: np.ndarray) -> np.ndarray:
    """The image as a camera `factor` (B,) times coarser would see it, upscaled back: a box
    average over each coarse pixel, then linear interpolation between coarse pixel centres.
    phase_*: where the coarse grid starts, in coarse pixels (0..1)."""
    out = img
    for axis, phase in ((1, phase_y), (2, phase_x)):
        f = factor.astype(_F)[:, None]
        x = np.arange(S, dtype=_F)[None, :]
        # box average of width f around each position: mean of 4 samples across the box
        box = sum(sample_along(out, x + f * (_F((k + 0.5) / 4) - _F(0.5)), axis) for k in range(4))
        box = box * _F(0.25)
        q = (x + _F(0.5)) / f - phase.astype(_F)[:, None] - _F(0.5)  # coarse index, centre at k
        k0 = np.floor(q)
        w = (q - k0).astype(_F)
        at = lambda k: (k + phase.astype(_F)[:, None] + _F(0.5)) * f - _F(0.5)  # noqa: E731
        lo, hi = sample_along(box, at(k0), axis), sample_along(box, at(k0 + 1.0), axis)
        shape = (slice(None), slice(None), None) if axis == 1 else (slice(None), None, slice(None))
        out = lo * (1.0 - w)[shape] + hi * w[shape]
    return out


def motion_blur(img: np.ndarray, length: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Mean of 5 copies shifted evenly along a segment of `length` (B,) px in direction
    (dx, dy) (B,), centred on the original position (so features do not move)."""
    norm = np.sqrt(dx * dx + dy * dy) + 1e-6
    ux, uy = dx / norm * length, dy / norm * length
    out = np.zeros_like(img)
    for k in range(5):
        s = _F(k / 4 - 0.5)
        out += shift_along(shift_along(img, ux * s, 2), uy * s, 1)
    return out * _F(0.2)


def jpeg_blocks(img: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """JPEG's loss on the 8x8 blocks: DCT, quantisation with the standard luminance table at
    `quality` (B,) (1-100; 0 leaves the face untouched), inverse DCT."""
    b = len(img)
    q = quality.astype(_F)
    scale = np.where(q < 50, 5000.0 / np.maximum(q, 1.0), 200.0 - 2.0 * q).astype(_F)
    table = np.maximum(np.floor((_JPEG_Q[None] * scale[:, None, None] + 50.0) / 100.0), 1.0)
    x = (img * 255.0 - 128.0).reshape(b, S // 8, 8, S // 8, 8).transpose(0, 1, 3, 2, 4)
    coef = _dct_rows(_dct_rows(x, _DCT), _DCT, cols=True)
    t = table[:, None, None]
    coef = np.floor(coef / t + 0.5) * t
    back = _dct_rows(_dct_rows(coef, _DCT.T), _DCT.T, cols=True)
    back = back.transpose(0, 1, 3, 2, 4).reshape(b, S, S)
    out = np.clip((back + 128.0) / 255.0, 0.0, 1.0).astype(_F)
    return np.where((q > 0)[:, None, None], out, img)


def _dct_rows(x: np.ndarray, m: np.ndarray, cols: bool = False) -> np.ndarray:
    """m applied to the block's rows (m @ x) or, with cols, its columns (x @ m.T), summed in a
    fixed order."""
    out = np.zeros_like(x)
    for k in range(8):
        if cols:
            out += x[..., :, k:k + 1] * m[:, k][None, :]
        else:
            out += m[:, k][:, None] * x[..., k:k + 1, :]
    return out
