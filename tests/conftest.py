"""Shared fixtures: tiny hand-made files in Kaggle's formats, written into tmp_path.

Tests never read real face data; these few rows stand in for it.
"""

from __future__ import annotations

import importlib.util
import os
import types
from pathlib import Path

import numpy as np
import pytest

from fkd_jax.geometry.keypoints import COLUMNS, IMAGE_SIZE, KEYPOINT_NAMES, SPARSE_SET, column_indices

# A plausible face in pixels (x, y per keypoint, Kaggle order), inside [0, 96].
_MEAN_FACE = np.array(
    [66.4, 37.7, 30.3, 37.9, 59.2, 37.9, 73.1, 37.6, 36.7, 37.9, 22.4, 38.0, 56.1, 29.3,
     79.5, 29.3, 39.3, 29.4, 15.9, 30.0, 48.4, 62.7, 63.3, 75.9, 32.9, 76.2, 47.9, 72.9,
     48.6, 78.9],
    dtype=np.float32,
)
COMPLETE_ROWS = (0, 1, 4)  # the other rows carry only SPARSE_SET, like most of Kaggle's
LACKS_BOTTOM_LIP = 5  # ... and this one also lacks mouth_center_bottom_lip


def load_benchmark(name: str) -> types.ModuleType:
    """benchmarks/<name>.py as a module (benchmarks/ is no package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def normal(seed: int, shape: tuple, scale: float = 1.0) -> np.ndarray:
    """Gaussian test data from numpy: jax.random compiles a kernel for every new shape
    (0.5-1.5 s each on 2 cores), which for tiny test arrays costs more than the test."""
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def uniform(seed: int, shape: tuple) -> np.ndarray:
    """Uniform [0, 1) test data from numpy (see `normal`)."""
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


@pytest.fixture(scope="session", autouse=True)
def _shared_compilation_cache(tmp_path_factory):
    """The suite runs train.py/eval.py as subprocesses many times on the same tiny models: a
    persistent XLA cache shared by all of them saves most of each one's compile time."""
    env = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
           "XDG_CACHE_HOME": str(tmp_path_factory.mktemp("user_cache")),  # never the user's
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _kaggle_like_rows(n_rows: int = 6) -> types.SimpleNamespace:
    """pixels uint8 (n, 96, 96), keypoints float32 (n, 30) pixels, mask bool (n, 30)."""
    i, j = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    pixels = np.stack([(2 * i + 3 * j + 17 * r) % 256 for r in range(n_rows)]).astype(np.uint8)
    pixels[:, 0, 0], pixels[:, -1, -1] = 0, 255  # both ends of the range occur
    keypoints = _MEAN_FACE + 0.5 * np.arange(n_rows, dtype=np.float32)[:, None]
    mask = np.zeros((n_rows, len(COLUMNS)), dtype=bool)
    mask[:, column_indices(SPARSE_SET)] = True
    mask[[r for r in COMPLETE_ROWS if r < n_rows]] = True
    if n_rows > LACKS_BOTTOM_LIP:
        mask[LACKS_BOTTOM_LIP, column_indices(["mouth_center_bottom_lip"])] = False
    keypoints = np.where(mask, keypoints, 0.0).astype(np.float32)
    return types.SimpleNamespace(pixels=pixels, keypoints=keypoints, mask=mask)


def _image_text(pixels: np.ndarray) -> str:
    return " ".join(map(str, pixels.ravel().tolist()))


@pytest.fixture
def kaggle_rows() -> types.SimpleNamespace:
    """The arrays behind `training_csv`: pixels, keypoints (0 where missing) and mask."""
    return _kaggle_like_rows()


@pytest.fixture
def training_csv(tmp_path, kaggle_rows):
    """A valid 6-row training.csv (3 complete rows, 3 with Kaggle's sparse pattern)."""
    lines = [",".join((*COLUMNS, "Image"))]
    for px, kp, m in zip(kaggle_rows.pixels, kaggle_rows.keypoints, kaggle_rows.mask):
        cells = [f"{v:.4f}" if ok else "" for v, ok in zip(kp, m)]
        lines.append(",".join(cells + [_image_text(px)]))
    path = tmp_path / "training.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def test_csv(tmp_path, kaggle_rows):
    """A valid test.csv: ImageId 1..3 with the first three fixture images."""
    lines = ["ImageId,Image"] + [
        f"{k + 1},{_image_text(px)}" for k, px in enumerate(kaggle_rows.pixels[:3])
    ]
    path = tmp_path / "test.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def lookup_csv(tmp_path):
    """A valid IdLookupTable.csv (CRLF, empty Location, as Kaggle ships it) for ImageIds 1..3."""
    rows = [(1, "left_eye_center_x"), (1, "nose_tip_y"), (2, KEYPOINT_NAMES[14] + "_y"),
            (3, "mouth_left_corner_x")]
    lines = ["RowId,ImageId,FeatureName,Location"] + [
        f"{k + 1},{image_id},{feature}," for k, (image_id, feature) in enumerate(rows)
    ]
    path = tmp_path / "IdLookupTable.csv"
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return path


# A 1-epoch tiny run (simple_cnn): plumbing, not accuracy (predict.py, fkd_jax.Detector).
TINY_RUN = ["--config", "configs/default.py", "--config.data.synthetic_n=32",
            "--config.train.batch_size=16", "--config.model.name=simple_cnn",
            "--config.model.widths=(4,8,8)", "--config.train.epochs=1"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run directory trained by train.py for one epoch on 32 synthetic faces (~15 s)."""
    import subprocess
    import sys

    workdir = tmp_path_factory.mktemp("tiny") / "run"
    proc = subprocess.run([sys.executable, "train.py", *TINY_RUN, "--workdir", str(workdir)],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return workdir


def face_scene(seed: int, size=(240, 320)) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 picture with one synthetic face pasted at 2x at (60, 20) (OpenCV's Haar
    cascade finds it), and its true keypoints (30,) in picture pixels."""
    import cv2

    from fkd_jax.data import synthetic

    images, kps = synthetic.generate_faces(1, seed)
    pic = np.full(size + (3,), (70, 110, 90), np.uint8)
    face = cv2.resize(images[0], (192, 192), interpolation=cv2.INTER_LINEAR)
    pic[20:212, 60:252] = face[..., None]
    kp = kps[0] * 2.0
    kp[0::2] += 60
    kp[1::2] += 20
    return pic, kp


def save_rgb(path: Path, rgb: np.ndarray) -> Path:
    """Write an RGB (or gray) uint8 picture by its suffix (folders made)."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
    assert cv2.imwrite(str(path), bgr)
    return path
