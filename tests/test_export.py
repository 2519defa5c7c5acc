"""Exported models (fkd_jax.inference.exported and onnx_model, export.py): same keypoints as the
checkpoint, any batch size, run with jax alone or onnxruntime; bad inputs are one-line errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import unet_pair
from fkd_jax import models
from fkd_jax.inference import exported, onnx_model
from fkd_jax.training import restore
from fkd_jax.inference import predictor as inference
from fkd_jax.geometry import keypoints
from fkd_jax.data import synthetic
from fkd_jax.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run() -> inference.Run:
    """unet_pair's net (heatmap_unet) with random parameters (no checkpoint needed: export
    takes a Run). Built from shapes (nnx.eval_shape): an eager init takes seconds."""
    config = unet_pair.get_config()
    model = nnx.eval_shape(lambda: models.create_model(config.model, keypoints.NUM_KEYPOINTS, 0))
    graphdef, abstract = nnx.split(model, nnx.Param)
    rng = np.random.default_rng(3)

    def draw(a):  # unit-variance activations: kernels scaled by 1/sqrt(fan-in)
        scale = 1.0 / np.sqrt(np.prod(a.shape[:-1])) if len(a.shape) > 1 else 1.0
        return jnp.asarray(rng.normal(0.0, scale, a.shape), a.dtype)

    params = jax.tree.map(draw, nnx.to_pure_dict(abstract))
    return inference.Run(config, graphdef, params, {"epoch": 0})


@pytest.fixture(scope="module")
def model_file(run, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("export") / "model.jaxexport"
    path.write_bytes(exported.export_run(run))
    return path


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    images, _ = synthetic.generate_faces(11, seed=5)
    return (images.astype(np.float32) / 255.0)[..., None]


@pytest.fixture(scope="module")
def reference(run, faces) -> dict[str, np.ndarray]:
    """The checkpoint's own Predictor on `faces`: keypoints in pixels, plain and with TTA."""
    predictor = inference.Predictor.from_run(run, batch_size=8)
    return {"plain": predictor(faces), "tta": predictor(faces, tta=True)}


def test_same_keypoints_as_the_checkpoint(run, model_file, faces, reference):
    assert reference["plain"].shape == (11, 30)
    assert np.ptp(reference["plain"], axis=0).mean() > 0.2  # the output depends on the face
    predictor = exported.load_predictor(model_file, batch_size=4)  # 3 calls, the last padded
    np.testing.assert_allclose(predictor(faces), reference["plain"], atol=2e-3)  # pixels
    # The mirror-image average works too (the keypoint set was read from the output width),
    # mirrored about the image's centre: the file carries no config, so the run's
    # augment.flip_label_offset_px (unet_pair: 0.4 px) is not applied, and the run's own TTA
    # sits that far right in x (docs/photo_pipeline.md, "Exported models").
    offset = run.config.augment.flip_label_offset_px
    assert offset > 0
    tta = predictor(faces, tta=True)
    np.testing.assert_allclose(tta[:, 0::2], reference["tta"][:, 0::2] - offset, atol=2e-3)
    np.testing.assert_allclose(tta[:, 1::2], reference["tta"][:, 1::2], atol=2e-3)


def test_the_artefact_has_a_symbolic_batch_and_three_platforms(model_file, faces, reference):
    model = jax.export.deserialize(bytearray(model_file.read_bytes()))
    assert set(model.platforms) == {"cpu", "cuda", "tpu"}
    (spec,) = model.in_avals
    assert not isinstance(spec.shape[0], int) and spec.shape[1:] == (96, 96, 1)
    assert spec.dtype == jnp.float32 and model.out_avals[0].shape[1] == 30
    # conv_impl "auto" chose per lowering platform: im2col matmuls for CPU, XLA's own
    # convolutions for GPU/TPU, both inside the one artefact.
    text = model.mlir_module()
    assert "stablehlo.convolution" in text and "stablehlo.dot_general" in text
    got_px = (np.asarray(model.call(faces[:3])) + 1.0) * 48.0  # a raw call, batch of 3
    np.testing.assert_allclose(got_px, reference["plain"][:3], atol=2e-3)


