"""The learned face detector: its canvas, training pictures, targets and decoding agree with
one another; a trained net exports to ONNX unchanged; the pipeline starts from its squares,
trusts its faces without the cascade's second look and falls back to the cascade without
them; the command line trains and uses it."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import face_scene, save_rgb
from fkd_jax.data import face_scenes
from fkd_jax.data.face_scenes import INPUT_SIZE, STRIDE, to_canvas
from fkd_jax.geometry import face_shape_stats, keypoints
from fkd_jax.geometry import framing as geo
from fkd_jax.pictures import detection, location
from fkd_jax.pictures.face_net_detector import FINE_SCALE, NetFaceDetector, decode

ROOT = Path(__file__).resolve().parents[1]
MEAN = np.asarray(face_shape_stats.MEAN_SHAPE, np.float64)


def encoded(squares, size=INPUT_SIZE) -> np.ndarray:
    """Net outputs (1, G, G, 6) that say exactly `squares` (canvas pixels): what a perfect
    detector would answer."""
    heat, reg, centres, _ = face_scenes.targets([squares], size)
    return np.concatenate([np.where(centres, 9.0, -9.0)[..., None], reg], -1).astype(np.float32)


def test_the_fine_canvas_is_the_resized_picture_padded_to_multiples_of_32():
    pic = np.full((100, 200), 50, np.uint8)
    pic[40:60, 100:120] = 250
    canvas = face_scenes.to_fine_canvas(pic, 1.5)
    assert canvas.shape == (160, 320)  # 150 x 300, sides up to 32's
    assert canvas[63:87, 153:177].min() == pytest.approx(250 / 255, abs=1e-6)
    assert np.all(canvas[150:] == pytest.approx(pic.mean() / 255, abs=1e-4))  # the fill


def test_to_canvas_shrinks_the_picture_into_the_top_left_corner():
    pic = np.full((100, 200), 50, np.uint8)
    pic[40:60, 100:120] = 250
    canvas, scale = to_canvas(pic)
    assert canvas.shape == (INPUT_SIZE, INPUT_SIZE) and scale == INPUT_SIZE / 200
    assert canvas[32:48, 80:96].min() == pytest.approx(250 / 255, abs=1e-6)
    assert canvas[:80, :][canvas[:80, :] < 0.5].max() == pytest.approx(50 / 255, abs=1e-6)
    assert np.all(canvas[80:] == pytest.approx(pic.mean() / 255, abs=1e-4))  # the fill


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("tilt", [0.0, 0.5])
def test_a_placed_faces_square_is_the_training_rule_on_its_placed_keypoints(flip, tilt):
    """The label of a moved (and mirrored) face equals the square its moved keypoints frame."""
    kp = geo.Framing(130.0, 110.0, 120.0, 0.2).to_picture(MEAN)
    face = geo.framing_from_keypoints(kp, rotate=True)
    m = face_scenes._placement(face, 60.0, tilt, flip, (70.0, 90.0))
    moved_kp = (keypoints.as_points(kp) @ m[:, :2].T + m[:, 2]).reshape(-1)
    if flip:  # the subject's left eye is now on the other side: names swap
        moved_kp = keypoints.as_points(moved_kp)[keypoints.FLIP_PERMUTATION[0::2] // 2].reshape(-1)
    want = geo.framing_from_keypoints(moved_kp, rotate=True)
    got = face_scenes._moved(face, m, flip, tilt)
    assert (got.cx, got.cy) == pytest.approx((want.cx, want.cy), abs=0.02 * want.side)
    assert got.side == pytest.approx(want.side, rel=0.02)
    assert math.remainder(got.angle - want.angle, 2 * math.pi) == pytest.approx(0, abs=1e-6)


def test_composed_canvases_show_each_labelled_face_where_its_square_says(monkeypatch):
    """A photo marked at its face's centre (bright) and on the square's x axis (mid grey):
    on every canvas the marks sit at the labelled square's centre and along its angle."""
    monkeypatch.setattr(face_scenes, "_relight", lambda rng, img: img)
    photo = np.zeros((200, 200), np.uint8)
    face = geo.Framing(100.0, 90.0, 100.0, 0.3)
    for value, (x, y) in ((255, (face.cx, face.cy)),
                          (128, face.to_picture(np.array([48.0 + 30, 48.0])))):
        photo[int(y) - 3:int(y) + 4, int(x) - 3:int(x) + 4] = value
    rng = np.random.default_rng(0)
    canvases, squares = face_scenes.compose(rng, [photo], [[face]], 40)
    checked = 0
    for canvas, faces in zip(canvases, squares):
        for f in faces:
            if min(f.cx, f.cy) < 6 or max(f.cx, f.cy) > INPUT_SIZE - 6 or f.side < 45:
                continue
            assert canvas[int(f.cy), int(f.cx)] > 0.9  # the bright mark
            # The grey mark, on the square's x axis: on the far side when mirrored (the
            # subject's left and right swap, and the axis runs from right eye to left eye).
            marks = [f.to_picture(np.array([48.0 + d, 48.0])) for d in (30, -30)]
            if np.min(marks) < 0 or np.max(marks) >= INPUT_SIZE:
                continue
            values = [canvas[int(m[1]), int(m[0])] for m in marks]
            assert max(values) == pytest.approx(128 / 255, abs=0.1)
            checked += 1
    assert checked >= 5


