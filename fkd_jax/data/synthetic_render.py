"""Drawing procedural faces around their keypoints (vectorised numpy over blocks of faces).

Everything derives from the keypoints, in the face's own frame (eye line as x axis,
interocular distance d as unit): background clutter, torso, neck, ears, hair and a shaded head
oval, then the features, drawn so that each sits exactly on its keypoints: iris and pupil
centred on the eye centre with the eyelids meeting at the eye corners, brows spanning their
inner/outer ends, the nose-tip highlight centred on the tip between the nostrils, the lip
outlines through the lip centres and the lips meeting at the corners. Then photometry: skin,
hair and background levels, sphere shading from a random light, a lighting gradient, contrast
and gamma, blur and noise. Floats only meet + - * / sqrt, floor and clip, so a seed gives the
same bytes on every machine (fkd_jax.data.synthetic).
"""

from __future__ import annotations

import numpy as np

from fkd_jax.geometry.keypoints import IMAGE_SIZE, KEYPOINT_NAMES

S = IMAGE_SIZE
_F = np.float32
_IDX = {name: i for i, name in enumerate(KEYPOINT_NAMES)}

# Per-face appearance parameters: (name, low, high), drawn uniformly in this order. Lengths in
# units of d (interocular distance) or of an eye's/brow's half-length where stated; levels in
# [0, 1] of the 0..255 range; k_* are darkening (or lightening) strengths.
APPEARANCE: tuple[tuple[str, float, float], ...] = (
    ("bg_level", 0.05, 0.95), ("bg_grad_x", -0.4, 0.4), ("bg_grad_y", -0.4, 0.4),
    *((f"cl{c}_{k}", lo, hi) for c in range(3) for k, lo, hi in (
        ("x", -10.0, 106.0), ("y", -10.0, 106.0), ("a", 3.0, 40.0), ("b", 3.0, 40.0),
        ("dx", -1.0, 1.0), ("dy", -1.0, 1.0), ("level", 0.0, 1.0), ("opacity", 0.2, 1.0))),
    ("stripe_on", 0.0, 1.0), ("stripe_freq", 0.03, 0.15), ("stripe_phase", 0.0, 1.0),
    ("stripe_amp", 0.03, 0.2), ("stripe_dx", -1.0, 1.0), ("stripe_dy", -1.0, 1.0),
    ("torso_level", 0.05, 0.9), ("torso_width", 1.7, 2.6),
    ("skin", 0.35, 0.85), ("hair_kind", 0.0, 1.0), ("hair_level", 0.0, 1.0),
    ("hair_top", 0.7, 1.25), ("hair_dip", 0.1, 0.5), ("hair_long", 0.0, 1.0),
    ("hair_len", 0.3, 1.8), ("hair_volume", 1.04, 1.3),
    *((f"blotch{c}_{k}", lo, hi) for c in range(2) for k, lo, hi in (
        ("x", -0.9, 0.9), ("y", -0.6, 1.4), ("r", 0.25, 0.7), ("k", -0.18, 0.18))),
    ("head_w", 0.95, 1.12), ("head_top", 1.15, 1.4), ("chin", 0.5, 0.68), ("jaw", 0.12, 0.3),
    ("light_x", -0.8, 0.8), ("light_y", -0.7, 0.15), ("ambient", 0.35, 0.65),
    ("eye_up", 0.4, 0.6), ("eye_lo", 0.3, 0.45),  # lid heights, x eye half-length
    ("iris", 0.42, 0.55), ("k_iris", 0.35, 0.7), ("k_pupil", 0.5, 0.8),  # iris radius, x half-len
    ("sclera", 0.95, 1.35), ("k_socket", 0.08, 0.35), ("k_lid", 0.3, 0.65),
    ("lid_w", 0.8, 1.6), ("k_crease", 0.05, 0.2),
    ("brow_t", 0.07, 0.13), ("brow_taper", 0.35, 0.75), ("brow_arch", 0.1, 0.35),
    ("k_brow", 0.3, 0.75),
    ("k_bridge", 0.05, 0.2), ("k_tip", 0.04, 0.18), ("k_nostril", 0.3, 0.65),
    ("k_alae", 0.08, 0.25), ("k_subnasal", 0.08, 0.3),
    ("lips_closed", 0.2, 0.3), ("k_lip", 0.2, 0.45), ("k_open", 0.55, 0.85),
    ("teeth", 0.0, 1.0), ("k_line", 0.35, 0.7), ("k_chin_shadow", 0.05, 0.22),
    ("glasses", 0.0, 1.0), ("glass_w", 0.36, 0.45), ("glass_h", 0.22, 0.32),
    ("glass_t", 0.7, 1.8), ("glass_level", 0.02, 0.35), ("lens", 0.85, 1.1),
    ("grad_x", -0.35, 0.35), ("grad_y", -0.35, 0.35), ("contrast", 0.7, 1.2),
    ("brightness", -0.08, 0.08), ("gamma", -0.35, 0.35), ("blur", 0.0, 1.2),
    ("noise", 0.0, 0.035),
)
# The `anatomy` lever (fkd_jax.data.synthetic) redraws these over APPEARANCE's: heads as wide as
# real jaws (2.2-2.6 interocular distances in the YouTube-Faces 68-point labels; APPEARANCE:
# 1.9-2.24), deep sockets (a dark band above the eye that is not the brow), faint to dark
# soft-edged brows, a duller sclera, a nose base as large and dark as a photo's (nose_scale).
ANATOMY: tuple[tuple[str, float, float], ...] = (
    ("head_w", 1.1, 1.3), ("k_socket", 0.25, 0.6), ("sclera", 0.9, 1.15), ("k_iris", 0.2, 0.55),
    ("k_brow", 0.1, 0.6), ("brow_soft", 0.9, 3.5), ("k_subnasal", 0.2, 0.5),
    ("k_alae", 0.15, 0.4), ("k_nostril", 0.35, 0.75), ("nose_scale", 1.2, 2.0),
    ("k_bridge", 0.1, 0.3),
)
_GLASSES_P = 0.12  # share of faces with glasses
_LONG_HAIR_P = 0.35
_TEETH_P = 0.5



