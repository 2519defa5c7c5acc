"""fkd_jax.Detector, the Python front door: pictures as paths or arrays, given boxes, files in
chunks, videos tracked, crops, an exported model, and one-line errors for bad inputs. The
model is a 1-epoch tiny run (conftest.tiny_run): plumbing, not accuracy."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import face_scene, save_rgb

from fkd_jax.errors import UserError
from fkd_jax.geometry import keypoints


@pytest.fixture(scope="module")
def detector(tiny_run):
    from fkd_jax.api import Detector

    return Detector.load(tiny_run)


def same_faces(a, b) -> None:
    assert len(a) == len(b)
    for f, g in zip(a, b):
        assert f.box == g.box and f.score == g.score
        np.testing.assert_array_equal(f.keypoints, g.keypoints)


def test_import_fkd_jax_loads_no_jax_until_the_api_is_asked_for():
    code = ("import sys, fkd_jax, fkd_jax.errors, fkd_jax.files\n"
            "assert 'jax' not in sys.modules and 'cv2' not in sys.modules, 'loaded early'\n"
            "assert fkd_jax.Detector.__module__ == 'fkd_jax.api'\n"
            "assert fkd_jax.Face.__name__ == 'Face'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_options_defaults_are_predict_pys():
    from fkd_jax.api import Options
    from fkd_jax.pictures.video import OneEuroSettings

    o = Options()
    assert (o.passes, o.settle, o.tta, o.retry, o.rotate) == (8, 0.02, False, True, True)
    assert o.relax == 1.4
    assert o.final_scales == ()
    assert o.one_euro == OneEuroSettings()
    assert Options(smoothing=False).one_euro is None


def test_a_face_in_a_path_an_rgb_array_and_a_gray_array_is_the_same(detector, tmp_path):
    rgb, truth = face_scene(0)
    gray = rgb[..., 1]  # the scene is gray: one channel is the picture
    faces = detector(save_rgb(tmp_path / "face.png", gray))
    assert len(faces) == 1
    same_faces(faces, detector(gray))
    same_faces(faces, detector(np.repeat(gray[..., None], 3, axis=2)))
    same_faces(faces, detector(str(tmp_path / "face.png")))

    face = faces[0]
    assert face.keypoints.shape == (15, 2) and face.keypoints.dtype == np.float64
    assert face.names == keypoints.KEYPOINT_NAMES == detector.keypoint_names
    np.testing.assert_array_equal(face.keypoints.reshape(-1), face.keypoints_px)
    x, y, w, h = face.box  # the detector's box is around the pasted face (60, 20, 192, 192)
    assert abs(x + w / 2 - 156) < 40 and abs(y + h / 2 - 116) < 40
    assert np.isfinite(face.score) and len(face.history) >= 2
    assert detector(np.full((120, 160), 128, np.uint8)) == []  # no face: none, not a guess


def test_given_boxes_skip_detection_and_are_kept(detector):
    rgb, _ = face_scene(0)
    faces = detector(rgb, boxes=[(60, 20, 192, 192)])
    assert len(faces) == 1 and faces[0].box == (60.0, 20.0, 192.0, 192.0)
    assert faces[0].score == 1.0
    # nothing is there to detect, yet the given box is located
    assert len(detector(np.full((200, 200), 90, np.uint8), boxes=[(10, 10, 100, 100)])) == 1


def test_files_in_chunks_searched_ahead_give_what_one_chunk_gives(detector, tmp_path):
    """With one file a chunk every next file is decoded and searched in the second thread
    while this one is located; the faces and the failing file are those of one chunk."""
    paths = [save_rgb(tmp_path / "a.png", face_scene(0)[0]), tmp_path / "broken.jpg",
             save_rgb(tmp_path / "b.png", face_scene(5)[0]),
             save_rgb(tmp_path / "blank.png", np.full((90, 120, 3), 128, np.uint8))]
    paths[1].write_bytes(b"not a jpeg")
    timings = {}
    one = list(detector.detect_files(paths, chunk=1, timings=timings))
    together = list(detector.detect_files(paths))
    assert [r.path for r in one] == [r.path for r in together] == paths
    assert [r.error is None for r in one] == [True, False, True, True]
    assert "broken.jpg" in str(one[1].error) and together[1].error is not None
    for r, s in zip(one, together):
        same_faces(r.faces, s.faces)
    assert len(one[0].faces) == 1 and one[3].faces == []
    assert timings["locate_s"] > 0 and timings["detect_s"] > 0
    same_faces(one[2].faces, detector.detect_many([paths[2]])[0])


def at_rest_detector(**options):
    """A Detector whose stand-in model answers every crop with the mean face placed where its
    own training square is the whole crop: a face stays framed as it was, frame to frame."""
    from fkd_jax.api import Detector
    from fkd_jax.geometry import face_shape_stats, framing
    from fkd_jax.inference.predictor import Predictor
    from fkd_jax.inference.two_batch import TwoBatchPredictor

    mean = np.asarray(face_shape_stats.MEAN_SHAPE, np.float64)
    rest = framing.framing_from_keypoints(mean, rotate=True).to_crop(mean) / 48 - 1

    def model(images):  # normalised coordinates, as a model returns them
        return np.tile(rest.astype(np.float32), (len(images), 1))

    return Detector(TwoBatchPredictor(lambda b: Predictor(model, b)), **options)


def test_track_follows_a_face_over_frames_with_one_number():
    rgb, _ = face_scene(0)
    frames = [np.roll(rgb, i, axis=1) for i in range(5)]
    tracked = list(at_rest_detector().track(iter(frames), fps=10))
    assert [i for i, _ in tracked] == [0, 1, 2, 3, 4]
    assert all(len(faces) == 1 and faces[0].track == 0 for _, faces in tracked)
    assert tracked[0][1][0].score != 1.0  # detected: the cascade's score
    # tracked, not detected: the score is 1 - shape error (the mean face: none)
    assert all(faces[0].score == pytest.approx(1.0, abs=1e-6) for _, faces in tracked[1:])
    with_frames = list(at_rest_detector(smoothing=False).track(frames, with_frames=True))
    assert all(frame is f for (_, frame, _), f in zip(with_frames, frames))
    assert with_frames[0][2][0].box == tracked[0][1][0].box


def test_predict_crops_takes_both_shapes_and_returns_crop_pixels():
    """Units with a stand-in model that always says 'the crop's centre': (u + 1) * S / 2."""
    from fkd_jax.api import Detector
    from fkd_jax.inference.predictor import Predictor
    from fkd_jax.inference.two_batch import TwoBatchPredictor

    def centre(images):
        return np.zeros((len(images), 30), np.float32)  # normalised 0: the centre

    detector = Detector(TwoBatchPredictor(lambda b: Predictor(centre, b)))
    crops = np.random.default_rng(0).random((11, 96, 96), np.float32)
    out = detector.predict_crops(crops)
    assert out.shape == (11, 15, 2) and out.dtype == np.float64
    np.testing.assert_array_equal(out, 48.0)
    np.testing.assert_array_equal(detector.predict_crops(crops[..., None], tta=True), 48.0)
    with pytest.raises(UserError, match=r"expected \(N, 96, 96\)"):
        detector.predict_crops(np.zeros((2, 64, 64)))