def test_background_tiles_show_no_part_of_a_face():
    photo = np.full((240, 240), 60, np.uint8)
    face = geo.Framing(110.0, 120.0, 60.0)
    photo[90:150, 80:140] = 255  # the face's square
    photo[200:, 200:] = 0  # clutter in a corner
    rng, pasted = np.random.default_rng(0), 0
    for _ in range(30):
        view = np.full((80, 80), -1.0, np.float32)
        face_scenes._paste_background(rng, photo, [face], view)
        if view.min() >= 0:
            pasted += 1
            assert view.max() <= 60.0 + 1e-3  # never the face
    assert pasted >= 20


def test_targets_decode_back_to_the_squares_in_picture_pixels():
    squares = [geo.Framing(50.3, 70.9, 60.0, 0.2), geo.Framing(121.0, 36.5, 30.0, -0.5)]
    heat, reg, centres, near = face_scenes.targets([squares])
    assert heat.max() == 1.0 and centres.sum() == 2 and heat[0, 8, 6] == 1.0  # cell of (50, 70)
    assert near.sum() == 18 and near[0, 7:10, 5:8].all()
    # every near cell points at the same centre: cell + offset is the centre, in cells
    assert (6 + 0.5 + reg[0, 7, 6, 0], 7 + 0.5 + reg[0, 7, 6, 1]) == pytest.approx(
        (50.3 / 8, 70.9 / 8))
    found = decode(encoded(squares)[0], scale=0.5)
    assert len(found) == 2 and all(d.sure for d in found)
    for d, want in zip(sorted(found, key=lambda d: d.framing.cx), squares):
        f = d.framing
        assert (f.cx, f.cy, f.side, f.angle) == pytest.approx(
            (want.cx / 0.5, want.cy / 0.5, want.side / 0.5, want.angle), abs=1e-4)
        assert d.box == pytest.approx((f.cx - f.side / 2, f.cy - f.side / 2, f.side, f.side))


def test_a_face_the_net_finds_far_tilted_still_gets_the_second_look():
    """Past SURE_MAX_TILT the net's angle can be a half turn off (an upside-down face still
    has a face's shape), so such a face is not vouched for."""
    upright, tilted = geo.Framing(50.0, 60.0, 60.0, 0.3), geo.Framing(120.0, 100.0, 60.0, 1.2)
    found = sorted(decode(encoded([upright, tilted])[0], 1.0), key=lambda d: d.framing.cx)
    assert [d.sure for d in found] == [True, False]
    assert found[1].framing.angle == pytest.approx(1.2, abs=1e-4)


def test_neighbouring_peaks_of_one_face_decode_to_one_face():
    out = encoded([geo.Framing(80.0, 80.0, 80.0)])[0]
    out[10, 9, 0] = 8.0  # a second, lower peak next to the centre cell (10, 10)
    out[10, 9, 1:] = out[10, 10, 1:]
    out[10, 9, 1] += 1.0  # ... pointing at the same centre
    assert len(decode(out, 1.0)) == 1
    out[2, 2] = out[10, 10]  # a peak far away is another face
    out[2, 2, 1:3] = 0.0
    assert len(decode(out, 1.0)) == 2


