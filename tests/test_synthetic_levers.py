"""Photo-like levers of the procedural faces: 3D head pose (synthetic_pose), texture and camera
effects (synthetic_photo): seeded determinism, labels on the drawn features under pose,
shapes within the fitted statistics, effects that do not move features."""

from __future__ import annotations

import numpy as np
import pytest

from fkd_jax.data import synthetic, synthetic_photo, synthetic_pose
from fkd_jax.errors import UserError
from fkd_jax.geometry import face_shape_stats as stats
from fkd_jax.geometry.keypoints import IMAGE_SIZE, KEYPOINT_NAMES

ALL = dict(pose=True, texture=True, camera=True, anatomy=True)


def pts(kp: np.ndarray, name: str) -> np.ndarray:
    return kp.reshape(len(kp), -1, 2)[:, KEYPOINT_NAMES.index(name)]


def nose_offset(kp: np.ndarray) -> np.ndarray:
    """The nose tip's offset from the eyes' midpoint along the eye line, in interocular
    distances: how far the head is turned."""
    le, re, nose = pts(kp, "left_eye_center"), pts(kp, "right_eye_center"), pts(kp, "nose_tip")
    e = le - re
    d = np.hypot(e[:, 0], e[:, 1])
    return ((nose - (le + re) / 2) * e).sum(axis=1) / d ** 2


@pytest.mark.parametrize("levers", [dict(pose=True), dict(texture=True), dict(camera=True),
                                    dict(anatomy=True), ALL])
def test_levers_are_seeded_and_face_i_depends_only_on_seed_and_i(levers):
    a_img, a_kp = synthetic.generate_faces(70, seed=2, **levers)
    b_img, b_kp = synthetic.generate_faces(3, seed=2, **levers)
    np.testing.assert_array_equal(a_img[:3], b_img)
    np.testing.assert_array_equal(a_kp[:3], b_kp)
    c_img, _ = synthetic.generate_faces(3, seed=3, **levers)
    assert not np.array_equal(b_img, c_img)
    off_img, off_kp = synthetic.generate_faces(3, seed=2)
    assert not np.array_equal(b_img, off_img)  # the lever changes the faces ...
    if not levers.get("pose"):
        np.testing.assert_array_equal(b_kp, off_kp)  # ... and only pose moves keypoints


def test_levers_off_are_the_original_faces():
    img, kp = synthetic.generate_faces(5, seed=1)
    img_off, kp_off = synthetic.generate_faces(5, seed=1, pose=False, texture=False, camera=False,
                                               anatomy=False)
    np.testing.assert_array_equal(img, img_off)
    np.testing.assert_array_equal(kp, kp_off)


def test_pose_turns_heads_as_far_as_filmed_faces_and_keeps_them_inside():
    _, frontal = synthetic.generate_faces(600, seed=0)
    _, turned = synthetic.generate_faces(600, seed=0, pose=True)
    assert turned.min() >= 0.0 and turned.max() <= IMAGE_SIZE
    # Kaggle's labels: nose offset std ~0.10; YouTube-Faces landmarks: ~0.20
    assert 0.07 < nose_offset(frontal).std() < 0.13
    assert 0.14 < nose_offset(turned).std() < 0.3  # (measured 0.16)
    # the keypoints' mean (the crop centre) stays put, within the shrink of rare large turns
    centre = lambda kp: kp.reshape(len(kp), -1, 2).mean(axis=1)  # noqa: E731
    assert np.median(np.abs(centre(turned) - centre(frontal))) < 0.01
    # shapes within the fitted statistics: mean near the model's, spreads widened, not wild
    assert np.abs(turned.mean(axis=0) - np.array(stats.MEAN_SHAPE)).max() < 2.0
    ratio = turned.std(axis=0) / np.array(stats.REAL_STD)
    assert ratio.min() > 0.8 and ratio.max() < 2.5


