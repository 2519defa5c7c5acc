"""Data augmentation as pure JAX functions, run on the device inside the jitted training step.

`augment_batch(key, images, keypoints_px, mask, cfg)` is what the training step calls; the
per-example building blocks below it are public so they can be tested (and reused) alone.
`cfg` is the `config.augment` block (see configs/default.py); its values are Python constants at
trace time, so an augmentation that is off is never traced, and all of them off returns the
inputs themselves.

Geometry follows fkd_jax.geometry.keypoints: pixel (i, j) has its centre at (x, y) = (j + 0.5, i + 0.5)
and the image spans [0, 96] on both axes. An affine `matrix` (3, 3) maps *input* pixel
coordinates to *output* ones, `p_out = matrix @ (x, y, 1)`: keypoints are moved by `matrix`,
and the image is resampled by pulling each output pixel centre back through its inverse, so
a feature drawn at a keypoint stays under the transformed keypoint to sub-pixel accuracy.

Order per example (each step only if enabled): blur -> one affine warp for flip, rotation,
scale and shift (about the centre (48, 48)) -> contrast, brightness, clip, gamma -> noise,
clip -> erase. Everything after the warp is pointwise, so XLA fuses it with the resampling
into one loop over the pixels (see `augment_example` for why this order is also the fast one).

Out-of-image fill: the edge value (bilinear with clamped indices, `mode="nearest"`). Chosen
over the image mean because a constant fill puts a hard straight step edge into the image
that real faces never have, and over reflection because mirroring would copy eyes or mouth
corners across the border as spurious unlabelled features; edge streaks are featureless.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.ndimage import map_coordinates

from fkd_jax.geometry.keypoints import (
    FLIP_PERMUTATION,
    IMAGE_SIZE,
    as_points,
    flip_keypoints_px,
)

CENTRE = IMAGE_SIZE / 2.0  # rotations and scaling are about the image centre (48, 48)
BLUR_TAPS = 7  # fixed 1-D kernel size (radius 3 >= 2 sigma at the largest sigma): static shapes
BLUR_SIGMA_RANGE = (0.5, 1.5)  # pixels; sigma is drawn uniformly in this range per blurred image


@dataclass(frozen=True)
class AugmentSettings:
    """The validated `config.augment` block; every field at its default means "off"."""

    flip: bool = False  # horizontal flip with probability 0.5
    rotate_deg: float = 0.0  # rotation uniform in [-rotate_deg, rotate_deg] degrees
    scale: float = 0.0  # zoom factor uniform in [1 - scale, 1 + scale]
    shift_px: float = 0.0  # translation uniform in [-shift_px, shift_px] pixels, per axis
    brightness: float = 0.0  # additive, uniform in [-brightness, brightness]
    contrast: float = 0.0  # factor uniform in [1 - contrast, 1 + contrast] about the mean
    gamma: float = 0.0  # x ** g, log g uniform in [-log(1 + gamma), log(1 + gamma)]
    noise_std: float = 0.0  # additive Gaussian pixel noise, std in [0, 1] intensity units
    blur_prob: float = 0.0  # probability of a Gaussian blur, sigma in BLUR_SIGMA_RANGE
    erase_prob: float = 0.0  # probability of one occluding rectangle (random erasing)
    erase_size: float = 0.4  # its largest side, as a fraction of the image side
    # How far right of the image content the x labels sit (pixels): a labelling convention
    # (e.g. 1-based pixel indices). The flip mirrors labels about W / 2 + this, so they stay
    # on their content; about W / 2 it would move them by twice this, and a model trained on
    # half-flipped faces then lands this far left of every label.
    flip_label_offset_px: float = 0.0

    @property
    def affine(self) -> bool:
        return self.rotate_deg > 0 or self.scale > 0 or self.shift_px > 0

    @property
    def photometric(self) -> bool:
        return self.brightness > 0 or self.contrast > 0 or self.gamma > 0

    @property
    def any(self) -> bool:
        return (self.flip or self.affine or self.photometric or self.noise_std > 0
                or self.blur_prob > 0 or self.erase_prob > 0)


# fold_in tag of each augmentation's random stream. Every augmentation draws from its own
# stream, so adding (or switching on) one leaves the draws of all the others unchanged.
STREAMS: dict[str, int] = {"flip": 1, "affine": 2, "blur": 3, "photometric": 4, "noise": 5,
                           "erase": 6}


def stream_key(key: jax.Array, name: str) -> jax.Array:
    """The key of augmentation `name` for an example whose key is `key`."""
    return jax.random.fold_in(key, STREAMS[name])


def read_settings(cfg) -> AugmentSettings:
    """`config.augment` (ConfigDict or mapping; None = all off) as AugmentSettings.

    Values were checked against fkd_jax/training/config_check.py before training starts; here they are
    only converted (missing fields are off).
    """
    if cfg is None:
        return AugmentSettings()
    if isinstance(cfg, AugmentSettings):
        return cfg
    values = {f.name: cfg[f.name] for f in fields(AugmentSettings) if cfg.get(f.name) is not None}
    return AugmentSettings(**{k: bool(v) if k == "flip" else float(v) for k, v in values.items()})


# ----------------------------------------------------------------------------- geometry
# Per example: image (H, W, C) float, keypoints_px (30,) pixels, mask (30,) bool.


def hflip(image: jax.Array, keypoints_px: jax.Array, mask: jax.Array,
          flip_permutation: np.ndarray = FLIP_PERMUTATION, label_offset_px: float = 0.0
          ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mirror the image along its width; keypoints x -> W + 2 * label_offset_px - x with
    left/right swapped (labels that sit label_offset_px right of their content stay so)."""
    kp, m = flip_keypoints_px(keypoints_px, mask, image.shape[1], flip_permutation,
                              label_offset_px)
    return image[:, ::-1, :], kp, m