def test_the_pipeline_starts_from_the_nets_square_and_skips_the_second_look(monkeypatch):
    pic, kp = face_scene(0)
    gray = geo.to_gray(pic)
    true_square = geo.framing_from_keypoints(kp, rotate=True)
    _, scale = to_canvas(gray)
    on_canvas = geo.Framing(true_square.cx * scale, true_square.cy * scale,
                            true_square.side * scale, true_square.angle)
    net = NetFaceDetector(lambda canvases: encoded([on_canvas]))

    def no_second_look(*a, **k):
        raise AssertionError("the cascade's second look ran on a face the net vouched for")

    monkeypatch.setattr(detection.FaceDetector, "confirm_score", no_second_look)
    monkeypatch.setattr(detection.FaceDetector, "detect_cascade", no_second_look)

    def oracle(crops, tta=False):  # true keypoints in the crop of the true square
        return np.stack([true_square.to_crop(kp)] * len(crops))

    faces = location.find_faces([gray], oracle, net)[0]
    assert len(faces) == 1 and faces[0].score > 0.99
    np.testing.assert_allclose(faces[0].history[0], kp, atol=1e-6)  # pass 1: already right
    assert "_cascade" not in vars(net) and "_second_cascade" not in vars(net)  # never loaded


def test_where_the_nets_only_face_is_no_face_the_cascade_searches_again(monkeypatch):
    """The net vouches for a blank patch; the keypoints found there have no face's shape,
    so the picture is searched by the cascade, whose face replaces it."""
    pic, _ = face_scene(0)
    gray = geo.to_gray(pic)
    _, scale = to_canvas(gray)
    blank = geo.Framing(290 * scale, 120 * scale, 40 * scale)  # right of the pasted face
    net = NetFaceDetector(lambda canvases: encoded([blank]))
    real = location.shape_error  # keypoints right of the pasted face have no face's shape
    monkeypatch.setattr(location, "shape_error",
                        lambda kp: 1.0 if np.mean(kp[0::2]) > 256 else real(kp))

    def model(crops, tta=False):
        return np.stack([MEAN] * len(crops))

    faces = location.find_faces([gray], model, net)[0]
    assert len(faces) == 1
    x, y, w, h = faces[0].box
    assert 60 <= x + w / 2 <= 252 and 20 <= y + h / 2 <= 212  # the cascade's box on the face


def test_pictures_go_through_the_net_together_and_the_cascade_searches_where_it_finds_none():
    grays = [geo.to_gray(face_scene(seed)[0]) for seed in (0, 1, 0)]
    square = geo.Framing(80.0, 70.0, 60.0)
    batches = []

    def run(canvases):  # faces in the first and last picture only
        batches.append(len(canvases))
        out = np.concatenate([encoded([square])] * len(canvases))
        out[1, ..., 0] = -9.0
        return out

    found = NetFaceDetector(run).detect_all(grays)
    assert batches == [3]
    assert found[0][0].sure and found[2][0].sure and found[0][0].framing.side == \
        pytest.approx(60.0 / to_canvas(grays[0])[1])
    assert found[1] and not found[1][0].sure and found[1][0].framing is None
    x, y, w, h = found[1][0].box  # the cascade's box on the pasted face (x 60-252, y 20-212)
    assert 60 <= x + w / 2 <= 252 and 20 <= y + h / 2 <= 212