# ---------------------------------------------------------------------------------------------
# Rendering helpers: arrays (B, H, W) float32 in [0, 1]; per-face values broadcast as (B, 1, 1).


def _c(x) -> np.ndarray:
    """Per-face values (B,) -> (B, 1, 1) for broadcasting against images."""
    return np.asarray(x, dtype=_F)[:, None, None]


def _unit(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, 2) vectors -> (unit vectors (B, 2), lengths (B,))."""
    length = np.sqrt((v * v).sum(axis=1))
    return v / np.maximum(length, 1e-6)[:, None], length


def _local(X, Y, origin, axis):
    """Coordinates of pixel centres in the frame at `origin` (B, 2) with x along `axis` (B, 2,
    unit) and y along the axis turned 90 degrees clockwise on screen (down when axis = +x)."""
    dx, dy = X - _c(origin[:, 0]), Y - _c(origin[:, 1])
    ax, ay = _c(axis[:, 0]), _c(axis[:, 1])
    return dx * ax + dy * ay, dy * ax - dx * ay


def _inside(dist, width=1.0):
    """Soft indicator of dist < 0 (dist in px, negative inside) with a linear edge of `width`.

    Overwrites `dist` (always a fresh temporary here) to save an allocation."""
    dist *= _F(-1.0 / width)
    dist += _F(0.5)
    return np.clip(dist, 0.0, 1.0, out=dist)


def _bump(r2):
    """Smooth compact blob (1 - r^2)^2 for r^2 < 1: a Gaussian-like falloff without exp."""
    t = np.clip(1.0 - r2, 0.0, 1.0)
    return t * t


def _patch(img, centre, size):
    """A (B, size, size) window of img around `centre` (B, 2) px, kept inside the image.

    Returns (patch copy, X (B, 1, size), Y (B, size, 1) pixel-centre coordinates, index); write
    back with img[index] = patch. Features are drawn in windows to save work.
    """
    b = len(img)
    origin = np.clip(np.floor(centre).astype(np.int64) - size // 2, 0, S - size)
    cols = origin[:, 0:1] + np.arange(size)
    rows = origin[:, 1:2] + np.arange(size)
    index = (np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :])
    return img[index], (cols + _F(0.5)).astype(_F)[:, None, :], \
        (rows + _F(0.5)).astype(_F)[:, :, None], index


def _darken(img, alpha, k):
    """Multiply by (1 - k * alpha): shading-preserving darkening (k < 0 lightens)."""
    img *= 1.0 - _c(k) * alpha


def _blend(img, alpha, level):
    """Paint `level` with opacity alpha."""
    img += alpha * (level - img)


class _Face:
    """Keypoints of a block of faces as (B, 2) points, plus the face frame derived from them."""

    def __init__(self, kp: np.ndarray):
        pts = kp.reshape(len(kp), -1, 2)
        self.pt = {name: pts[:, i] for name, i in _IDX.items()}
        le, re = self.pt["left_eye_center"], self.pt["right_eye_center"]
        self.mid = (le + re) / 2  # eye midpoint: face frame origin
        self.e, self.d = _unit(le - re)  # x axis (to the image's right), interocular distance
        self.f = np.stack([-self.e[:, 1], self.e[:, 0]], axis=1)  # y axis (down the face)

    def along(self, point, axis):
        """Signed distance (B,) of `point` from the eye midpoint along e or f."""
        return ((point - self.mid) * axis).sum(axis=1)

    def to_image(self, x, y):
        """Face-frame coordinates (B,) px -> image points (B, 2)."""
        return self.mid + x[:, None] * self.e + y[:, None] * self.f

    def pair_frame(self, a_name, b_name):
        """Frame of two keypoints ordered left-to-right on screen: (mid, unit axis, half-length,
        +1 where a_name is the right-hand one on screen else -1)."""
        a, b = self.pt[a_name], self.pt[b_name]
        a_right = self.along(a, self.e) > self.along(b, self.e)
        left = np.where(a_right[:, None], b, a)
        right = np.where(a_right[:, None], a, b)
        axis, length = _unit(right - left)
        return (left + right) / 2, axis, length / 2, np.where(a_right, 1.0, -1.0).astype(_F)


def render(kp: np.ndarray, p: dict, noise, plain: bool, texture=None, camera=None,
           cover=None) -> np.ndarray:
    """uint8 images (B, 96, 96) of the faces with keypoints kp (B, 30) px.

    texture: an optional multiplicative field (B, 96, 96) laid over face and background before
    the photometry; cover and camera: optional functions of the float image (B, 96, 96) in
    [0, 1], drawing occluders before the texture (synthetic_occluders) and applied last."""
    face = _Face(kp)
    img = _background(p)
    _head(img, face, p)
    for side in ("left", "right"):
        _eye(img, face, p, side)
    for side in ("left", "right"):
        _brow(img, face, p, side)
    _nose(img, face, p)
    _mouth(img, face, p)
    if not plain:
        _glasses(img, face, p)
    img = cover(img) if cover is not None else img
    if texture is not None:
        img *= texture
    X, Y = _grid()
    img *= 1.0 + _c(p["grad_x"]) * (X - S / 2) / S + _c(p["grad_y"]) * (Y - S / 2) / S
    img = np.clip((img - 0.5) * _c(p["contrast"]) + 0.5 + _c(p["brightness"]), 0.0, 1.0)
    img += _c(p["gamma"]) * img * (1.0 - img)
    if not plain:
        img = _blur(img, p["blur"])
        img += _c(p["noise"]) * noise
    if camera is not None:
        img = camera(np.clip(img, 0.0, 1.0))
    return np.floor(np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _grid():
    x = np.arange(S, dtype=_F) + _F(0.5)
    return x[None, None, :], x[None, :, None]


def _background(p: dict) -> np.ndarray:
    """Background: level and gradient, three soft rotated rectangles, sometimes stripes."""
    X, Y = _grid()
    img = (_c(p["bg_level"]) + _c(p["bg_grad_x"]) * (X - S / 2) / S
           + _c(p["bg_grad_y"]) * (Y - S / 2) / S + np.zeros((1, S, S), _F))
    for c in range(3):
        axis, _ = _unit(np.stack([p[f"cl{c}_dx"], p[f"cl{c}_dy"]], axis=1))
        centre = np.stack([p[f"cl{c}_x"], p[f"cl{c}_y"]], axis=1)
        u, v = _local(X, Y, centre, axis)
        dist = np.maximum(np.abs(u) - _c(p[f"cl{c}_a"]), np.abs(v) - _c(p[f"cl{c}_b"]))
        _blend(img, _inside(dist, 1.5) * _c(p[f"cl{c}_opacity"]), _c(p[f"cl{c}_level"]))
    axis, _ = _unit(np.stack([p["stripe_dx"], p["stripe_dy"]], axis=1))
    t = (X * _c(axis[:, 0]) + Y * _c(axis[:, 1])) * _c(p["stripe_freq"]) + _c(p["stripe_phase"])
    tri = np.abs(t - np.floor(t) - 0.5) * 2.0 - 0.5  # triangle wave in [-0.5, 0.5]
    img += _c(p["stripe_amp"] * (p["stripe_on"] < 0.3)) * tri
    return img


def _head(img, face: _Face, p: dict) -> None:
    """Torso, neck, ears, hair and the shaded head oval, drawn in the face frame.

    Whole-image work dominates the run time, so per-face scales are turned into reciprocals
    on (B, 1, 1) and full-size arrays are reused where that stays readable."""
    X, Y = _grid()
    d = _c(face.d)
    nose_x = face.along(face.pt["nose_tip"], face.e)
    mouth_y = face.along((face.pt["mouth_left_corner"] + face.pt["mouth_right_corner"]) / 2,
                         face.f)
    # Yaw: the features turn further than the head outline, so the oval sits opposite the nose.
    cx = np.clip(-1.3 * nose_x, -0.3 * face.d, 0.3 * face.d)
    top = -p["head_top"] * face.d
    chin = mouth_y + p["chin"] * face.d
    half_h, half_w = _c((chin - top) / 2), _c(p["head_w"] * face.d)
    # hx, hy: px from the head oval's centre, x along the eye line
    hx, hy = _local(X, Y, face.to_image(cx, (top + chin) / 2), face.e)
    skin = _c(p["skin"])

    # torso (shoulders) and neck
    a = hx * _c(1.0 / (p["torso_width"] * face.d))
    b = (hy - _c((chin - top) / 2 + 1.45 * face.d)) * _c(1.0 / (1.4 * face.d))
    _blend(img, _inside((np.sqrt(a * a + b * b) - 1.0) * d, 2.0), _c(p["torso_level"]))
    neck = np.maximum(np.abs(hx + _c(0.4 * cx)) - 0.6 * d, _c(0.8 * face.d - (top + chin) / 2) - hy)
    _blend(img, _inside(neck, 1.5), 0.72 * skin)
    # ears, both at once through |x|
    a = (np.abs(hx) - 0.97 * half_w) * _c(1.0 / (0.16 * face.d))
    b = (hy - _c(0.3 * face.d - (top + chin) / 2)) * _c(1.0 / (0.36 * face.d))
    _blend(img, _inside((np.sqrt(a * a + b * b) - 1.0) * 0.16 * d, 1.2), 0.9 * skin)

    # hair: dark, light or (about 1 in 10) bald, short or long
    kind, level = p["hair_kind"], p["hair_level"]
    hair_level = np.where(kind < 0.65, 0.03 + 0.27 * level,
                          np.where(kind < 0.9, 0.5 + 0.35 * level, p["skin"] * (0.8 + 0.3 * level)))
    hair_bottom = np.where(p["hair_long"] < _LONG_HAIR_P, p["hair_len"], -0.05) * face.d
    a = hx * _c(1.0 / p["hair_volume"]) / half_w
    b = (hy + 0.04 * half_h) * (1.0 / (1.05 * half_h))
    hair = _inside((np.sqrt(a * a + b * b) - 1.0) * half_w, 1.5)
    hair *= _inside(hy - _c(hair_bottom - (top + chin) / 2), 3.0)
    _blend(img, hair, _c(hair_level))

    # face oval: an egg, narrower at the jaw, cut at the top by the hairline
    t = hy * (1.0 / half_h)
    xs = hx / (half_w * (1.0 - _c(p["jaw"]) * np.clip(t, 0.0, 1.0)))
    xs2 = xs * xs
    oval = _inside((np.sqrt(xs2 + t * t) - 1.0) * half_w, 1.5)
    hairline = _c(-p["hair_top"] * face.d - (top + chin) / 2) + _c(p["hair_dip"] * face.d) * xs2
    skin_alpha = np.maximum(_inside(hairline - hy, 2.5), _c(kind >= 0.9))  # bald: no hairline
    skin_alpha *= oval
    _blend(img, skin_alpha, skin)

    # sphere shading of the whole head from a random light (z towards the viewer), then
    # uneven skin and shadows (cheeks, temples)
    lx, ly = p["light_x"], p["light_y"]
    norm = np.sqrt(lx * lx + ly * ly + 1.0)
    amb = p["ambient"]
    gain = (1.0 - amb) / norm / (amb + (1.0 - amb) / norm)  # so a front-facing point keeps 1
    nz = np.sqrt(np.clip(1.0 - (xs2 + t * t) * (1 / 1.15**2), 0.0, 1.0))
    lambert = np.clip(xs * _c(lx / 1.15) + t * _c(ly / 1.15) + nz, 0.0, None)
    shade = lambert * _c(gain) + _c(amb / (amb + (1.0 - amb) / norm))
    for c in range(2):
        inv_r = _c(1.0 / (p[f"blotch{c}_r"] * face.d))
        a = (hx - _c(p[f"blotch{c}_x"] * face.d - cx)) * inv_r
        b = (hy - _c(p[f"blotch{c}_y"] * face.d - (top + chin) / 2)) * inv_r
        shade *= 1.0 - _c(p[f"blotch{c}_k"]) * _bump(a * a + b * b)
    shade -= 1.0
    shade *= np.maximum(oval, hair)
    img *= shade + 1.0


def _eye(img, face: _Face, p: dict, side: str) -> None:
    """Socket shadow, sclera, iris and pupil centred on the eye centre, eyelids meeting at the
    two eye corners, lid margin and crease."""
    centre = face.pt[f"{side}_eye_center"]
    mid, axis, hl, _ = face.pair_frame(f"{side}_eye_inner_corner", f"{side}_eye_outer_corner")
    patch, X, Y, index = _patch(img, centre, 36)
    u, v = _local(X, Y, mid, axis)
    h = _c(hl)
    u = u / h
    offset = centre - mid
    uc = _c(np.clip((offset * axis).sum(1) / hl, -0.6, 0.6))
    vc = _c(offset[:, 1] * axis[:, 0] - offset[:, 0] * axis[:, 1])
    q = (1.0 - u * u) / (1.0 - uc * uc)  # 1 under the centre, 0 at the corners
    v_up = (vc - _c(p["eye_up"]) * h) * q
    v_lo = (vc + _c(p["eye_lo"]) * h) * q
    opening = _inside(np.maximum(v_up - v, v - v_lo), 0.9)

    _darken(patch, _bump((u / 1.5) ** 2 + ((v - vc + 0.35 * h) / (1.15 * h)) ** 2), p["k_socket"])
    patch *= 1.0 + opening * (_c(p["sclera"]) - 1.0)
    rr = np.sqrt((X - _c(centre[:, 0])) ** 2 + (Y - _c(centre[:, 1])) ** 2)
    r_iris = _c(p["iris"]) * h
    _darken(patch, _inside(rr - r_iris) * opening, p["k_iris"])
    _darken(patch, _inside(rr - 0.42 * r_iris) * opening, p["k_pupil"])
    ends = _inside((np.abs(u) - 1.0) * h, 0.8)
    lid_w = _c(p["lid_w"])
    _darken(patch, _inside(np.abs(v - v_up + 0.3 * lid_w) - lid_w / 2, 0.8) * ends, p["k_lid"])
    _darken(patch, _inside(np.abs(v - v_lo - 0.3) - 0.4, 0.8) * ends, 0.4 * p["k_lid"])
    crease = (vc - (_c(p["eye_up"]) + 0.45) * h) * q
    _darken(patch, _inside(np.abs(v - crease) - 0.5, 1.0) * _inside((np.abs(u) - 0.9) * h, 2.0),
            p["k_crease"])
    img[index] = patch


def _brow(img, face: _Face, p: dict, side: str) -> None:
    """A tapered, arched stroke from the inner to the outer end keypoint."""
    mid, axis, hl, inner_right = face.pair_frame(f"{side}_eyebrow_inner_end",
                                                 f"{side}_eyebrow_outer_end")
    patch, X, Y, index = _patch(img, mid, 40)
    u, v = _local(X, Y, mid, axis)
    h = _c(hl)
    u = u / h
    s = -u * _c(inner_right)  # -1 at the inner end, +1 at the outer end
    thick = _c(p["brow_t"] * face.d) * (1.0 - _c(1.0 - p["brow_taper"]) * (s + 1.0) / 2)
    centre_line = -_c(p["brow_arch"]) * h * (1.0 - u * u) * (1.0 + 0.3 * s)
    soft = _c(p["brow_soft"]) if "brow_soft" in p else 0.9  # edge width, px
    alpha = _inside(np.abs(v - centre_line) - thick / 2, soft) * _inside((np.abs(u) - 1.0) * h, 0.9)
    _darken(patch, alpha, p["k_brow"])
    img[index] = patch


def _nose(img, face: _Face, p: dict) -> None:
    """Bridge shadow on the side away from the light, tip highlight centred on the nose tip,
    nostrils and alae either side of it, shadow under it."""
    tip = face.pt["nose_tip"]
    root = (face.pt["left_eye_inner_corner"] + face.pt["right_eye_inner_corner"]) / 2
    down, length = _unit(tip - root)
    across = np.stack([down[:, 1], -down[:, 0]], axis=1)  # to the image's right
    patch, X, Y, index = _patch(img, (root + tip) / 2 + 0.1 * face.d[:, None] * down, 44)
    w, s = _local(X, Y, tip, across)  # w across the nose, s down it (0 at the tip)
    ln = _c(length)
    d = _c(face.d)
    n = d * _c(p["nose_scale"]) if "nose_scale" in p else d  # size of the nose base's shadows
    along = np.clip((s + 0.8 * ln) / (0.4 * ln), 0.0, 1.0) * _inside(s + 0.05 * d, 2.0)  # root..tip
    side = _c(np.where(p["light_x"] > 0, -1.0, 1.0))
    _darken(patch, _bump(((w - side * 0.12 * d) / (0.1 * d)) ** 2) * along, p["k_bridge"])
    _darken(patch, _bump((w * w + s * s) / (0.09 * d) ** 2), -p["k_tip"])
    wa = np.abs(w)
    _darken(patch, _bump(((wa - 0.19 * d) / (0.08 * n)) ** 2 + (s / (0.11 * n)) ** 2), p["k_alae"])
    _darken(patch, _bump(((wa - 0.1 * d) / (0.055 * n)) ** 2 + ((s - 0.06 * d) / (0.032 * n)) ** 2),
            p["k_nostril"])
    _darken(patch, _bump((w / (0.13 * n)) ** 2 + ((s - 0.14 * d) / (0.05 * n)) ** 2),
            p["k_subnasal"])
    img[index] = patch


def _mouth(img, face: _Face, p: dict) -> None:
    """Lips whose outer outlines pass through the top/bottom lip centres and meet at the mouth
    corners, the dark line (or opening, with teeth) between them, and the shadow below."""
    mid, axis, hl, _ = face.pair_frame("mouth_right_corner", "mouth_left_corner")
    top, bottom = face.pt["mouth_center_top_lip"], face.pt["mouth_center_bottom_lip"]
    centre = (face.pt["mouth_left_corner"] + face.pt["mouth_right_corner"] + top + bottom) / 4
    patch, X, Y, index = _patch(img, centre, 48)
    u, v = _local(X, Y, mid, axis)
    h = _c(hl)
    u = u / h

    def at(point):
        off = point - mid
        return (_c(np.clip((off * axis).sum(1) / hl, -0.7, 0.7)),
                _c(off[:, 1] * axis[:, 0] - off[:, 0] * axis[:, 1]))

    (ut, vt), (ub, vb) = at(top), at(bottom)
    qt, qb = (1.0 - u * u) / (1.0 - ut * ut), (1.0 - u * u) / (1.0 - ub * ub)
    gap = np.maximum(vb - vt, 0.5)
    closed = np.minimum(gap, _c(p["lips_closed"] * face.d))  # the lips' own thickness
    v_top, v_bottom = vt * qt, vb * qb
    v_upper_in, v_lower_in = (vt + 0.42 * closed) * qt, (vb - 0.58 * closed) * qb
    ends = _inside((np.abs(u) - 1.0) * h, 0.8)

    lips = _inside(np.maximum(v_top - v, v - v_bottom), 1.0)
    _darken(patch, lips, p["k_lip"])
    _darken(patch, _inside(np.maximum(v_top - v, v - v_upper_in), 1.0), 0.5 * p["k_lip"])
    opening = _inside(np.maximum(v_upper_in - v, v - v_lower_in), 0.9)
    teeth = _c(p["teeth"] < _TEETH_P) * _inside(v - (0.6 * v_upper_in + 0.4 * v_lower_in), 1.0)
    _blend(patch, opening, patch * (1.0 - _c(p["k_open"])) * (1.0 - teeth) + 0.8 * teeth)
    v_line = (v_upper_in + v_lower_in) / 2
    _darken(patch, _inside(np.abs(v - v_line) - 0.45, 0.9) * ends, p["k_line"])
    below = (v - (vb + 0.1 * _c(face.d))) / (0.1 * _c(face.d))
    _darken(patch, _bump(u * u / 0.8 + below * below), p["k_chin_shadow"])
    img[index] = patch


def _glasses(img, face: _Face, p: dict) -> None:
    """Frames around both eyes with a bridge and temple arms, on a share of the faces."""
    on = np.flatnonzero(p["glasses"] < _GLASSES_P)
    if len(on) == 0:
        return
    sub = img[on]
    X, Y = _grid()
    pick = lambda a: a[on]  # noqa: E731
    d = _c(pick(face.d))
    fx, fy = _local(X, Y, pick(face.mid), pick(face.e))
    ga, gb = _c(pick(p["glass_w"])) * d, _c(pick(p["glass_h"])) * d
    thick = _c(pick(p["glass_t"]))
    frame = np.zeros_like(sub)
    lens = np.zeros_like(sub)
    ys = []
    for side in ("left", "right"):
        c = pick(face.pt[f"{side}_eye_center"])
        cx = _c(((c - pick(face.mid)) * pick(face.e)).sum(1))
        cy = _c(((c - pick(face.mid)) * pick(face.f)).sum(1)) - 0.04 * d
        ys.append(cy)
        gx, gy = (fx - cx) / ga, (fy - cy) / gb
        gx, gy = gx * gx, gy * gy
        r = np.sqrt(np.sqrt(gx * gx + gy * gy))  # superellipse: a rounded rectangle
        frame = np.maximum(frame, _inside(np.abs(r - 1.0) * gb - thick / 2, 0.8))
        lens = np.maximum(lens, _inside((r - 1.0) * gb, 0.8))
        outward = np.sign(cx) * (fx - cx)  # away from the nose
        arm = np.maximum(np.maximum(np.abs(fy - cy + 0.3 * gb) - thick / 2, ga - outward),
                         np.sign(cx) * fx - 1.02 * d)
        frame = np.maximum(frame, _inside(arm, 0.8))
    bridge_y = (ys[0] + ys[1]) / 2 - 0.45 * gb
    inner = 0.5 * d - ga + 1.0
    bridge = np.maximum(np.abs(fy - bridge_y) - thick / 2, np.abs(fx) - inner)
    frame = np.maximum(frame, _inside(bridge, 0.8))
    sub *= 1.0 + lens * (_c(pick(p["lens"])) - 1.0)
    _blend(sub, frame, _c(pick(p["glass_level"])))
    img[on] = sub


def _blur(img, sigma) -> np.ndarray:
    """Separable blur with a per-face 7-tap biweight kernel of std ~sigma px (edges repeated)."""
    radius = np.maximum(2.65 * sigma, 0.5)[:, None]  # biweight std = radius / sqrt(7)
    taps = np.arange(-3, 4, dtype=_F)[None, :]
    w = np.clip(1.0 - (taps / radius) ** 2, 0.0, 1.0) ** 2
    w = (w / w.sum(axis=1, keepdims=True)).astype(_F)
    for axis in (1, 2):
        pad = [(0, 0)] * 3
        pad[axis] = (3, 3)
        padded = np.pad(img, pad, mode="edge")
        out = np.zeros_like(img)
        for k in range(7):
            window = padded[:, k:k + S, :] if axis == 1 else padded[:, :, k:k + S]
            out += _c(w[:, k]) * window
        img = out
    return img