def test_two_batch_predictor_sends_whole_batches_of_8_and_the_rest_one_by_one():
    from fkd_jax.inference.predictor import Predictor
    from fkd_jax.inference.two_batch import TwoBatchPredictor

    calls = []

    def make(batch):
        def fn(images):  # each crop's mean brightness as its first coordinate
            calls.append(batch)
            out = np.zeros((len(images), 30), np.float32)
            out[:, 0] = np.asarray(images).mean(axis=(1, 2, 3))
            return out
        return Predictor(fn, batch)

    crops = np.random.default_rng(1).random((19, 96, 96, 1), np.float32)
    pred = TwoBatchPredictor(make)(crops)
    assert calls == [8, 8, 1, 1, 1]
    np.testing.assert_allclose(pred[:, 0], (crops.mean(axis=(1, 2, 3)) + 1) * 48, rtol=1e-5)


def test_an_exported_model_loads_and_predicts_as_its_run(detector, tiny_run, tmp_path):
    from fkd_jax.api import Detector
    from fkd_jax.inference import exported
    from fkd_jax.training import restore

    path = tmp_path / "model.jaxexport"
    path.write_bytes(exported.export_run(restore.load_run(tiny_run), platforms=("cpu",)))
    other = Detector.load(path, passes=2)
    assert other.options.passes == 2 and other.source == str(path)
    crops = np.random.default_rng(2).random((3, 96, 96), np.float32)
    np.testing.assert_allclose(other.predict_crops(crops), detector.predict_crops(crops),
                               atol=1e-3)


@pytest.mark.parametrize("call,expect", [
    (lambda d, tmp: d(tmp / "missing.jpg"), "no such image file"),
    (lambda d, tmp: d(np.zeros((10, 10), np.float32)), "uint8 (H, W) or (H, W, 3)"),
    (lambda d, tmp: d(np.zeros((10, 10, 4), np.uint8)), "uint8 (H, W) or (H, W, 3)"),
    (lambda d, tmp: d([[1, 2]]), "a path or a numpy array"),
    (lambda d, tmp: d(np.zeros((10, 10), np.uint8), boxes=[(0, 0, 0, 5)]), "width and height"),
    (lambda d, tmp: d(np.zeros((10, 10), np.uint8), boxes=[(0, 0, 5)]), "four numbers"),
    (lambda d, tmp: d.detect_many([np.zeros((9, 9), np.uint8)] * 2, boxes=[[]]), "2 pictures"),
    (lambda d, tmp: d.track(tmp / "missing.mp4"), "no such file"),  # at the call, not later
])
def test_bad_pictures_and_boxes_are_one_line_user_errors(detector, tmp_path, call, expect):
    with pytest.raises(UserError) as e:
        call(detector, tmp_path)
    assert expect in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("what,expect", [
    ("missing", "no such run directory or model file"),
    ("garbage", "not a jax.export model file"),
    ("not_a_run", "not a run directory"),
    ("passes", "passes=0"),
    ("checkpoint", "'best' or 'latest'"),
    ("final_scales", "each must lie in 0.5-2"),
    ("final_scale_word", "must be numbers"),
    ("relax", "relax=2.5 must lie between 0 and 2"),
])
def test_bad_models_and_options_are_one_line_user_errors(tmp_path, tiny_run, what, expect):
    from fkd_jax.api import Detector

    (tmp_path / "garbage.jaxexport").write_bytes(b"\x00garbage")
    (tmp_path / "not_a_run").mkdir()
    path, options = {"missing": (tmp_path / "nothing", {}),
                     "garbage": (tmp_path / "garbage.jaxexport", {}),
                     "not_a_run": (tmp_path / "not_a_run", {}),
                     "passes": (tiny_run, {"passes": 0}),
                     "checkpoint": (tiny_run, {"checkpoint": "last"}),
                     "final_scales": (tiny_run, {"final_scales": (1.0, 3.0)}),
                     "final_scale_word": (tiny_run, {"final_scales": ["big"]}),
                     "relax": (tiny_run, {"relax": 2.5})}[what]
    with pytest.raises(UserError) as e:
        Detector.load(path, **options)
    assert expect in str(e.value) and "\n" not in str(e.value)
