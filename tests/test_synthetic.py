"""Synthetic faces: determinism, shapes, features drawn on their keypoints, Kaggle files,
scripts/make_synthetic.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fkd_jax.geometry import face_shape_stats as stats
from fkd_jax.data import synthetic
from fkd_jax.errors import UserError
from fkd_jax.geometry.keypoints import COLUMNS, IMAGE_SIZE, KEYPOINT_NAMES, SPARSE_SET, column_indices

ROOT = Path(__file__).resolve().parents[1]
SPARSE_COLUMNS = [COLUMNS[j] for j in sorted(column_indices(SPARSE_SET))]


def xy(name: str) -> tuple[int, int]:
    i = KEYPOINT_NAMES.index(name)
    return 2 * i, 2 * i + 1


def test_shapes_dtypes_and_ranges():
    images, keypoints = synthetic.generate_faces(70, seed=1)  # more than one block of faces
    assert images.shape == (70, IMAGE_SIZE, IMAGE_SIZE) and images.dtype == np.uint8
    assert keypoints.shape == (70, len(COLUMNS)) and keypoints.dtype == np.float32
    assert np.isfinite(keypoints).all()
    assert keypoints.min() >= 0.0 and keypoints.max() <= IMAGE_SIZE
    assert images.min() < 40 and images.max() > 215  # uses the range
    assert images.reshape(70, -1).std(axis=1).min() > 10  # no blank images
    # Kaggle's convention: the subject's left eye (and mouth corner) on the image's right
    assert (keypoints[:, xy("left_eye_center")[0]] > keypoints[:, xy("right_eye_center")[0]]).all()
    assert (keypoints[:, xy("mouth_left_corner")[0]]
            > keypoints[:, xy("mouth_right_corner")[0]]).all()


def test_same_seed_same_faces_other_seed_other_faces():
    a_img, a_kp = synthetic.generate_faces(5, seed=3)
    b_img, b_kp = synthetic.generate_faces(5, seed=3)
    c_img, c_kp = synthetic.generate_faces(5, seed=4)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_kp, b_kp)
    assert not np.array_equal(a_img, c_img)
    assert np.abs(a_kp - c_kp).max() > 1.0


def test_face_i_depends_only_on_seed_and_i():
    long_img, long_kp = synthetic.generate_faces(70, seed=2)
    short_img, short_kp = synthetic.generate_faces(3, seed=2)
    np.testing.assert_array_equal(long_img[:3], short_img)
    np.testing.assert_array_equal(long_kp[:3], short_kp)
    assert len({img.tobytes() for img in long_img}) == 70


def test_keypoint_statistics_follow_the_fitted_shape_model():
    _, kp = synthetic.generate_faces(400, seed=0)
    mean, std = kp.mean(axis=0), kp.std(axis=0)
    real_std = np.array(stats.REAL_STD)
    assert np.abs(mean - np.array(stats.MEAN_SHAPE)).max() < 3 * real_std.max() / np.sqrt(400) + 0.3
    np.testing.assert_allclose(std, real_std, rtol=0.2)
    # a constant mean-face guess is clearly wrong (real complete rows: 3.18 px)
    assert 2.5 < np.sqrt(((kp - mean) ** 2).mean()) < 4.0
    # top lip above the bottom lip
    assert (kp[:, xy("mouth_center_bottom_lip")[1]] > kp[:, xy("mouth_center_top_lip")[1]]).all()


def _darkest_near(image: np.ndarray, x: float, y: float, radius: int = 4) -> tuple[float, float]:
    """Centre (x, y) of the darkest 3x3 neighbourhood within `radius` px of (x, y)."""
    padded = np.pad(image.astype(np.float64), 1, mode="edge")
    box = sum(padded[a:a + IMAGE_SIZE, b:b + IMAGE_SIZE] for a in range(3) for b in range(3))
    i0, j0 = int(np.floor(y)), int(np.floor(x))
    window = box[i0 - radius:i0 + radius + 1, j0 - radius:j0 + radius + 1]
    a, b = np.unravel_index(np.argmin(window), window.shape)
    return j0 - radius + b + 0.5, i0 - radius + a + 0.5  # pixel centres: (j + 0.5, i + 0.5)


def check_pupils_on_eye_centres(images: np.ndarray, kp: np.ndarray, share: float) -> None:
    """The darkest spot near each eye centre keypoint is the drawn pupil, in `share` of faces."""
    for name in ("left_eye_center", "right_eye_center"):
        cx, cy = xy(name)
        found = np.array([_darkest_near(im, k[cx], k[cy]) for im, k in zip(images, kp)])
        err = np.hypot(found[:, 0] - kp[:, cx], found[:, 1] - kp[:, cy])
        # Low, dark brows sometimes enter the search window; the pupil wins nearly always.
        assert np.median(err) < 0.6, name
        assert (err <= 1.5).mean() >= share, name


def test_pupils_are_drawn_on_the_eye_centres():
    images, kp = synthetic.generate_faces(200, seed=5, plain=True)
    _, kp_noisy = synthetic.generate_faces(200, seed=5)
    np.testing.assert_array_equal(kp, kp_noisy)  # plain only drops glasses, blur and noise
    check_pupils_on_eye_centres(images, kp, 0.95)


def test_mouth_opening_lies_between_the_lip_centres():
    images, kp = synthetic.generate_faces(200, seed=7, plain=True)
    tx, ty = xy("mouth_center_top_lip")
    _, by = xy("mouth_center_bottom_lip")
    for n in range(200):
        top, bottom = kp[n, ty], kp[n, by]
        r0, r1 = int(top) - 3, min(int(bottom) + 4, IMAGE_SIZE)
        column = images[n, r0:r1, int(kp[n, tx])]
        darkest = r0 + np.argmin(column) + 0.5
        assert top - 0.5 <= darkest <= bottom + 0.5, n


def test_kaggle_missing_mask_pattern():
    mask = synthetic.kaggle_missing_mask(5000, seed=0)
    assert mask.shape == (5000, 30) and mask.dtype == bool
    np.testing.assert_array_equal(mask[:, 0::2], mask[:, 1::2])  # x and y together
    complete = mask.all(axis=1)
    sparse = np.isin(COLUMNS, SPARSE_COLUMNS)
    sparse_only = (mask == sparse).all(axis=1)
    assert abs(complete.mean() - stats.FRACTION_COMPLETE) < 0.03
    assert abs(sparse_only.mean() - stats.FRACTION_SPARSE_ONLY) < 0.03
    assert 0.6 < 1 - complete.mean() < 0.8  # Kaggle: 4909 of 7049 rows are not complete
    np.testing.assert_array_equal(mask, synthetic.kaggle_missing_mask(5000, seed=0))
    np.testing.assert_array_equal(mask[:10], synthetic.kaggle_missing_mask(10, seed=0))
    assert not np.array_equal(mask, synthetic.kaggle_missing_mask(5000, seed=1))


def test_write_kaggle_files_round_trip(tmp_path):
    paths = synthetic.write_kaggle_files(tmp_path / "out", 12, seed=4, kaggle_missing=True,
                                         n_test=7)
    assert set(paths) == {"training", "test", "lookup"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "IdLookupTable.csv", "test.csv", "training.csv"]  # no temporary files left
    images, kp = synthetic.generate_faces(12 + 7, seed=4)
    mask = synthetic.kaggle_missing_mask(12, seed=4)
    assert not mask.all() and mask.any()

    train = pd.read_csv(paths["training"])
    assert list(train.columns) == [*COLUMNS, "Image"]
    assert len(train) == 12
    values = train[list(COLUMNS)].to_numpy()
    np.testing.assert_array_equal(~np.isnan(values), mask)
    np.testing.assert_array_equal(values[mask].astype(np.float32), kp[:12][mask])
    pixels = np.stack([np.array(s.split(), dtype=np.int64) for s in train["Image"]])
    assert pixels.shape == (12, IMAGE_SIZE * IMAGE_SIZE)
    np.testing.assert_array_equal(pixels.reshape(images[:12].shape), images[:12])
    first_row = paths["training"].read_text().splitlines()[1].split(",")
    assert [c == "" for c in first_row[:30]] == list(~mask[0])  # missing: empty cells

    test = pd.read_csv(paths["test"])
    assert list(test.columns) == ["ImageId", "Image"]
    assert test["ImageId"].tolist() == list(range(1, 8))
    test_pixels = np.stack([np.array(s.split(), dtype=np.int64) for s in test["Image"]])
    np.testing.assert_array_equal(test_pixels.reshape(images[12:].shape), images[12:])

    lookup = pd.read_csv(paths["lookup"], keep_default_na=False)
    assert list(lookup.columns) == ["RowId", "ImageId", "FeatureName", "Location"]
    assert lookup["RowId"].tolist() == list(range(1, len(lookup) + 1))
    assert (lookup["Location"] == "").all()
    per_image = lookup.groupby("ImageId")["FeatureName"].apply(list)
    n_full = round(stats.LOOKUP_FULL_FRACTION * 7)
    assert 0 < n_full < 7
    for image_id, names in per_image.items():
        assert names == (list(COLUMNS) if image_id <= n_full else SPARSE_COLUMNS)
    assert per_image.index.tolist() == list(range(1, 8))


def test_training_file_loads_with_the_project_loader(tmp_path):
    from fkd_jax.data.kaggle import load_training

    path = synthetic.write_kaggle_files(tmp_path, 9, seed=8, kaggle_missing=True)["training"]
    data = load_training(path)
    images, kp = synthetic.generate_faces(9, seed=8)
    np.testing.assert_array_equal(np.round(data.images[..., 0] * 255).astype(np.uint8), images)
    np.testing.assert_array_equal(data.mask, synthetic.kaggle_missing_mask(9, seed=8))
    np.testing.assert_array_equal(data.keypoints[data.mask], kp[data.mask])


def test_all_labels_present_without_kaggle_missing(tmp_path):
    path = synthetic.write_kaggle_files(tmp_path, 3, seed=0)["training"]
    assert not pd.read_csv(path)[list(COLUMNS)].isna().any().any()
    assert path.read_bytes().endswith(b"\n") and b"\r" not in path.read_bytes()


def run_cli(*args):
    return subprocess.run([sys.executable, "scripts/make_synthetic.py", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_output_is_byte_identical(tmp_path):
    outputs = []
    for name in ("a", "b"):
        proc = run_cli("--out", str(tmp_path / name), "--n", "6", "--seed", "11",
                       "--n_test", "3", "--kaggle_missing")
        assert proc.returncode == 0, proc.stderr
        outputs.append({p.name: p.read_bytes() for p in (tmp_path / name).iterdir()})
    assert sorted(outputs[0]) == ["IdLookupTable.csv", "test.csv", "training.csv"]
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("args, words", [
    (["--n", "0", "--seed", "1"], "--n"),
    (["--n", "five", "--seed", "1"], "--n"),
    (["--n", "3", "--seed", "-1"], "--seed"),
    (["--n", "3", "--seed", "1", "--n_test", "-2"], "--n_test"),
    (["--n", "3", "--seed", "1", "--n-test", "2"], "--n-test"),
    (["--n", "3"], "--seed"),
])
def test_cli_bad_arguments_one_line_exit_2(tmp_path, args, words):
    proc = run_cli("--out", str(tmp_path / "x"), *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()


def test_out_path_that_is_a_file_is_a_user_error(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(UserError, match="not a directory"):
        synthetic.write_kaggle_files(tmp_path / "f", 2, seed=0)


@pytest.mark.parametrize("n, seed", [(0, 0), (-1, 0), (2.5, 0), (2, -1), (True, 0)])
def test_bad_counts_and_seeds(n, seed):
    with pytest.raises(UserError):
        synthetic.generate_faces(n, seed)