def affine_matrix(angle_rad, scale, shift_xy, mirror=False, centre: float = CENTRE
                  ) -> jax.Array:
    """(3, 3) float32 matrix mapping input pixel coordinates (x, y, 1) to output ones.

    Mirror (x -> 2 * centre - x, if `mirror`), then scale by `scale` and rotate by
    `angle_rad` about (centre, centre), then translate by `shift_xy` (2,) pixels. With y
    pointing down, a positive angle turns the picture clockwise on screen. Any argument may
    be traced; `mirror` is a bool.
    """
    cos, sin = jnp.cos(angle_rad) * scale, jnp.sin(angle_rad) * scale
    sx = jnp.where(mirror, -1.0, 1.0)
    # Linear part A = R(angle) * scale * diag(sx, 1); offset keeps the centre fixed, then shifts.
    a = jnp.stack([jnp.stack([cos * sx, -sin]), jnp.stack([sin * sx, cos])])
    c = jnp.array([centre, centre], jnp.float32)
    t = c - a @ c + jnp.asarray(shift_xy, jnp.float32)
    return jnp.concatenate([jnp.concatenate([a, t[:, None]], axis=1),
                            jnp.array([[0.0, 0.0, 1.0]])], axis=0).astype(jnp.float32)


def invert_affine(matrix: jax.Array) -> jax.Array:
    """Inverse of a (3, 3) affine matrix (last row 0, 0, 1), in closed form."""
    a, t = matrix[:2, :2], matrix[:2, 2]
    det = a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0]
    a_inv = jnp.stack([jnp.stack([a[1, 1], -a[0, 1]]), jnp.stack([-a[1, 0], a[0, 0]])]) / det
    return jnp.concatenate([jnp.concatenate([a_inv, (-a_inv @ t)[:, None]], axis=1),
                            matrix[2:]], axis=0)


def warp_image(image: jax.Array, matrix: jax.Array) -> jax.Array:
    """Resample image (H, W, C) so that output(p) = input(matrix^-1 p), bilinear, edge fill."""
    h, w = image.shape[:2]
    inv = invert_affine(matrix)
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) + 0.5,
                          jnp.arange(w, dtype=jnp.float32) + 0.5, indexing="ij")
    src_x = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    src_y = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    # map_coordinates indexes array cells, whose centres sit at (index + 0.5) pixels.
    coords = [src_y - 0.5, src_x - 0.5]
    planes = [map_coordinates(image[..., c], coords, order=1, mode="nearest")
              for c in range(image.shape[-1])]  # C is static (1 for Kaggle's grayscale)
    return jnp.stack(planes, axis=-1)