def test_turn_shapes_geometry():
    _, kp = synthetic.generate_faces(8, seed=4)
    np.testing.assert_allclose(synthetic_pose.turn_shapes(kp, np.zeros((8, 3))), kp, atol=1e-4)
    yaw = np.zeros((8, 3))
    yaw[:, 0] = 0.3  # ~33 degrees toward the image's right
    turned = synthetic_pose.turn_shapes(kp, yaw)
    assert (nose_offset(turned) > nose_offset(kp) + 0.1).all()  # the nose swings across
    width = lambda k, a, b: np.abs(pts(k, a)[:, 0] - pts(k, b)[:, 0])  # noqa: E731
    assert (width(turned, "left_eye_inner_corner", "left_eye_outer_corner")
            < width(kp, "left_eye_inner_corner", "left_eye_outer_corner")).all()
    roll = np.zeros((8, 3))
    roll[:, 2] = 0.1  # ~11.4 degrees in the image plane: the eye line turns by that much
    e0 = pts(kp, "left_eye_center") - pts(kp, "right_eye_center")
    e1 = (pts(synthetic_pose.turn_shapes(kp, roll), "left_eye_center")
          - pts(synthetic_pose.turn_shapes(kp, roll), "right_eye_center"))
    turn = np.degrees(np.arctan2(e1[:, 1], e1[:, 0]) - np.arctan2(e0[:, 1], e0[:, 0]))
    np.testing.assert_allclose(turn, np.degrees(2 * np.arctan(0.1)), atol=0.01)


def test_pupils_are_drawn_on_the_eye_centres_of_turned_heads():
    from test_synthetic import check_pupils_on_eye_centres

    images, kp = synthetic.generate_faces(150, seed=5, plain=True, pose=True)
    _, kp_all = synthetic.generate_faces(150, seed=5, **ALL)
    np.testing.assert_array_equal(kp, kp_all)  # plain drops texture and camera, not pose
    check_pupils_on_eye_centres(images, kp, 0.93)


def _centroid(img: np.ndarray) -> np.ndarray:
    """Intensity centroid (x, y) of each image (B, 96, 96), pixel centres at +0.5."""
    c = np.arange(IMAGE_SIZE) + 0.5
    total = img.sum(axis=(1, 2))
    return np.stack([(img.sum(axis=1) * c).sum(1) / total, (img.sum(axis=2) * c).sum(1) / total], 1)