def encoded_on(canvases: np.ndarray, square: geo.Framing) -> np.ndarray:
    """Outputs (1, H / STRIDE, W / STRIDE, 6) for a canvas of any size that say exactly
    `square` (canvas pixels)."""
    out = np.zeros((1, canvases.shape[1] // STRIDE, canvases.shape[2] // STRIDE, 6), np.float32)
    out[..., 0] = -9.0
    u, v = square.cx / STRIDE, square.cy / STRIDE
    out[0, int(v), int(u)] = (9.0, u - int(u) - 0.5, v - int(v) - 0.5,
                              math.log(square.side / INPUT_SIZE), 1.0, 0.0)
    return out


def test_in_a_large_picture_the_net_looks_again_at_the_picture_itself():
    """Faces the cascade can find are below what the net sees on its canvas in a large
    picture: the net looks again at FINE_SCALE (of the picture shrunk to the cascade's
    max_side), on a canvas of sides multiple of 32, and its faces there join those of the
    canvas, except on them, unvouched for. A small picture gets the canvas only."""
    small, _ = face_scene(0)  # 240 x 320: the net alone
    large, _ = face_scene(0, size=(700, 900))  # the same face, in a larger picture
    face = geo.Framing(156.0, 116.0, 190.0)  # the pasted face, picture pixels
    for pic in (small, large):
        gray = geo.to_gray(pic)
        scale = to_canvas(gray)[1]
        elsewhere = geo.Framing(150 * scale, 150 * scale, 40 * scale) if pic is small else \
            geo.Framing(600 * scale, 500 * scale, 100 * scale)
        shapes = []

        def net(canvases, on_face=False):
            shapes.append(canvases.shape)
            if canvases.shape[1:3] == (INPUT_SIZE, INPUT_SIZE):
                return encoded([face_on_canvas if on_face else elsewhere])
            fine = FINE_SCALE * min(1.0, detector.max_side / 900)
            return encoded_on(canvases, geo.Framing(face.cx * fine, face.cy * fine,
                                                    face.side * fine))

        face_on_canvas = geo.Framing(face.cx * scale, face.cy * scale, face.side * scale)
        detector = NetFaceDetector(net)
        found = detector.detect_all([gray])[0]
        if pic is small:
            assert shapes == [(1, INPUT_SIZE, INPUT_SIZE, 1)] and len(found) == 1
            continue
        fine = FINE_SCALE * min(1.0, detection.DETECT_MAX_SIDE / 900)
        assert shapes[1] == (1, -(-round(700 * fine) // 32) * 32, -(-round(900 * fine) // 32)
                             * 32, 1)
        assert len(found) == 2 and found[0].sure
        assert not found[1].sure  # the finer look's faces get the cascade's second look
        assert found[0].framing.cx == pytest.approx(600, abs=1)
        assert (found[1].framing.cx, found[1].framing.cy) == pytest.approx((face.cx, face.cy),
                                                                           abs=1)
        assert found[1].framing.side == pytest.approx(face.side, rel=0.01)
        found = NetFaceDetector(lambda c: net(c, on_face=True)).detect_all([gray])[0]
        assert len(found) == 1  # the finer look's face lies on the canvas's


class _OneSizeNet:
    """A detector file of one canvas size (before the net took any): says `square`."""
    any_size = False

    def __init__(self, square):
        self.square = square

    def __call__(self, canvases):
        assert canvases.shape[1:3] == (INPUT_SIZE, INPUT_SIZE)
        return encoded([self.square])


def test_with_a_one_size_net_the_cascade_searches_large_pictures_beside_it():
    """The cascade's box on a face the net found is left out."""
    large, _ = face_scene(0, size=(700, 900))
    gray = geo.to_gray(large)
    scale = to_canvas(gray)[1]
    found = NetFaceDetector(_OneSizeNet(geo.Framing(600 * scale, 500 * scale, 100 * scale))
                            ).detect_all([gray])[0]
    assert len(found) == 2 and found[0].sure
    x, y, w, h = found[1].box  # the cascade's, on the pasted face
    assert not found[1].sure and 60 <= x + w / 2 <= 252 and 20 <= y + h / 2 <= 212
    on_face = geo.Framing(156 * scale, 116 * scale, 190 * scale)  # the net found that face
    found = NetFaceDetector(_OneSizeNet(on_face)).detect_all([gray])[0]
    assert len(found) == 1 and found[0].sure


def test_a_trained_detector_exports_to_onnx_with_the_same_outputs(tmp_path):
    pytest.importorskip("jax2onnx")
    from fkd_jax.inference import onnx_model
    from fkd_jax.training import face_net_training as fnt

    pictures, squares = [], []
    for seed in range(3):
        pic, kp = face_scene(seed)
        pictures.append(geo.to_gray(pic))
        squares.append(fnt.face_squares(kp))
    logs = []
    params = fnt.train_face_net(pictures, squares, steps=100, batch_size=8, seed=0,
                                log=logs.append)
    assert [m["step"] for m in logs] == [100] and math.isfinite(logs[-1]["loss"])
    path = tmp_path / "face_net.onnx"
    path.write_bytes(onnx_model.export_face_net(params))
    run = NetFaceDetector.load(path)._run
    assert run.any_size
    for canvas in (to_canvas(pictures[0])[0], face_scenes.to_fine_canvas(pictures[0], 0.9)):
        from_onnx = run(canvas[None, :, :, None])
        np.testing.assert_allclose(from_onnx, fnt.jax_detector_fn(params)(  # float32 sums'
            canvas[None, :, :, None]), rtol=1e-4, atol=1e-4)  # order differs: logits ~1
        assert from_onnx.shape == (1, canvas.shape[0] // STRIDE, canvas.shape[1] // STRIDE, 6)
    assert canvas.shape == (224, 288)  # 240 x 320 at 0.9: 216 x 288, sides up to 32's


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_predicts_keypoints_train_a_face_net_that_predict_then_uses(tmp_path, tiny_run):
    """The workflow for photos without labels: predict.py (the cascade) writes keypoints.csv,
    train_face_net.py trains on it (a picture without a face teaches what is none; a photo
    missing from the labels is left out), and predict.py uses the detector."""
    pytest.importorskip("jax2onnx")
    photos = tmp_path / "photos"
    for seed in range(2):
        save_rgb(photos / f"p{seed}.png", face_scene(seed)[0])
    save_rgb(photos / "blank.png", np.full((200, 240, 3), 120, np.uint8))
    save_rgb(tmp_path / "more" / "unlabelled.png", face_scene(5)[0])
    proc = _run(["predict.py", f"--workdir={tiny_run}", "--no_overlays",
                 f"--out={tmp_path / 'first'}", str(photos)])
    assert proc.returncode == 0, proc.stderr
    model = tmp_path / "face_net.onnx"
    proc = _run(["train_face_net.py", f"--labels={tmp_path / 'first' / 'keypoints.csv'}",
                 f"--out={model}", "--steps=2", "--batch_size=4", str(photos),
                 str(tmp_path / "more")])
    assert proc.returncode == 0, proc.stderr
    assert "3 photos with 2 labelled faces (1 inputs without labels left out)" in proc.stdout
    assert model.is_file()
    proc = _run(["predict.py", f"--workdir={tiny_run}", f"--face_net={model}", "--no_overlays",
                 f"--out={tmp_path / 'out'}", str(photos / "p0.png")])
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "keypoints.csv").is_file()


@pytest.mark.parametrize("args,message", [
    (["train_face_net.py", "--out=x.onnx", "photos"], "--labels"),
    (["train_face_net.py", "--labels=labels.csv", "--out=x.onnx", "photos"],
     "--labels labels.csv: no such file"),
])
def test_face_net_mistakes_are_one_line(args, message, tmp_path):
    proc = subprocess.run([sys.executable, *[str(ROOT / args[0])] + args[1:]], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_both_threads_detectors_share_one_loaded_face_net(monkeypatch):
    """detect_files' second thread gets a face detector of its own (the cascades are not
    thread-safe) on the same loaded net (its onnxruntime session is)."""
    from fkd_jax import api
    from fkd_jax.pictures import face_net_detector

    loads = []
    monkeypatch.setattr(face_net_detector, "load_face_net",
                        lambda path: loads.append(path) or (lambda canvases: None))
    detector = api.Detector(predictor=None, face_net="face_net.onnx")
    first, second = detector.face_detector, detector._new_face_detector()
    assert first is not second and first._run is second._run and loads == ["face_net.onnx"]


def test_a_keypoint_model_given_as_the_face_net_is_named(tmp_path):
    jax2onnx = pytest.importorskip("jax2onnx")
    from fkd_jax.errors import UserError

    proto = jax2onnx.to_onnx(lambda images: images * 2.0, [("B", 96, 96, 1)])
    path = tmp_path / "model.onnx"
    path.write_bytes(proto.SerializeToString())

    with pytest.raises(UserError, match=r"--face_net .*model.onnx: not a face detector"):
        NetFaceDetector.load(path)


def test_a_missing_face_net_file_is_named(tmp_path, tiny_run):
    pic, _ = face_scene(0)
    save_rgb(tmp_path / "p.png", pic)
    proc = _run(["predict.py", f"--workdir={tiny_run}", "--face_net=nope.onnx",
                 f"--out={tmp_path / 'out'}", str(tmp_path / "p.png")])
    assert proc.returncode == 2 and "--face_net nope.onnx: no such file" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("any_tilt_p", [0.0, 1.0])
def test_any_tilt_share_turns_placed_faces_past_the_usual_tilts(any_tilt_p):
    """An upright face stays within MAX_TILT unless `any_tilt_p` asks for any angle."""
    photo = np.full((200, 200), 100, np.uint8)
    face = geo.Framing(100.0, 100.0, 100.0, 0.0)
    _, squares = face_scenes.compose(np.random.default_rng(1), [photo], [[face]], 60,
                                     any_tilt_p=any_tilt_p)
    tilts = np.degrees([abs(math.remainder(f.angle, 2 * math.pi)) for fs in squares for f in fs])
    assert len(tilts) >= 30
    beyond = np.mean(tilts > face_scenes.MAX_TILT + 1e-6)
    if any_tilt_p == 0:
        assert beyond == 0
    else:  # uniform over the circle: ~78% beyond 40 degrees
        assert beyond > 0.6
