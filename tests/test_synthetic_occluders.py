"""Hands, beards and hats over procedural faces (synthetic_occluders): seeded, labels kept,
faces without cover untouched, each cover where it belongs."""

from __future__ import annotations

import numpy as np
import pytest

from fkd_jax.data import synthetic, synthetic_occluders as occ
from fkd_jax.geometry.keypoints import KEYPOINT_NAMES

LEVERS = dict(pose=True, texture=True, camera=True, anatomy=True, shapes="filmed")


def test_occluders_are_seeded_cover_some_faces_and_keep_labels():
    img, kp = synthetic.generate_faces(300, seed=4, occluders=True, **LEVERS)
    head_img, head_kp = synthetic.generate_faces(5, seed=4, occluders=True, **LEVERS)
    np.testing.assert_array_equal(img[:5], head_img)  # face i depends only on (seed, i)
    np.testing.assert_array_equal(kp[:5], head_kp)
    bare_img, bare_kp = synthetic.generate_faces(300, seed=4, **LEVERS)
    np.testing.assert_array_equal(kp, bare_kp)  # cover never moves a label
    changed = (img != bare_img).reshape(len(img), -1).any(axis=1)
    expected = 1 - (1 - occ.HAND_P) * (1 - occ.BEARD_P) * (1 - occ.HAT_P)  # ~0.36
    assert abs(changed.mean() - expected) < 0.08
    # The faces without cover are the faces of the other levers, byte for byte.
    np.testing.assert_array_equal(img[~changed], bare_img[~changed])


def _frontal_face() -> np.ndarray:
    """One upright face (1, 30) px: eyes 30 px apart at y 38, nose 56, mouth 68-76."""
    at = {"left_eye_center": (63, 38), "right_eye_center": (33, 38),
          "left_eye_inner_corner": (56, 38), "left_eye_outer_corner": (70, 38),
          "right_eye_inner_corner": (40, 38), "right_eye_outer_corner": (26, 38),
          "left_eyebrow_inner_end": (55, 29), "left_eyebrow_outer_end": (74, 30),
          "right_eyebrow_inner_end": (41, 29), "right_eyebrow_outer_end": (22, 30),
          "nose_tip": (48, 56), "mouth_left_corner": (60, 70), "mouth_right_corner": (36, 70),
          "mouth_center_top_lip": (48, 67), "mouth_center_bottom_lip": (48, 76)}
    return np.array([c for name in KEYPOINT_NAMES for c in at[name]], np.float32)[None]


def _draws(**values: float) -> np.ndarray:
    """Uniforms (1, len(OCCLUDERS)) giving the named parameters their values, every cover off
    unless switched on by a value."""
    u = np.full((1, len(occ.OCCLUDERS)), 0.5, np.float32)
    for i, (name, lo, hi) in enumerate(occ.OCCLUDERS):
        if name.endswith("_on"):
            u[0, i] = 0.99  # off
        if name in values:
            u[0, i] = (values[name] - lo) / (hi - lo)
    return u


@pytest.mark.parametrize("cover, covered, bare", [
    (dict(hat_on=0.0, hat_edge=0.3, hat_level=0.1), [(48, 5), (20, 12)], [(63, 38), (48, 70)]),
    (dict(beard_on=0.0, beard_k=0.7, beard_lips=0.0), [(48, 88), (40, 80)], [(63, 38), (48, 71)]),
    (dict(hand_on=0.0, hand_a=1.3, hand_b=1.6, hand_turn=0.0), [(87, 86), (87, 93)],
     [(33, 38), (48, 56)]),
])
def test_each_cover_lies_where_it_belongs(cover, covered, bare):
    img = np.full((1, 96, 96), 0.5, np.float32)
    grain = np.zeros((1, 96, 96), np.float32)
    out = occ.occlude(img, _frontal_face(), _draws(**cover), grain, np.array([0.8], np.float32))
    for x, y in covered:
        assert abs(out[0, y, x] - 0.5) > 0.1, (x, y)
    for x, y in bare:
        assert out[0, y, x] == 0.5, (x, y)
