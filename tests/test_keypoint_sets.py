"""Keypoint sets beyond Kaggle's 15: the iBUG 68 mirror table, the square set (Kaggle's 15 + the
crop's square points), and runs of both end to end on generated data (train.py, eval.py and
predict.py as a user runs them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from fkd_jax.data import kaggle
from fkd_jax.data import preparation
from fkd_jax.geometry import keypoints
from fkd_jax.data import synthetic
from fkd_jax.training import steps
from fkd_jax.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


def _face68(kp15: np.ndarray, rng) -> np.ndarray:
    """Plausible 68 landmarks (N, 136) around Kaggle keypoints (N, 30): each iBUG point placed
    near the Kaggle keypoint of its region, so the set is learnable from the face image."""
    p = keypoints.as_points(kp15)
    idx = {"jaw": 10, "brow_r": 9, "brow_l": 7, "nose": 10, "eye_r": 1, "eye_l": 0,
           "mouth": 13}
    region = ["jaw"] * 17 + ["brow_r"] * 5 + ["brow_l"] * 5 + ["nose"] * 9 + ["eye_r"] * 6 + \
             ["eye_l"] * 6 + ["mouth"] * 20
    offsets = rng.uniform(-3, 3, size=(68, 2))
    pts = np.stack([p[:, idx[r]] for r in region], axis=1) + offsets[None]
    return pts.reshape(len(kp15), 136)


def test_ibug68_mirror_agrees_with_kaggle_flip_pairs():
    rng = np.random.default_rng(0)
    p68 = rng.uniform(10, 86, size=(4, 136)).astype(np.float32)
    flipped68 = keypoints.flip_keypoints_px(p68, None, 96, keypoints.IBUG68.flip_permutation)
    # Reading Kaggle's 15 out of the mirrored 68 equals mirroring the 15 read out.
    np.testing.assert_allclose(keypoints.kaggle15_from_ibug68(flipped68),
                               keypoints.flip_keypoints_px(keypoints.kaggle15_from_ibug68(p68)),
                               atol=1e-4)
    twice = keypoints.flip_keypoints_px(flipped68, None, 96, keypoints.IBUG68.flip_permutation)
    np.testing.assert_allclose(twice, p68, atol=1e-4)
    assert keypoints.IBUG68.columns[:2] == ("p0_x", "p0_y")


def test_a_68_point_prediction_is_framed_from_its_15_sure_points_not_its_jaw():
    from fkd_jax.geometry import framing

    _, kp15 = synthetic.generate_faces(3, seed=5)
    p68 = _face68(kp15, np.random.default_rng(0))
    for row in p68:
        own15 = keypoints.kaggle15_from_ibug68(row[None])[0]
        expected = framing.framing_from_keypoints(own15, rotate=True)
        assert framing.framing_from_keypoints(row, rotate=True) == expected
        wide_jaw = row.copy().reshape(68, 2)
        wide_jaw[:17, 0] = np.linspace(-40, 140, 17)  # a jaw far wider than the face
        assert framing.framing_from_keypoints(wide_jaw.reshape(-1), rotate=True) == expected


def _write_68_files(tmp_path, n=64, seed=1):
    paths = synthetic.write_kaggle_files(tmp_path / "faces", n, seed)
    kp15 = kaggle.load_training(paths["training"]).keypoints
    p68 = _face68(kp15, np.random.default_rng(seed))
    p68[0, :2] = [-3.0, 40.0]  # a jaw point outside the crop: counted as not labelled
    lines = [",".join(keypoints.IBUG68.columns)] + [",".join(f"{v:.3f}" for v in row)
                                                   for row in p68]
    lm = tmp_path / "landmarks68.csv"
    lm.write_text("\n".join(lines) + "\n")
    return paths["training"], lm, p68


def test_loader_reads_a_keypoint_file_row_for_row(tmp_path):
    train_csv, lm, p68 = _write_68_files(tmp_path, n=8)
    d = kaggle.load_training(train_csv, keypoints.IBUG68, lm)
    assert d.keypoint_set is keypoints.IBUG68 and d.keypoints.shape == (8, 136)
    assert not d.mask[0, :2].any() and d.mask[0, 2:].all() and d.mask[1:].all()
    np.testing.assert_allclose(d.keypoints[1:], p68[1:], atol=1e-3)
    # a model whose heatmaps reach past the crop keeps labels within its margin, no further
    assert kaggle.load_training(train_csv, keypoints.IBUG68, lm, margin_px=3.0).mask.all()
    assert not kaggle.load_training(train_csv, keypoints.IBUG68, lm, margin_px=2.9).mask[0, 0]
    short = tmp_path / "short.csv"
    short.write_text("\n".join(lm.read_text().splitlines()[:5]) + "\n")
    with pytest.raises(DataError, match="has 4 rows but .* has 8"):
        kaggle.load_training(train_csv, keypoints.IBUG68, short)


def test_a_68_landmark_run_trains_and_evaluates(tmp_path):
    train_csv, lm, _ = _write_68_files(tmp_path)
    workdir = tmp_path / "run68"
    args = ["--config", "configs/default.py", f"--config.data.train_path={train_csv}",
            "--config.data.keypoints=ibug68", f"--config.data.keypoints_path={lm}",
            "--config.model.name=heatmap", "--config.model.widths=(4,8)",
            "--config.train.batch_size=16",
            "--config.train.epochs=2", "--workdir", str(workdir)]
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and np.isfinite(records[-1]["val_rmse_px"])
    proc = subprocess.run([sys.executable, "eval.py", "--workdir", str(workdir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((workdir / "eval" / "metrics.json").read_text())
    assert {"p0", "p67", "group/jaw", "group/mouth"} <= set(report)
    assert report["rmse_px"] == pytest.approx(records[-1]["val_rmse_px"], rel=1e-4)


def test_the_square_set_adds_the_crops_square_points_to_kaggles_rows(tmp_path):
    paths = synthetic.write_kaggle_files(tmp_path / "faces", 6, seed=2)
    plain = kaggle.load_training(paths["training"])
    d = kaggle.load_training(paths["training"], keypoints.KAGGLE15_SQUARE)
    assert d.keypoint_set is keypoints.KAGGLE15_SQUARE and d.keypoints.shape == (6, 38)
    np.testing.assert_array_equal(d.keypoints[:, :30], plain.keypoints)
    np.testing.assert_array_equal(d.mask[:, :30], plain.mask)
    np.testing.assert_allclose(d.keypoints[:, 30:], np.tile([16, 16, 80, 16, 16, 80, 80, 80],
                                                            (6, 1)))
    assert d.mask[:, 30:].all()
    # Mirrored, the square points swap west and east and land on the same pixels.
    flipped = keypoints.flip_keypoints_px(d.keypoints, None, 96,
                                          keypoints.KAGGLE15_SQUARE.flip_permutation)
    np.testing.assert_allclose(flipped[:, 30:], d.keypoints[:, 30:])
    np.testing.assert_allclose(flipped[:, :30], keypoints.flip_keypoints_px(plain.keypoints))
    # Kaggle's missing-label pattern applies to the 15; the square points stay labelled.
    holey = preparation.impose_missing(d, np.zeros((3, 30), bool), seed=0)
    assert not holey.mask[:, :30].any() and holey.mask[:, 30:].all()


def test_the_square_sets_headline_rmse_is_over_the_face_points_only():
    truth = np.tile(np.concatenate([np.full(30, 40.0), keypoints.square_points_px()]), (4, 1))
    pred = truth.copy()
    pred[:, 30:] += 3.0  # the square points 3 px off in x and y, the face exact
    report = steps.rmse_report(pred, truth, np.ones_like(truth, bool),
                                  keypoints.KAGGLE15_SQUARE)
    assert report["rmse_px"] == 0.0 and report["group/square"] == pytest.approx(3.0)
    pred[:, :30] += 1.0
    assert steps.rmse_report(pred, truth, np.ones_like(truth, bool),
                                keypoints.KAGGLE15_SQUARE)["rmse_px"] == pytest.approx(1.0)


def test_a_square_run_trains_evaluates_and_predicts_on_a_photo(tmp_path):
    """train.py, eval.py and predict.py with `kaggle.keypoints=kaggle15_square`: the headline
    RMSE and NME are the 15 face points', and predict.py writes Kaggle's 30 columns."""
    workdir = tmp_path / "square"
    args = ["--config", "configs/default.py", "--config.data.synthetic_n=32",
            "--config.data.keypoints=kaggle15_square", "--config.model.name=simple_cnn",
            "--config.model.widths=(4,8,8)", "--config.train.batch_size=16",
            "--config.train.epochs=1", "--workdir", str(workdir)]
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, "eval.py", "--workdir", str(workdir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((workdir / "eval" / "metrics.json").read_text())
    assert {"square_top_west", "group/square", "nme"} <= set(report)
    record = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])
    assert report["rmse_px"] == pytest.approx(record["val_rmse_px"], rel=1e-4)
    face = [report[n] for n in keypoints.KEYPOINT_NAMES]
    assert min(face) <= report["rmse_px"] <= max(face)  # the 15's pooled RMSE, not the 19's

    images, _ = synthetic.generate_faces(1, 4)
    picture = np.full((160, 200), 100, np.uint8)
    picture[30:126, 50:146] = images[0]
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), picture)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "predict.py", "--workdir", str(workdir), "--out",
                           str(out), "--box", "50,30,96,96", str(photo)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(out / "keypoints.csv")
    assert len(table) == 1 and list(table.columns[8:38]) == list(keypoints.COLUMNS)
    assert list(table.columns[38:]) == [f"{n}_confidence" for n in keypoints.KEYPOINT_NAMES]
    assert np.isfinite(table[list(keypoints.COLUMNS)].to_numpy()).all()
    # all 19 points (the square's too) in landmarks.csv
    square = pd.read_csv(out / "landmarks.csv")
    assert list(square.columns[8:46]) == list(keypoints.KAGGLE15_SQUARE.columns)


def test_a_68_landmark_run_starts_from_a_15_keypoint_runs_features(tmp_path):
    """`train.init_from` across keypoint sets: every layer but the outputs comes from the
    15-keypoint run; the outputs start as a fresh 68-landmark run's would."""
    import jax

    from configs import default
    from fkd_jax.training import config_check, loop, restore

    def config(**data):
        c = default.get_config()
        c.model.name = "simple_cnn"
        c.model.widths, c.model.hidden = (4, 8), (16,)
        c.train.batch_size, c.train.epochs = 16, 1
        for k, v in data.items():
            c.data[k] = v
        config_check.check_config(c)
        return c

    def train(c, name):
        (tmp_path / name).mkdir()
        loop.train_and_evaluate(c, tmp_path / name)

    train_csv, lm, _ = _write_68_files(tmp_path)
    train(config(synthetic_n=64), "run15")
    fifteen = restore.load_run(tmp_path / "run15").params
    runs = {}
    for name, start in (("tuned", str(tmp_path / "run15")), ("scratch", None)):
        c = config(train_path=str(train_csv), keypoints="ibug68", keypoints_path=str(lm))
        c.train.learning_rate = 1e-12  # nothing moves: each run ends where it started
        c.train.init_from = start
        train(c, name)
        runs[name] = restore.load_run(tmp_path / name, "latest").params
    paths = [jax.tree_util.keystr(p) for p, _ in
             jax.tree_util.tree_flatten_with_path(runs["tuned"])[0]]
    outputs = {p for p, t, s in zip(paths, jax.tree.leaves(runs["tuned"]),
                                    jax.tree.leaves(fifteen)) if t.shape != s.shape}
    assert len(outputs) == 2  # the last layer's kernel and bias
    for path, tuned, pre, scratch in zip(paths, *map(jax.tree.leaves, (runs["tuned"], fifteen,
                                                                       runs["scratch"]))):
        if path in outputs:
            assert tuned.shape[-1] == 136 and np.allclose(tuned, scratch, atol=1e-6), path
        else:
            assert np.allclose(tuned, pre, atol=1e-6) and not np.allclose(scratch, pre), path
