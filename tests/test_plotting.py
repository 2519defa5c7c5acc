"""Figures: each writer makes a PNG of the expected size, atomically, and leaves no figure open."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (only to check that no figure is left open)
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from fkd_jax.evaluation import plots  # noqa: E402
from fkd_jax.data import synthetic  # noqa: E402
from fkd_jax.errors import exit_on_user_error  # noqa: E402
from fkd_jax.geometry.keypoints import COLUMNS, KEYPOINT_NAMES  # noqa: E402


@pytest.fixture(autouse=True)
def no_figures_left_open():
    assert plt.get_fignums() == []
    yield
    assert plt.get_fignums() == []


def png(path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def only_file_in(folder):
    return [p.name for p in folder.iterdir()]


def test_face_grid_size_and_no_leftovers(tmp_path):
    images, kp = synthetic.generate_faces(10, seed=0)
    pred = kp + 1.5
    mask = synthetic.kaggle_missing_mask(10, seed=0)
    out = tmp_path / "new" / "folder" / "grid.png"
    path = plots.plot_face_grid(out, images, kp, pred, mask, titles=[str(i) for i in range(10)],
                                   ncols=4)
    assert path == out
    pixels = png(out)
    assert pixels.shape[1] == 4 * 160  # 1.6 in per face at 100 dpi
    assert 3 * 160 < pixels.shape[0] < 3 * 200 + 60  # 3 rows, titles and a legend
    assert only_file_in(out.parent) == ["grid.png"]


def test_face_grid_accepts_float_nhwc_and_a_single_column(tmp_path):
    images, kp = synthetic.generate_faces(2, seed=1)
    floats = (images / 255.0).astype(np.float32)[..., None]
    pixels = png(plots.plot_face_grid(tmp_path / "g.png", floats, kp, ncols=1))
    assert pixels.shape[1] == 160


def test_keypoints_land_on_their_pixels(tmp_path):
    """With extent=(0, W, H, 0), a keypoint at (j + 0.5, i + 0.5) covers pixel (i, j). A tiny
    8x8 image is drawn in the same 160-px cell, so one image pixel spans 20 figure pixels."""
    size, i, j = 8, 2, 5
    image = np.zeros((1, size, size), np.uint8)
    image[0, i, j] = 255
    kp = np.full((1, 30), np.nan)
    kp[0, 0:2] = (j + 0.5, i + 0.5)  # left_eye_center: drawn red
    plain = png(plots.plot_face_grid(tmp_path / "a.png", image, ncols=1)).astype(int)
    marked = png(plots.plot_face_grid(tmp_path / "b.png", image, kp, ncols=1)).astype(int)

    def face_area(fig):  # the black image within the figure (the legend adds height on top)
        black = (fig < 30).all(axis=-1)
        rows, cols = np.flatnonzero(black.sum(1) > 100), np.flatnonzero(black.sum(0) > 100)
        return fig[rows.min():rows.max() + 1, cols.min():cols.max() + 1]

    plain, marked = face_area(plain), face_area(marked)
    assert plain.shape == marked.shape and abs(plain.shape[0] - 160) <= 3
    white = np.argwhere((plain > 200).all(axis=-1)).mean(axis=0) + 0.5
    red = np.argwhere((marked[..., 0] > 200) & (marked[..., 1] < 90)
                      & (marked[..., 2] < 90)).mean(axis=0) + 0.5
    scale = plain.shape[0] / size
    np.testing.assert_allclose(white, (np.array([i, j]) + 0.5) * scale, atol=1.5)
    np.testing.assert_allclose(red, white, atol=1.5)  # a wrong extent is off by 10 px


def test_missing_keypoints_are_not_drawn(tmp_path):
    images, kp = synthetic.generate_faces(2, seed=2)
    none = np.zeros(kp.shape, bool)
    hidden = png(plots.plot_face_grid(tmp_path / "a.png", images, kp, mask=none))
    nan = png(plots.plot_face_grid(tmp_path / "b.png", images, np.full(kp.shape, np.nan)))
    shown = png(plots.plot_face_grid(tmp_path / "c.png", images, kp))
    np.testing.assert_array_equal(hidden, nan)
    assert not np.array_equal(hidden, shown)


def test_face_grid_rejects_mismatched_shapes(tmp_path):
    images, kp = synthetic.generate_faces(2, seed=3)
    with pytest.raises(ValueError, match="keypoints_px"):
        plots.plot_face_grid(tmp_path / "x.png", images, kp[:1])
    with pytest.raises(ValueError, match="titles"):
        plots.plot_face_grid(tmp_path / "x.png", images, titles=["one"])
    assert not (tmp_path / "x.png").exists()


def test_learning_curves(tmp_path):
    records = [{"epoch": e, "train_loss": 0.1 / e, "train_rmse_px": 4.0 / e,
                "val_rmse_px": 5.0 / e + 1.0} for e in range(1, 8)]
    records[3]["val_rmse_px"] = None  # epochs without evaluation are skipped
    pixels = png(plots.plot_learning_curves(tmp_path / "lc.png", records))
    assert pixels.shape[:2] == (380, 1000)
    assert pixels.std() > 10  # something is drawn


def test_per_keypoint_errors(tmp_path):
    rmse = {name: 1.0 + 0.1 * k for k, name in enumerate(KEYPOINT_NAMES)}
    rmse["nose_tip"] = float("nan")  # never labelled: listed as n/a
    pixels = png(plots.plot_per_keypoint_errors(tmp_path / "pk.png", rmse))
    assert pixels.shape[1] == 700 and pixels.shape[0] == int(100 * (0.8 + 0.3 * 15))


def test_overlay_on_a_large_image(tmp_path):
    kp = np.linspace(10, 190, len(COLUMNS))
    pixels = png(plots.plot_overlay(tmp_path / "o.png", np.full((200, 300), 90, np.uint8), kp))
    assert pixels.shape[1] == 600


def plot_faces(argv: list[str]) -> None:
    """scripts/plot_faces.py's main, in this process, with its one-line errors (exit 2)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "plot_faces.py"
    spec = importlib.util.spec_from_file_location("plot_faces", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    exit_on_user_error(module.main)(["plot_faces.py", *argv])


def test_script_draws_a_grid_from_a_kaggle_file(tmp_path, capsys):
    path = synthetic.write_kaggle_files(tmp_path, 6, seed=0, kaggle_missing=True)["training"]
    plot_faces(["--data", str(path), "--out", str(tmp_path / "f" / "g.png"), "--n", "4",
                "--seed", "1"])
    assert "4 of 6" in capsys.readouterr().out
    assert png(tmp_path / "f" / "g.png").shape[1] == 4 * 160


@pytest.mark.parametrize("args, words", [
    (["--n", "0"], "--n"),
    (["--out", "x.jpg2"], "--out"),
    (["--data", "missing.csv"], "missing.csv"),
    (["--histogram"], "--histogram"),
    (["grid"], "'grid'"),
])
def test_script_bad_arguments(tmp_path, capsys, args, words):
    path = synthetic.write_kaggle_files(tmp_path, 2, seed=0)["training"]
    full = list(args)
    for flag, value in {"--data": str(path), "--out": str(tmp_path / "g.png")}.items():
        if flag not in full:
            full += [flag, value]
    with pytest.raises(SystemExit) as e:
        plot_faces(full)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]
    assert not (tmp_path / "g.png").exists()
