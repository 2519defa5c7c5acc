"""Keypoint names, flip pairs and the pixel convention."""

import numpy as np

from fkd_jax.geometry import keypoints as K


def test_columns_are_kaggles_order():
    assert len(K.COLUMNS) == 30
    assert K.COLUMNS[:4] == ("left_eye_center_x", "left_eye_center_y",
                             "right_eye_center_x", "right_eye_center_y")
    assert K.COLUMNS[-2:] == ("mouth_center_bottom_lip_x", "mouth_center_bottom_lip_y")
    assert K.COLUMNS[20:22] == ("nose_tip_x", "nose_tip_y")


def test_flip_pairs_swap_left_and_right_and_keep_the_midline():
    names = {(K.KEYPOINT_NAMES[a], K.KEYPOINT_NAMES[b]) for a, b in K.FLIP_PAIRS}
    assert ("left_eye_center", "right_eye_center") in names
    assert ("mouth_left_corner", "mouth_right_corner") in names
    assert ("left_eyebrow_outer_end", "right_eyebrow_outer_end") in names
    assert len(K.FLIP_PAIRS) == 6
    for mid in ("nose_tip", "mouth_center_top_lip", "mouth_center_bottom_lip"):
        i = K.KEYPOINT_NAMES.index(mid)
        assert K.KEYPOINT_FLIP_PERMUTATION[i] == i


def test_flip_twice_is_identity_with_mask():
    rng = np.random.default_rng(0)
    kp = rng.uniform(0, 96, (5, 30)).astype(np.float32)
    mask = rng.random((5, 30)) > 0.3
    once, m1 = K.flip_keypoints_px(kp, mask)
    twice, m2 = K.flip_keypoints_px(once, m1)
    np.testing.assert_allclose(twice, kp, atol=1e-5)
    np.testing.assert_array_equal(m2, mask)


def test_flip_follows_the_pixel_convention():
    # A mark in pixel column j (centre x = j + 0.5) lands in column 95 - j of the mirrored
    # image, whose centre is 96 - (j + 0.5): x -> 96 - x. Names swap sides.
    img = np.zeros((96, 96), np.float32)
    kp = np.zeros(30, np.float32)
    kp[0:2] = [66.5, 40.5]  # left eye centre (subject's left appears on the image's right)
    kp[2:4] = [30.5, 41.5]  # right eye centre
    img[40, 66] = 1.0
    mirrored = img[:, ::-1]
    row, col = np.argwhere(mirrored == 1.0)[0]
    flipped = K.flip_keypoints_px(kp)
    # the old left eye is now on the image's left, so it is the *right* eye of the mirrored face
    assert (flipped[2], flipped[3]) == (col + 0.5, row + 0.5)
    assert (flipped[0], flipped[1]) == (96 - 30.5, 41.5)


def test_normalised_round_trip_and_range():
    px = np.array([0.0, 48.0, 96.0, 12.25])
    u = K.to_normalised(px)
    np.testing.assert_allclose(u, [-1.0, 0.0, 1.0, 12.25 / 48 - 1])
    np.testing.assert_allclose(K.to_pixels(u), px)


def test_groups_cover_every_keypoint_once():
    grouped = [n for names in K.GROUPS.values() for n in names]
    assert sorted(grouped) == sorted(K.KEYPOINT_NAMES)
    np.testing.assert_array_equal(K.column_indices(["right_eye_center"]), [2, 3])