def test_camera_resampling_and_blur_do_not_move_features():
    img = np.zeros((4, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    img[:, 40:43, 50:53] = 1.0  # a dot centred at (51.5, 41.5)
    before = _centroid(img)
    low = synthetic_photo.low_resolution(img, np.array([1.0, 1.7, 2.0, 2.6]),
                                         np.array([0.0, 0.3, 0.5, 0.9]),
                                         np.array([0.2, 0.0, 0.7, 0.5]))
    assert low[3].max() < 0.9  # coarser: the dot spreads
    np.testing.assert_allclose(_centroid(low), before, atol=0.35)  # coarse grid: sub-pixel
    moved = synthetic_photo.motion_blur(img, np.array([0.0, 2.0, 4.0, 3.0], np.float32),
                                        np.array([1.0, 1.0, 0.3, -1.0], np.float32),
                                        np.array([0.0, 1.0, -1.0, 0.2], np.float32))
    np.testing.assert_allclose(_centroid(moved), before, atol=1e-3)
    assert moved[2].max() < 0.7  # smeared


def test_jpeg_blocks():
    rng = np.random.default_rng(0)
    img = np.clip(synthetic_photo.texture_field(
        [rng.random((2, g + 1, g + 1)) for g, _ in synthetic_photo.TEXTURE_LAYERS],
        np.ones((2, 5))) * 0.5, 0, 1).astype(np.float32)
    np.testing.assert_array_equal(synthetic_photo.jpeg_blocks(img, np.zeros(2)), img)
    out = synthetic_photo.jpeg_blocks(img, np.array([95.0, 20.0]))
    err = np.abs(out - img).mean(axis=(1, 2))
    assert err[0] < 0.004 < err[1] < 0.05  # high quality nearly lossless, low quality lossy
    basis = synthetic_photo._DCT
    np.testing.assert_allclose(basis @ basis.T, np.eye(8), atol=1e-6)  # orthonormal


def test_texture_field_is_centred_on_one():
    rng = np.random.default_rng(1)
    grids = [rng.random((16, g + 1, g + 1)) for g, _ in synthetic_photo.TEXTURE_LAYERS]
    field = synthetic_photo.texture_field(grids, rng.random((16, 5)))
    assert field.shape == (16, IMAGE_SIZE, IMAGE_SIZE)
    assert abs(field.mean() - 1.0) < 0.05
    assert 0.2 < field.min() and field.max() < 1.8


def test_anatomy_keeps_features_on_their_keypoints_and_darkens_the_nose_base():
    from test_synthetic import check_pupils_on_eye_centres

    images, kp = synthetic.generate_faces(150, seed=6, plain=True, anatomy=True)
    check_pupils_on_eye_centres(images, kp, 0.93)
    plain, kp_plain = synthetic.generate_faces(150, seed=6, plain=True)
    np.testing.assert_array_equal(kp, kp_plain)
    # Mean level in a window just below the nose tip (nostrils, shadow under the nose), relative
    # to the level between the eyes: darker with the larger, darker nose base.
    def base_contrast(img, kp):
        out = []
        for im, k in zip(img.astype(float), kp):
            nose = pts(k[None], "nose_tip")[0]
            d = np.hypot(*(pts(k[None], "left_eye_center") - pts(k[None], "right_eye_center"))[0])
            x, y = int(nose[0]), int(nose[1] + 0.12 * d)
            mid = (pts(k[None], "left_eye_center") + pts(k[None], "right_eye_center"))[0] / 2
            bridge = im[int(mid[1]) - 1:int(mid[1]) + 2, int(mid[0]) - 1:int(mid[0]) + 2].mean()
            out.append(im[y - 2:y + 3, x - 3:x + 4].mean() / bridge)
        return np.median(out)

    assert base_contrast(images, kp) < base_contrast(plain, kp_plain) - 0.05


def test_filmed_shapes_follow_their_own_fitted_model_with_the_same_draws():
    from fkd_jax.geometry import filmed_shape_stats as filmed

    img_k, kaggle = synthetic.generate_faces(800, seed=4)
    img_f, shapes = synthetic.generate_faces(800, seed=4, shapes="filmed")
    for kp, model in ((kaggle, stats), (shapes, filmed)):
        assert np.abs(kp.mean(axis=0) - np.array(model.MEAN_SHAPE)).max() < 1.5
        ratio = kp.std(axis=0) / np.array(model.REAL_STD)
        assert ratio.min() > 0.75 and ratio.max() < 1.3
    # the filmed convention puts the inner brow ends ~2 px higher than Kaggle's
    inner = pts(shapes, "left_eyebrow_inner_end")[:, 1].mean()
    assert inner < pts(kaggle, "left_eyebrow_inner_end")[:, 1].mean() - 1.0
    with pytest.raises(UserError, match="unknown shapes 'x'"):
        synthetic.generate_faces(2, seed=0, shapes="x")


def test_fit_face_shape_writes_a_shape_model_of_the_split_training_rows(tmp_path):
    import importlib.util
    import json
    import subprocess
    import sys
    from pathlib import Path

    from fkd_jax.geometry.keypoints import COLUMNS

    path = synthetic.write_kaggle_files(tmp_path, 60, seed=1)["training"]
    (tmp_path / "split.json").write_text(json.dumps({"train_row_ids": list(range(40)),
                                                     "val_row_ids": list(range(40, 60))}))
    out = tmp_path / "shape_stats.py"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "scripts/fit_face_shape.py", f"--labels={path}",
                           f"--split={tmp_path / 'split.json'}", "--shapes_only",
                           "--components=12", f"--out={out}"],
                          cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    spec = importlib.util.spec_from_file_location("shape_stats", out)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import pandas as pd

    rows = pd.read_csv(path)[list(COLUMNS)].to_numpy()[:40]
    np.testing.assert_allclose(module.MEAN_SHAPE, rows.mean(axis=0), atol=1e-3)
    assert len(module.COMPONENTS) == 12 and len(module.RESIDUAL_STD) == 30
    assert not hasattr(module, "FRACTION_COMPLETE")  # the shape model alone