def transform_keypoints(keypoints_px: jax.Array, mask: jax.Array, matrix: jax.Array,
                        size: int = IMAGE_SIZE, margin_px: float = 0.0
                        ) -> tuple[jax.Array, jax.Array]:
    """Move keypoints (2K,) by `matrix`; a keypoint that leaves the image and its margin, x or
    y outside [-margin_px, size + margin_px), loses its mask (both coordinates); a False mask
    stays False. `margin_px`: how far past the image the model's heatmaps reach."""
    pts = as_points(keypoints_px)  # (K, 2)
    moved = pts @ matrix[:2, :2].T + matrix[:2, 2]
    inside = jnp.all((moved >= -margin_px) & (moved < size + margin_px), axis=-1)  # (K,)
    return moved.reshape(keypoints_px.shape), mask & jnp.repeat(inside, 2)


def apply_affine(image: jax.Array, keypoints_px: jax.Array, mask: jax.Array,
                 matrix: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Warp a square image (H, H, C) and move the keypoints by the same `matrix` (see
    `affine_matrix`); keypoints that leave the image lose their mask."""
    kp, m = transform_keypoints(keypoints_px, mask, matrix, size=image.shape[1])
    return warp_image(image, matrix), kp, m


# ----------------------------------------------------------------------------- photometric


def adjust_photometric(image: jax.Array, brightness=0.0, contrast=1.0, gamma=1.0,
                       mean=None) -> jax.Array:
    """Contrast (factor about `mean`, default the image's own mean), then an additive
    brightness offset, clip to [0, 1], then gamma (x ** gamma). Neutral values: 0, 1, 1.

    Every step is pointwise given `mean`, so `augment_example` can take the mean before the
    warp and run this after it in the same fused loop as the resampling.
    """
    x = image
    if not _is_constant(contrast, 1.0):
        mean = jnp.mean(x) if mean is None else mean
        x = (x - mean) * contrast + mean
    x = jnp.clip(x + brightness, 0.0, 1.0)
    if not _is_constant(gamma, 1.0):  # skipped when off; exp(g log x) is ~3x cheaper than pow
        x = jnp.exp(gamma * jnp.log(x))  # log 0 = -inf -> exp(-inf) = 0 for gamma > 0
    return x


def _is_constant(value, constant: float) -> bool:
    """Whether `value` is a Python number equal to `constant` (known at trace time)."""
    return isinstance(value, (int, float)) and value == constant


def add_noise(key: jax.Array, image: jax.Array, std) -> jax.Array:
    """Add i.i.d. Gaussian noise of standard deviation `std` per pixel; clip to [0, 1]."""
    noise = jax.random.normal(key, image.shape, image.dtype) * std
    return jnp.clip(image + noise, 0.0, 1.0)


def gaussian_kernel(sigma, taps: int = BLUR_TAPS) -> jax.Array:
    """Normalised 1-D Gaussian (taps,) of std `sigma` pixels (traced ok; shape static)."""
    r = jnp.arange(taps, dtype=jnp.float32) - (taps - 1) / 2.0
    k = jnp.exp(-0.5 * (r / sigma) ** 2)
    return k / k.sum()


def blur_matrix(kernel: jax.Array, size: int) -> jax.Array:
    """(size, size) matrix B with (B @ v)[i] = sum_t kernel[t] * v[clip(i + t - r)]: a 1-D
    convolution with edge padding, r = (taps - 1) // 2, as one banded matrix."""
    taps = kernel.shape[0]
    r = (taps - 1) // 2
    src = np.clip(np.arange(size)[:, None] + np.arange(-r, r + 1)[None, :], 0, size - 1)
    one_hot = (src[:, :, None] == np.arange(size)).astype(np.float32)  # (size, taps, size)
    return jnp.einsum("t,itj->ij", kernel, one_hot)


def gaussian_blur(image: jax.Array, sigma, taps: int = BLUR_TAPS) -> jax.Array:
    """Separable Gaussian blur of image (H, W, C) with std `sigma` pixels, edge-padded so
    borders keep their level.

    Rows: a sum of shifted slices. Columns: a banded matrix product, because XLA does not
    fuses a matrix product into its consumers, so the warp that follows gathers from a
    materialised image; with slices on both axes XLA fused the blur into the gathers and
    recomputed it per sample (7x slower than blurring once).
    """
    h, w = image.shape[:2]
    k = gaussian_kernel(sigma, taps).astype(image.dtype)
    r = (taps - 1) // 2
    x = jnp.pad(image, ((r, r), (0, 0), (0, 0)), mode="edge")
    x = sum(k[i] * x[i:i + h] for i in range(taps))
    return jnp.einsum("hwc,vw->hvc", x, blur_matrix(k, w).astype(image.dtype))


def erase_rectangle(image: jax.Array, x0, y0, x1, y1, fill) -> jax.Array:
    """Paint the pixels whose centres lie in [x0, x1) x [y0, y1) (pixels) with `fill`.

    Pointwise (a comparison per pixel), so it fuses into the loop after the warp.
    """
    h, w = image.shape[:2]
    ys = jnp.arange(h, dtype=jnp.float32)[:, None, None] + 0.5
    xs = jnp.arange(w, dtype=jnp.float32)[None, :, None] + 0.5
    inside = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    return jnp.where(inside, jnp.asarray(fill, image.dtype), image)


def random_erase(key: jax.Array, image: jax.Array, prob: float, max_size: float) -> jax.Array:
    """With probability `prob`, one flat rectangle of a random grey level over the image.

    Sides uniform in [0.1, max_size] x the image side, centre anywhere in the image (the
    rectangle may be cut by the border). Keypoints keep their labels: the net has to place
    an occluded eye or mouth corner from the rest of the face (hands, hair, glasses and
    microphones in real pictures), which regularises it against the few people it learns
    from.
    """
    h, w = image.shape[:2]
    k_do, k_size, k_centre, k_fill = jax.random.split(key, 4)
    lo = min(0.1, max_size)
    size = jax.random.uniform(k_size, (2,), minval=lo, maxval=max_size) * jnp.array([w, h])
    centre = jax.random.uniform(k_centre, (2,)) * jnp.array([w, h])
    x0, y0 = centre - size / 2
    x1, y1 = centre + size / 2
    fill = jax.random.uniform(k_fill, ())
    erased = erase_rectangle(image, x0, y0, x1, y1, fill)
    return jnp.where(jax.random.bernoulli(k_do, prob), erased, image)


# ----------------------------------------------------------------------------- batches


def augment_example(key: jax.Array, image: jax.Array, keypoints_px: jax.Array, mask: jax.Array,
                    cfg, flip_permutation: np.ndarray = FLIP_PERMUTATION,
                    margin_px: float = 0.0) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One example: image (S, S, C) in [0, 1], keypoints_px (2K,), mask (2K,) bool.

    Draws each augmentation's parameters from its own stream of `key` (`stream_key`) and
    applies the enabled augmentations; the keypoint values under mask False are meaningless
    afterwards. `flip_permutation` names mirror partners (the data's `KeypointSet`);
    keypoints stay labelled up to `margin_px` outside the image (`transform_keypoints`).
    """
    s = read_settings(cfg)
    h, w = image.shape[:2]
    if h != w:
        raise ValueError(f"augment expects square images, got {h}x{w}")
    k_flip, k_affine, k_blur, k_photo, k_noise, k_erase = (
        stream_key(key, name)
        for name in ("flip", "affine", "blur", "photometric", "noise", "erase"))
    out, kp, m = image, keypoints_px, mask

    # Order matters for speed on XLA: it fuses producers into the warp's gathers (an
    # expensive step before the warp runs once per bilinear sample, 4x) and splits the
    # gathers out of their loop when a reduction or stencil reads the warped image (~5x
    # slower). So stencils and reductions (blur, the contrast mean) read the image before
    # the warp, and only pointwise steps follow it, fused into one loop over the pixels.
    if s.blur_prob > 0:
        k_do, k_sigma = jax.random.split(k_blur)
        sigma = jax.random.uniform(k_sigma, (), minval=BLUR_SIGMA_RANGE[0],
                                   maxval=BLUR_SIGMA_RANGE[1])
        out = jnp.where(jax.random.bernoulli(k_do, s.blur_prob), gaussian_blur(out, sigma), out)
    # The contrast pivot: the mean of the image before resampling (a warp moves pixels
    # about and changes the mean only through the edge fill).
    mean = jnp.mean(out) if s.contrast > 0 else None

    if s.flip:
        do_flip = jax.random.bernoulli(k_flip)
        if not s.affine:  # a pure flip is an exact copy: no resampling needed
            flipped = hflip(out, kp, m, flip_permutation, s.flip_label_offset_px)
            out, kp, m = (jnp.where(do_flip, f, o) for f, o in zip(flipped, (out, kp, m)))
    if s.affine:
        k_rot, k_scale, k_shift = jax.random.split(k_affine, 3)
        angle = jax.random.uniform(k_rot, (), minval=-1.0, maxval=1.0) * math.radians(
            s.rotate_deg)
        scale = 1.0 + jax.random.uniform(k_scale, (), minval=-1.0, maxval=1.0) * s.scale
        shift = jax.random.uniform(k_shift, (2,), minval=-1.0, maxval=1.0) * s.shift_px
        mirror = do_flip if s.flip else False
        # One resampling for flip + rotation + scale + shift; the keypoints take the flip
        # (with its left/right relabelling) first, then the same rotation/scale/shift.
        out = warp_image(out, affine_matrix(angle, scale, shift, mirror, centre=w / 2))
        if s.flip:
            fkp, fm = flip_keypoints_px(kp, m, w, flip_permutation, s.flip_label_offset_px)
            kp, m = jnp.where(do_flip, fkp, kp), jnp.where(do_flip, fm, m)
        kp, m = transform_keypoints(kp, m, affine_matrix(angle, scale, shift, centre=w / 2),
                                    size=w, margin_px=margin_px)

    if s.photometric:
        k_b, k_c, k_g = jax.random.split(k_photo, 3)
        u = lambda k: jax.random.uniform(k, (), minval=-1.0, maxval=1.0)  # noqa: E731
        brightness = u(k_b) * s.brightness if s.brightness > 0 else 0.0
        contrast = 1.0 + u(k_c) * s.contrast if s.contrast > 0 else 1.0
        gamma = jnp.exp(u(k_g) * math.log1p(s.gamma)) if s.gamma > 0 else 1.0
        out = adjust_photometric(out, brightness, contrast, gamma, mean=mean)
    if s.noise_std > 0:
        out = add_noise(k_noise, out, s.noise_std)
    if s.erase_prob > 0:
        out = random_erase(k_erase, out, s.erase_prob, s.erase_size)
    return out.astype(image.dtype), kp, m


def augment_batch(key: jax.Array, images: jax.Array, keypoints_px: jax.Array, mask: jax.Array,
                  cfg, flip_permutation: np.ndarray = FLIP_PERMUTATION, margin_px: float = 0.0
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Augment a batch on the device: images float (B, S, S, C) NHWC in [0, 1];
    keypoints_px float32 (B, 2K) pixels; mask bool (B, 2K). Same shapes out.

    Each example gets its own key (`jax.random.split(key, B)`), so results are deterministic
    in `key`. `cfg` (config.augment) is read at trace time; with every option off the inputs
    are returned unchanged, without tracing anything.
    """
    s = read_settings(cfg)
    if not s.any:
        return images, keypoints_px, mask
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(lambda k, i, p, m: augment_example(k, i, p, m, s, flip_permutation,
                                                       margin_px))(
        keys, images, keypoints_px, mask)
