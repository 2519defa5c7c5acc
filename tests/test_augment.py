"""Augmentation: geometry agrees with the keypoints, masks follow them, off means off."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from configs.default import get_config
from fkd_jax.data import augment as A
from fkd_jax.geometry.keypoints import IMAGE_SIZE, KEYPOINT_NAMES, as_points, column_indices

N = IMAGE_SIZE
LEFT_EYE, RIGHT_EYE = KEYPOINT_NAMES.index("left_eye_center"), KEYPOINT_NAMES.index(
    "right_eye_center")
ALL_ON = dict(flip=True, rotate_deg=20.0, scale=0.15, shift_px=6.0, brightness=0.2,
              contrast=0.3, gamma=0.3, noise_std=0.05, blur_prob=0.5)


def _augment(cfg):
    """augment_batch jitted with `cfg` closed over, as the training step calls it."""
    return jax.jit(lambda key, im, kp, m: A.augment_batch(key, im, kp, m, cfg))


def _blobs(points, sigma=1.5):
    """(B, 96, 96, 1) images, each a Gaussian blob centred on its (x, y) in pixels."""
    centres = np.arange(N) + 0.5  # pixel centres, per the convention
    x, y = points[:, 0, None, None], points[:, 1, None, None]
    img = np.exp(-((centres[None, None, :] - x) ** 2 + (centres[None, :, None] - y) ** 2)
                 / (2 * sigma ** 2))
    return img[..., None].astype(np.float32)


def _centroid(images):
    """Intensity-weighted centroid (B, 2) of (B, 96, 96, 1) images, in pixels."""
    img = np.asarray(images)[..., 0]
    centres = np.arange(N) + 0.5
    total = img.sum(axis=(1, 2))
    return np.stack([(img.sum(axis=1) * centres).sum(1) / total,
                     (img.sum(axis=2) * centres).sum(1) / total], axis=-1)


def _batch(b=8, seed=0):
    """Random images in [0, 1] (hitting both ends), keypoints on a 1/4-pixel grid, masks."""
    rng = np.random.default_rng(seed)
    images = rng.random((b, N, N, 1)).astype(np.float32)
    images[:, 0, 0], images[:, -1, -1] = 0.0, 1.0
    kp = (rng.integers(40, 344, (b, 30)) / 4).astype(np.float32)  # in [10, 86)
    mask = np.repeat(rng.random((b, 15)) > 0.3, 2, axis=1)
    return jnp.asarray(images), jnp.asarray(kp), jnp.asarray(mask)


def test_hflip_twice_is_the_identity_and_mirrors_pixels_and_names():
    images, kp, mask = _batch(3)
    once = jax.vmap(A.hflip)(images, kp, mask)
    twice = jax.vmap(A.hflip)(*once)
    # Exact: 96 - (96 - x) is exact in float32 for coordinates on a 1/4-pixel grid.
    for got, want in zip(twice, (images, kp, mask)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    np.testing.assert_array_equal(once[0], images[:, :, ::-1])
    # The left eye's mark is now where the (new) right eye is: x -> 96 - x.
    np.testing.assert_array_equal(as_points(once[1])[:, RIGHT_EYE, 0],
                                  N - as_points(kp)[:, LEFT_EYE, 0])
    np.testing.assert_array_equal(once[2][:, 2 * RIGHT_EYE], mask[:, 2 * LEFT_EYE])


def test_flip_only_config_flips_some_examples_exactly_and_keeps_the_others():
    images, kp, mask = _batch(32)
    out = _augment({"flip": True})(jax.random.key(1), images, kp, mask)
    flipped = jax.vmap(A.hflip)(images, kp, mask)
    is_flipped = np.all(np.asarray(out[0]) == np.asarray(flipped[0]), axis=(1, 2, 3))
    assert 0 < is_flipped.sum() < 32
    for got, yes, no in zip(out, flipped, (images, kp, mask)):
        want = np.where(is_flipped.reshape((-1,) + (1,) * (yes.ndim - 1)), yes, no)
        np.testing.assert_array_equal(np.asarray(got), want)


def test_rotation_by_90_degrees_moves_pixels_and_keypoints_alike():
    images, kp, mask = _batch(1)
    matrix = A.affine_matrix(np.pi / 2, 1.0, (0.0, 0.0))
    out, out_kp, out_mask = A.apply_affine(images[0], kp[0], mask[0], matrix)
    # Pixel centres map onto pixel centres: the warp is a rotation of the array (clockwise
    # on screen, since y points down), up to float32 rounding of cos(pi / 2) ~ -4e-8.
    np.testing.assert_allclose(out, np.rot90(images[0], k=-1, axes=(0, 1)), atol=1e-4)
    x, y = np.asarray(kp[0, 0::2]), np.asarray(kp[0, 1::2])
    np.testing.assert_allclose(out_kp[0::2], 96 - y, atol=1e-4)  # (x, y) -> (96 - y, x)
    np.testing.assert_allclose(out_kp[1::2], x, atol=1e-4)
    np.testing.assert_array_equal(out_mask, mask[0])


def test_a_dot_at_a_keypoint_stays_under_it_after_random_affines():
    b = 24
    rng = np.random.default_rng(3)
    kp = np.full((b, 30), 48.0, np.float32)  # the others at the centre: they stay inside
    kp[:, 0:2] = rng.uniform(32, 64, (b, 2))  # left eye: off the pixel grid, near the centre
    kp[:, 2:4] = kp[:, 0:2] + [-20.0, 3.0]  # right eye: elsewhere (the flip case below)
    images = jnp.asarray(_blobs(kp[:, 0:2]))
    mask = jnp.ones((b, 30), bool)
    for cfg in ({"rotate_deg": 30.0, "scale": 0.2, "shift_px": 8.0},
                {"flip": True, "rotate_deg": 30.0, "scale": 0.2, "shift_px": 8.0}):
        out, out_kp, out_mask = _augment(cfg)(jax.random.key(7), images, jnp.asarray(kp), mask)
        found = _centroid(out)
        pts = as_points(np.asarray(out_kp))
        # A flip relabels the left eye as the right eye; nothing else may explain the dot.
        err = np.minimum(np.linalg.norm(found - pts[:, LEFT_EYE], axis=1),
                         np.linalg.norm(found - pts[:, RIGHT_EYE], axis=1))
        assert err.max() < 0.5, err
        on_right = np.linalg.norm(found - pts[:, RIGHT_EYE], axis=1) < 0.5
        assert (0 < on_right.sum() < b) if cfg.get("flip") else not on_right.any()
        # The transforms were real: the dot moved by several pixels on average.
        assert np.linalg.norm(found - kp[:, 0:2], axis=1).mean() > 3.0
        assert np.asarray(out_mask).all()


def test_keypoints_pushed_out_of_the_image_lose_their_mask_and_only_those():
    kp = np.tile(np.array([10.0, 50.0], np.float32), 15)
    kp[column_indices(["nose_tip"])] = [80.0, 50.0]
    kp[column_indices(["mouth_left_corner"])] = [75.9, 20.0]  # lands at 95.9: inside
    kp[column_indices(["mouth_right_corner"])] = [76.0, 20.0]  # lands at 96.0: outside
    mask = np.ones(30, bool)
    mask[column_indices(["left_eye_center"])] = False  # missing and inside: stays missing
    matrix = A.affine_matrix(0.0, 1.0, (20.0, 0.0))
    moved, out_mask = A.transform_keypoints(jnp.asarray(kp), jnp.asarray(mask), matrix)
    np.testing.assert_allclose(moved, kp + np.tile([20.0, 0.0], 15), atol=1e-5)
    lost = set(column_indices(["nose_tip", "mouth_right_corner", "left_eye_center"]))
    np.testing.assert_array_equal(out_mask, [i not in lost for i in range(30)])
    # within a margin of 4.5 px the nose (at 100 px) and the mouth corner stay labelled
    _, kept = A.transform_keypoints(jnp.asarray(kp), jnp.asarray(mask), matrix, margin_px=4.5)
    np.testing.assert_array_equal(kept, mask)
    _, cut = A.transform_keypoints(jnp.asarray(kp), jnp.asarray(mask), matrix, margin_px=3.9)
    assert not cut[column_indices(["nose_tip"])].any()


def test_batch_masks_are_the_input_masks_of_keypoints_still_inside():
    images, kp, mask = _batch(64, seed=5)
    out, out_kp, out_mask = _augment({"shift_px": 40.0, "rotate_deg": 10.0})(
        jax.random.key(2), images, kp, mask)
    pts = as_points(np.asarray(out_kp))
    inside = np.repeat(np.all((pts >= 0) & (pts < N), axis=-1), 2, axis=1)
    np.testing.assert_array_equal(out_mask, np.asarray(mask) & inside)
    assert 0 < (np.asarray(mask) & ~inside).sum()  # some labelled keypoints did leave


def test_all_off_is_an_exact_no_op_that_traces_nothing():
    images, kp, mask = _batch(2)
    cfg = get_config().augment
    out = A.augment_batch(jax.random.key(0), images, kp, mask, cfg)
    assert all(o is i for o, i in zip(out, (images, kp, mask)))
    jaxpr = jax.make_jaxpr(lambda k, i, p, m: A.augment_batch(k, i, p, m, cfg))(
        jax.random.key(0), images, kp, mask)
    assert not jaxpr.eqns


def test_same_key_same_output_other_key_other_output():
    images, kp, mask = _batch(4)
    run = _augment(ALL_ON)
    a, b, c = (run(jax.random.key(s), images, kp, mask) for s in (11, 11, 12))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert not np.allclose(a[0], c[0]) and not np.allclose(a[1], c[1])


def test_everything_on_keeps_shapes_dtypes_and_the_unit_range():
    images, kp, mask = _batch(5)
    cfg = dict(ALL_ON, brightness=0.5, contrast=0.9, gamma=2.0, noise_std=0.3)
    out = _augment(cfg)(jax.random.key(3), images, kp, mask)
    for got, want in zip(out, (images, kp, mask)):
        assert got.shape == want.shape and got.dtype == want.dtype
    assert 0.0 <= float(out[0].min()) and float(out[0].max()) <= 1.0
    assert float(jnp.abs(out[0] - images).mean()) > 0.05  # it did something


def test_photometric_values_by_hand():
    x = jnp.array([0.0, 0.25, 0.5, 1.0])
    np.testing.assert_allclose(A.adjust_photometric(x, 0.1, 2.0, 1.0, mean=0.5),
                               [0.0, 0.1, 0.6, 1.0], atol=1e-6)  # clipped at both ends
    np.testing.assert_allclose(A.adjust_photometric(x, gamma=2.0), x ** 2, atol=1e-6)
    # Contrast pivots on the image's own mean (0.4375) when none is given.
    np.testing.assert_allclose(A.adjust_photometric(x, contrast=0.5),
                               0.4375 + 0.5 * (x - 0.4375), atol=1e-6)


def test_noise_has_the_requested_std_and_stays_in_range():
    img = jnp.full((N, N, 1), 0.5)
    out = A.add_noise(jax.random.key(0), img, 0.05)
    assert abs(float(jnp.std(out)) - 0.05) < 0.003
    edge = A.add_noise(jax.random.key(0), jnp.zeros((N, N, 1)), 0.05)
    assert float(edge.min()) == 0.0 and float(edge.max()) <= 1.0


@pytest.mark.parametrize("sigma", [0.5, 1.2])
def test_blur_matches_scipy_with_edge_padding(sigma):
    img = np.random.default_rng(0).random((N, N, 1)).astype(np.float32)
    kernel = np.asarray(A.gaussian_kernel(sigma))
    want = ndimage.correlate1d(ndimage.correlate1d(img, kernel, axis=0, mode="nearest"),
                               kernel, axis=1, mode="nearest")
    np.testing.assert_allclose(A.gaussian_blur(jnp.asarray(img), sigma), want, atol=1e-5)
    np.testing.assert_allclose(kernel.sum(), 1.0, atol=1e-6)


def test_blur_probability_one_blurs_every_image_and_zero_none():
    images, kp, mask = _batch(6)
    out = _augment({"blur_prob": 1.0})(jax.random.key(0), images, kp, mask)
    # Blurring smooths i.i.d. noise: the pixel variance drops in every image.
    assert np.all(np.asarray(out[0]).var(axis=(1, 2, 3)) < 0.5 * np.asarray(images).var(
        axis=(1, 2, 3)))
    np.testing.assert_array_equal(out[1], kp)


def test_each_augmentation_draws_from_its_own_stream():
    """Adding an augmentation (a new stream tag) leaves every other draw unchanged, and each
    augmentation's draw is the documented fold_in of the example's key."""
    images, kp, mask = _batch(8)
    cfg = {"flip": True, "rotate_deg": 20.0, "noise_std": 0.05}
    key = jax.random.key(7)
    before = _augment(cfg)(key, images, kp, mask)
    streams = dict(A.STREAMS)
    try:
        A.STREAMS["sharpen"] = max(streams.values()) + 1  # a future augmentation's stream
        after = jax.jit(lambda k, i, p, m: A.augment_batch(k, i, p, m, cfg))(key, images, kp, mask)
    finally:
        A.STREAMS.clear()
        A.STREAMS.update(streams)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert len(set(streams.values())) == len(streams)  # no two augmentations share a stream
    # The flip decision of example i is a Bernoulli draw of its "flip" stream alone.
    flips_only = _augment({"flip": True})(key, images, kp, mask)
    keys = jax.random.split(key, len(images))
    expected = [bool(jax.random.bernoulli(A.stream_key(k, "flip"))) for k in keys]
    flipped = [not np.array_equal(np.asarray(flips_only[0][i]), np.asarray(images[i]))
               for i in range(len(images))]
    assert flipped == expected
    # Switching rotation on does not change which examples are flipped: same pixels after
    # undoing nothing else, because flip decisions are read from the same stream.
    with_rotation = _augment({"flip": True, "rotate_deg": 1e-6})(key, images, kp, mask)
    mirrored = [np.abs(np.asarray(with_rotation[0][i]) - np.asarray(images[i])[:, ::-1]).max()
                < 1e-3 for i in range(len(images))]
    assert mirrored == expected


def test_erase_rectangle_paints_exactly_the_pixels_whose_centres_are_inside():
    img = jnp.zeros((8, 8, 1))
    out = np.asarray(A.erase_rectangle(img, 2.0, 3.0, 5.0, 4.0, 0.7))[..., 0]
    want = np.zeros((8, 8))
    want[3, 2:5] = 0.7  # centres y = 3.5 and x = 2.5, 3.5, 4.5
    np.testing.assert_allclose(out, want)


def test_erase_probability_one_occludes_every_image_with_one_flat_patch_keeping_labels():
    images, kp, mask = _batch(6)
    out, out_kp, out_mask = _augment({"erase_prob": 1.0, "erase_size": 0.5})(
        jax.random.key(3), images, kp, mask)
    for before, after in zip(np.asarray(images)[..., 0], np.asarray(out)[..., 0]):
        changed = np.argwhere(before != after)
        assert len(changed) > 0
        (r0, c0), (r1, c1) = changed.min(0), changed.max(0)
        patch = after[r0:r1 + 1, c0:c1 + 1]
        assert np.ptp(patch) == 0  # one grey level over one rectangle
        assert patch.shape[0] <= 0.5 * N + 1 and patch.shape[1] <= 0.5 * N + 1
    np.testing.assert_array_equal(out_kp, kp)
    np.testing.assert_array_equal(out_mask, mask)
    untouched = _augment({"erase_prob": 0.0})(jax.random.key(3), images, kp, mask)[0]
    np.testing.assert_array_equal(untouched, images)


@pytest.mark.parametrize("affine", [False, True])
def test_flip_mirrors_labels_about_their_contents_axis_when_they_sit_off_it(affine):
    """Labels that sit 0.4 px right of their content (a labelling convention) stay 0.4 px
    right of it in the mirrored image: mirrored about W / 2 + 0.4, not W / 2."""
    images, kp, mask = _batch(32)
    cfg = {"flip": True, **({"rotate_deg": 1e-6} if affine else {})}
    plain = _augment(cfg)(jax.random.key(4), images, kp, mask)
    offset = _augment({**cfg, "flip_label_offset_px": 0.4})(jax.random.key(4), images, kp, mask)
    np.testing.assert_array_equal(np.asarray(offset[0]), np.asarray(plain[0]))  # same pixels
    dx = np.asarray(offset[1]) - np.asarray(plain[1])
    # The flipped faces' x labels move by 2 x 0.4 px, the others' not at all; y never.
    flipped_rows = np.abs(dx[:, 0] - 0.8) < 1e-4
    assert 0 < flipped_rows.sum() < 32
    np.testing.assert_allclose(dx[flipped_rows][:, 0::2], 0.8, atol=1e-4)
    np.testing.assert_allclose(dx[~flipped_rows], 0.0, atol=1e-4)
    np.testing.assert_allclose(dx[:, 1::2], 0.0, atol=1e-4)
    # The rows that moved are the mirrored ones: their pixels differ from the input's.
    same = np.all(np.asarray(plain[0]) == np.asarray(images), axis=(1, 2, 3))
    assert not same[flipped_rows].any()