def test_runs_with_jax_alone(model_file, faces, reference, tmp_path):
    """The docstring's three lines, in a fresh interpreter that never imports fkd_jax."""
    np.save(tmp_path / "faces.npy", faces)
    script = textwrap.dedent(f"""
        import sys, jax, numpy as np
        images = np.load({str(tmp_path / 'faces.npy')!r})
        model = jax.export.deserialize(bytearray(open({str(model_file)!r}, "rb").read()))
        keypoints_px = (np.asarray(model.call(images)) + 1) * 48
        assert not any(m.startswith(("fkd_jax", "flax")) for m in sys.modules), "imported"
        np.save({str(tmp_path / 'out.npy')!r}, keypoints_px)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), reference["plain"], atol=2e-3)


def test_missing_or_corrupt_model_files_are_user_errors(model_file, tmp_path):
    with pytest.raises(UserError, match="no such file"):
        exported.load_predictor(tmp_path / "nope.jaxexport")
    with pytest.raises(UserError, match="directory"):
        exported.load_predictor(tmp_path)
    garbage = tmp_path / "garbage.jaxexport"
    garbage.write_bytes(b"\x00\x01not a model" * 50)
    with pytest.raises(UserError, match="garbage.jaxexport: not a jax.export model"):
        exported.load_predictor(garbage)
    cut = tmp_path / "cut.jaxexport"
    cut.write_bytes(model_file.read_bytes()[:5000])
    with pytest.raises(UserError, match="cut.jaxexport"):
        exported.load_predictor(cut)


@pytest.mark.parametrize("fn, channels, message", [
    (lambda x: x.sum(axis=(1, 2, 3))[:, None] * jnp.ones(7), 1, "none of the keypoint sets"),
    (lambda x: x.mean(axis=(1, 2, 3))[:, None] * jnp.ones(30), 3, "not a keypoint model"),
])
def test_an_exported_function_that_is_no_keypoint_model_is_refused(tmp_path, fn, channels,
                                                                   message):
    other = jax.export.export(jax.jit(fn))(jax.ShapeDtypeStruct((2, 96, 96, channels),
                                                                jnp.float32))
    path = tmp_path / "other.jaxexport"
    path.write_bytes(bytes(other.serialize()))
    with pytest.raises(UserError, match=message):
        exported.load_predictor(path)


def test_onnx_gives_the_checkpoints_keypoints_and_tta(run, faces, reference, tmp_path):
    """onnxruntime on the ONNX graph: within 1e-3 px of the checkpoint's own Predictor, plain
    and mirrored (the flip offset travels in the file's metadata), for any batch size."""
    path = tmp_path / "model.onnx"
    path.write_bytes(onnx_model.export_onnx(run))
    predictor = onnx_model.load_onnx_predictor(path, batch_size=4)  # 3 calls, the last padded
    assert predictor.flip_label_offset_px == run.config.augment.flip_label_offset_px
    np.testing.assert_allclose(predictor(faces), reference["plain"], atol=1e-3)
    np.testing.assert_allclose(predictor(faces, tta=True), reference["tta"], atol=1e-3)
    # a heatmap model's file carries each keypoint's spread (the confidence's input) too
    want_points, want_spread = inference.Predictor.from_run(run, 8).with_spread(faces)
    points, spread = predictor.with_spread(faces)
    assert spread.shape == (11, 15) and spread.min() > 0
    np.testing.assert_allclose(points, want_points, atol=1e-3)
    np.testing.assert_allclose(spread, want_spread, atol=1e-3)
    with pytest.raises(UserError, match="not a readable ONNX model"):
        garbage = tmp_path / "garbage.onnx"
        garbage.write_bytes(b"\x00garbage")
        onnx_model.load_onnx_predictor(garbage)


def test_an_onnx_model_locates_faces_without_importing_jax(run, tmp_path):
    """The start-up of a short predict.py run is mostly importing jax: Detector.load of an
    .onnx file, and the faces it finds with their confidences, need numpy and onnxruntime."""
    path = tmp_path / "model.onnx"
    path.write_bytes(onnx_model.export_onnx(run))
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        from fkd_jax.api import Detector
        detector = Detector.load({str(path)!r})
        faces = detector(np.full((200, 160), 128, np.uint8), boxes=[(30, 40, 100, 100)])
        assert len(faces) == 1 and np.isfinite(faces[0].confidence).all(), faces
        print(sorted(m for m in ("jax", "flax", "orbax", "optax") if m in sys.modules))
        """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --------------------------------------------------------------------------- export.py


def _export_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "export.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def _one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_export_cli_writes_a_model_that_matches_its_checkpoint(tmp_path, faces):
    """A real run directory (train.py, one tiny epoch), exported by the command, then loaded."""
    workdir = tmp_path / "run"
    subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", "configs/default.py",
                    "--workdir", str(workdir), "--config.train.epochs=1",
                    "--config.data.synthetic_n=64", "--config.train.batch_size=16",
                    "--config.model.widths=(4,8,8)"],
                   cwd=ROOT, check=True, capture_output=True, timeout=600)
    out = tmp_path / "exported" / "model.jaxexport"
    result = _export_cli("--workdir", str(workdir), "--out", str(out), "--checkpoint", "latest")
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout and out.is_file()
    assert [p.name for p in out.parent.iterdir()] == ["model.jaxexport"]  # no temporary left
    want = inference.Predictor.from_run(restore.load_run(workdir, "latest"), 8)(faces)
    np.testing.assert_allclose(exported.load_predictor(out, 8)(faces), want, atol=2e-3)

    # --format onnx, then predict.py --model on it: the same keypoints as the run's own.
    onnx = _export_cli("--workdir", str(workdir), "--format", "onnx", "--checkpoint", "latest")
    assert onnx.returncode == 0, onnx.stderr
    onnx_file = workdir / "model.onnx"
    np.testing.assert_allclose(onnx_model.load_onnx_predictor(onnx_file, 8)(faces), want,
                               atol=1e-3)
    sizes = onnx_model.onnx_predictors(onnx_file)  # one session, any batch size
    np.testing.assert_allclose(sizes(1)(faces), sizes(8)(faces), atol=1e-5)
    from conftest import face_scene, save_rgb

    photo = save_rgb(tmp_path / "photo.png", face_scene(4)[0])
    rows = {}
    for name, model in (("run", ["--workdir", str(workdir), "--checkpoint", "latest"]),
                        ("onnx", ["--model", str(onnx_file)])):
        done = subprocess.run([sys.executable, "predict.py", *model, "--out",
                               str(tmp_path / name), "--box", "60,20,192,192", str(photo)],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        rows[name] = np.loadtxt(tmp_path / name / "keypoints.csv", delimiter=",", skiprows=1,
                                usecols=range(8, 38))
    np.testing.assert_allclose(rows["onnx"], rows["run"], atol=0.011)  # 2-decimal CSV


def test_export_cli_bad_inputs_are_one_line_errors(tmp_path):
    _one_line_error(_export_cli("--workdir", str(tmp_path / "missing"), "--out",
                                str(tmp_path / "m.jaxexport")), "--workdir", "missing")
    not_a_run = tmp_path / "not_a_run"
    not_a_run.mkdir()
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    _one_line_error(_export_cli("--workdir", str(not_a_run), "--out",
                                str(a_file / "m.jaxexport")), "--out", "not a directory")
    _one_line_error(_export_cli("--workdir", str(not_a_run), "--out", str(tmp_path)),
                    "--out", "is a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "not_a_run"]
    assert list(not_a_run.iterdir()) == []
