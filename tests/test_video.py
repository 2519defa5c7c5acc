"""fkd_jax.pictures.video: reading/writing videos, the One Euro filter, tracking with fake detectors."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import load_benchmark

from fkd_jax.errors import UserError
from fkd_jax.pictures import video
from fkd_jax.pictures.location import Face
from fkd_jax.pictures.video import OneEuroFilter, OneEuroSettings, TrackedFace, track_video

FPS = 30.0

# --------------------------------------------------------------------------- One Euro filter


def _run(filt: OneEuroFilter, xs: np.ndarray) -> np.ndarray:
    return np.stack([filt(i / FPS, x) for i, x in enumerate(xs)])


def test_constant_passes_through():
    xs = np.full((40, 30), 37.25)
    out = _run(OneEuroFilter(OneEuroSettings()), xs)
    np.testing.assert_array_equal(out, xs)


def test_noise_on_a_constant_is_reduced():
    rng = np.random.default_rng(0)
    settled = slice(30, None)
    # Default settings, noise of the size the model's keypoints jitter by (0.1-0.3 px).
    noise = rng.normal(0.0, 0.3, (300, 30))
    out = _run(OneEuroFilter(OneEuroSettings()), 50.0 + noise)
    assert np.sqrt(np.mean((out[settled] - 50.0) ** 2)) < 0.5 * 0.3
    # Frame-to-frame jitter (what a viewer sees) drops by more still.
    assert np.std(np.diff(out[settled], axis=0)) < 0.3 * np.std(np.diff(noise[settled], axis=0))
    # beta = 0: a fixed first-order low-pass, whose white-noise gain is sqrt(a / (2 - a)).
    s = OneEuroSettings(min_cutoff=1.0, beta=0.0)
    noise = rng.normal(0.0, 1.0, (300, 30))
    out = _run(OneEuroFilter(s), 50.0 + noise)
    a = 1.0 / (1.0 + FPS / (2 * math.pi * s.min_cutoff))
    gain = np.sqrt(np.mean((out[settled] - 50.0) ** 2)) / np.sqrt(np.mean(noise[settled] ** 2))
    assert gain == pytest.approx(math.sqrt(a / (2 - a)), rel=0.1)


@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_ramp_is_followed_with_the_predicted_lag(beta):
    speed = 60.0  # px/s
    s = OneEuroSettings(min_cutoff=1.0, beta=beta, d_cutoff=1.0)
    t = np.arange(150) / FPS
    out = _run(OneEuroFilter(s), (speed * t)[:, None])[:, 0]
    lag = speed * t[-1] - out[-1]
    expected = speed / (2 * math.pi * (s.min_cutoff + s.beta * speed))
    assert lag == pytest.approx(expected, rel=0.02)
    assert np.all(np.diff(out) > 0)  # follows the ramp monotonically, no overshoot


def test_speed_raises_the_cutoff_so_beta_cuts_the_lag():
    ramp = (80.0 * np.arange(90) / FPS)[:, None]
    lag = {beta: ramp[-1, 0] - _run(OneEuroFilter(OneEuroSettings(beta=beta)), ramp)[-1, 0]
           for beta in (0.0, 0.1)}
    assert lag[0.1] < 0.2 * lag[0.0]


def test_reset_forgets_the_past():
    filt = OneEuroFilter()
    for i in range(10):
        filt(i / FPS, np.zeros(4))
    assert np.all(np.abs(filt(10 / FPS, np.full(4, 10.0))) < 10.0)  # smoothed toward 0
    filt.reset()
    np.testing.assert_array_equal(filt(0.0, np.full(4, 10.0)), np.full(4, 10.0))


def test_elements_are_filtered_independently():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 3, 60), np.linspace(0, 40, 60)
    both = _run(OneEuroFilter(), np.stack([a, b], axis=1))
    np.testing.assert_allclose(both[:, 0], _run(OneEuroFilter(), a[:, None])[:, 0])
    np.testing.assert_allclose(both[:, 1], _run(OneEuroFilter(), b[:, None])[:, 0])


def test_timestamps_must_increase_and_settings_are_checked():
    filt = OneEuroFilter()
    filt(1.0, np.zeros(2))
    with pytest.raises(ValueError, match="increase"):
        filt(1.0, np.zeros(2))
    with pytest.raises(UserError, match="min_cutoff"):
        OneEuroSettings(min_cutoff=0.0)


# --------------------------------------------------------------------------- tracking

SHAPE = np.array([[-20, -10], [20, -10], [0, 5], [-12, 20], [12, 20]], float)  # 5 points


def _face_at(cx: float, cy: float, scale: float = 1.0) -> np.ndarray:
    return (SHAPE * scale + [cx, cy]).ravel()


class Scene:
    """Frames are tiny arrays carrying their index; `truth[i]` lists the faces in frame i as
    {name: keypoints}. The fake detector finds all of them (in a shuffled order); the fake
    refine finds the face nearest the previous keypoints, unless told that it loses it."""

    def __init__(self, truth: list[dict[str, np.ndarray]], refine_loses=()):
        self.truth, self.refine_loses = truth, set(refine_loses)  # {(frame, name)}
        self.detect_calls: list[int] = []
        self.refine_calls: list[tuple[int, int]] = []
        self.rng = np.random.default_rng(0)

    def frames(self):
        return (np.full((2, 2, 3), i, np.uint8) for i in range(len(self.truth)))

    @staticmethod
    def box(kp):
        pts = kp.reshape(-1, 2)
        lo, hi = pts.min(0), pts.max(0)
        return (float(lo[0] - 10), float(lo[1] - 15), float(hi[0] - lo[0] + 20),
                float(hi[1] - lo[1] + 25))

    def find_faces(self, frame):
        i = int(frame[0, 0, 0])
        self.detect_calls.append(i)
        items = list(self.truth[i].values())
        order = self.rng.permutation(len(items))
        return [Face(self.box(items[k]), 0.9, items[k]) for k in order]

    def refine(self, frame, previous):
        i = int(frame[0, 0, 0])
        self.refine_calls.append((i, len(previous)))
        out = []
        for prev in previous:
            name, kp = min(self.truth[i].items(),
                           key=lambda item: np.abs(item[1] - prev).mean(), default=(None, None))
            if (name is None or (i, name) in self.refine_loses
                    or np.abs(kp - prev).mean() > 15):
                out.append(None)
            else:
                out.append(Face((0, 0, 1, 1), 0.8, kp))
        return out


def _ids(results):
    return [[f.track for f in faces] for _, _, faces in results]


def test_tracks_one_face_detecting_only_once():
    truth = [{"a": _face_at(100 + 2 * i, 80 + i)} for i in range(12)]
    scene = Scene(truth)
    results = list(track_video(scene.frames(), scene.find_faces, scene.refine))
    assert scene.detect_calls == [0]
    assert scene.refine_calls == [(i, 1) for i in range(1, 12)]  # one batched call a frame
    assert _ids(results) == [[0]] * 12
    assert [r[0] for r in results] == list(range(12))
    for (i, frame, faces), t in zip(results, truth):
        assert isinstance(faces[0], TrackedFace) and isinstance(faces[0], Face)
        assert frame[0, 0, 0] == i
        np.testing.assert_allclose(faces[0].keypoints_px, t["a"], atol=1e-4)


def test_box_is_the_detector_box_carried_by_the_keypoints():
    truth = [{"a": _face_at(100 + 3 * i, 80, scale=1 + 0.1 * i)} for i in range(4)]
    scene = Scene(truth)
    results = list(track_video(scene.frames(), scene.find_faces, scene.refine))
    x0, y0, w0, h0 = Scene.box(truth[0]["a"])
    np.testing.assert_allclose(results[0][2][0].box, (x0, y0, w0, h0), atol=1e-4)
    # Frame 3: the face moved by (9, 0) and grew 1.3x about its centroid.
    c0 = truth[0]["a"].reshape(-1, 2).mean(0)
    c3 = truth[3]["a"].reshape(-1, 2).mean(0)
    expected = (c3[0] + (x0 - c0[0]) * 1.3, c3[1] + (y0 - c0[1]) * 1.3, w0 * 1.3, h0 * 1.3)
    np.testing.assert_allclose(results[3][2][0].box, expected, atol=1e-3)


def test_a_lost_face_triggers_detection_and_a_new_face_gets_a_new_number():
    truth = ([{"a": _face_at(100 + i, 80)} for i in range(5)] + [{}] * 3
             + [{"a": _face_at(300, 200)} for _ in range(4)])
    scene = Scene(truth)
    results = list(track_video(scene.frames(), scene.find_faces, scene.refine))
    # Lost at 5 (refine says None, the detector finds nothing), detect every frame until found.
    assert scene.detect_calls == [0, 5, 6, 7, 8]
    assert _ids(results) == [[0]] * 5 + [[]] * 3 + [[1]] * 4


def test_identity_stays_when_one_face_is_lost_and_found_again():
    truth = [{"a": _face_at(100 + i, 80), "b": _face_at(300 - i, 90)} for i in range(10)]
    scene = Scene(truth, refine_loses={(4, "a")})  # refine loses "a" at frame 4 only
    results = list(track_video(scene.frames(), scene.find_faces, scene.refine))
    assert scene.detect_calls == [0, 4]
    ids = _ids(results)
    assert all(sorted(x) == [0, 1] for x in ids)
    # Each number keeps following the same face, whatever order the detector listed them in.
    first = {f.track: ("a" if abs(f.keypoints_px[0] - truth[0]["a"][0]) < 1 else "b")
             for f in results[0][2]}
    for (i, _, faces) in results:
        for f in faces:
            np.testing.assert_allclose(f.keypoints_px, truth[i][first[f.track]], atol=1e-4)


def test_redetect_every_picks_up_faces_that_enter():
    truth = ([{"a": _face_at(100, 80)} for _ in range(3)]
             + [{"a": _face_at(100, 80), "b": _face_at(300, 80)} for _ in range(7)])
    for every, first_seen in ((0, None), (4, 4)):
        scene = Scene(truth)
        results = list(track_video(scene.frames(), scene.find_faces, scene.refine,
                                   redetect_every=every))
        seen = [i for i, _, faces in results if len(faces) == 2]
        assert (seen[0] if seen else None) == first_seen
        assert scene.detect_calls == ([0] if every == 0 else [0, 4, 8])
        if every:
            assert _ids(results)[-1] == [0, 1]  # the tracked face keeps its number


def test_smoothing_is_per_face_and_starts_fresh_for_a_new_face():
    rng = np.random.default_rng(3)
    n = 30
    noisy_a = [_face_at(100, 80) + rng.normal(0, 1.0, 10) for _ in range(n)]
    noisy_b = [_face_at(300, 80) + rng.normal(0, 1.0, 10) for _ in range(n)]
    truth = [{"a": noisy_a[i], **({"b": noisy_b[i]} if i >= 10 else {})} for i in range(n)]
    settings = OneEuroSettings(min_cutoff=0.5, beta=0.0)
    scene = Scene(truth)
    results = list(track_video(scene.frames(), scene.find_faces, scene.refine,
                               smoothing=settings, fps=FPS, redetect_every=10))
    ref_a, ref_b = OneEuroFilter(settings), OneEuroFilter(settings)
    for i, _, faces in results:
        by_id = {f.track: f.keypoints_px for f in faces}
        np.testing.assert_allclose(by_id[0], ref_a(i / FPS, noisy_a[i]), atol=1e-4)
        if i >= 10:  # face b first seen at 10: its filter starts there, with its raw keypoints
            np.testing.assert_allclose(by_id[1], ref_b(i / FPS, noisy_b[i]), atol=1e-4)
    np.testing.assert_allclose(results[10][2][1].keypoints_px, noisy_b[10], atol=1e-4)
    # The smoothed track jitters less than the raw one.
    out_a = np.stack([faces[0].keypoints_px for _, _, faces in results])
    assert np.std(np.diff(out_a[5:], axis=0)) < 0.5 * np.std(np.diff(np.stack(noisy_a[5:]), axis=0))


def test_no_smoothing_reports_raw_keypoints():
    rng = np.random.default_rng(4)
    truth = [{"a": _face_at(100, 80) + rng.normal(0, 1.0, 10)} for _ in range(8)]
    scene = Scene(truth)
    results = list(track_video(scene.frames(), scene.find_faces, scene.refine, smoothing=None))
    for (i, _, faces) in results:
        np.testing.assert_allclose(faces[0].keypoints_px, truth[i]["a"], atol=1e-4)


def test_tracks_that_converge_on_one_face_are_merged():
    truth = [{"a": _face_at(100, 80), "b": _face_at(130, 80)}] + [{"a": _face_at(100, 80)}] * 3
    scene = Scene(truth)

    def refine(frame, previous):  # never loses: puts every track on "a" from frame 1 on
        i = int(frame[0, 0, 0])
        return [Face((0, 0, 1, 1), 0.8, truth[i]["a"]) for _ in previous]

    results = list(track_video(scene.frames(), scene.find_faces, refine))
    assert _ids(results) == [[0, 1], [0], [0], [0]]  # the older track survives


# --------------------------------------------------------------------------- files


def _clip(n=8, w=64, h=48):
    """Smooth moving gradients: they survive lossy codecs well enough to compare."""
    y, x = np.mgrid[0:h, 0:w]
    return [np.stack([(x * 3 + 8 * i) % 256, (y * 4 + 5 * i) % 256,
                      np.full_like(x, 40 + 20 * i)], axis=-1).astype(np.uint8) for i in range(n)]


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_write_then_read_round_trip(tmp_path, suffix):
    frames = _clip()
    path = tmp_path / f"clip{suffix}"
    with video.VideoWriter(path, 12.0, (64, 48)) as writer:
        for f in frames:
            writer.write(f)
    assert writer.frames_written == len(frames)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left
    it, fps, size = video.read_video(path)
    back = list(it)
    assert fps == pytest.approx(12.0) and size == (64, 48)
    assert len(back) == len(frames)
    for a, b in zip(frames, back):
        assert b.shape == (48, 64, 3) and b.dtype == np.uint8
        # Lossy codec: close on average, and the channel order survived (R stays R).
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 12
    assert abs(int(back[-1][..., 2].mean()) - (40 + 20 * 7)) < 10


def test_odd_sizes_keep_every_pixel(tmp_path):
    frames = [f[:47, :63] for f in _clip(3)]  # 63 x 47
    path = tmp_path / "odd.mp4"
    with video.VideoWriter(path, 10.0, (63, 47)) as writer:
        for f in frames:
            writer.write(f)
    it, _, size = video.read_video(path)
    back = list(it)
    assert size == (64, 48)  # one column and one row added, none cropped
    assert np.abs(back[1][:47, :63].astype(int) - frames[1].astype(int)).mean() < 12


def test_an_error_while_writing_leaves_no_file(tmp_path):
    path = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError):
        with video.VideoWriter(path, 10.0, (64, 48)) as writer:
            writer.write(_clip(1)[0])
            raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="frame"):
        with video.VideoWriter(path, 10.0, (64, 48)) as writer:
            writer.write(np.zeros((10, 10, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_an_existing_file_is_kept_until_the_new_one_is_complete(tmp_path):
    path = tmp_path / "out.avi"
    path.write_bytes(b"previous")
    with pytest.raises(RuntimeError):
        with video.VideoWriter(path, 10.0, (64, 48)) as writer:
            writer.write(_clip(1)[0])
            raise RuntimeError("stop")
    assert path.read_bytes() == b"previous"


@pytest.mark.parametrize("content", [None, b"", b"not a video at all" * 100])
def test_unreadable_videos_are_user_errors_naming_the_file(tmp_path, content):
    path = tmp_path / "broken.mp4"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match="broken.mp4"):
        video.read_video(path)


def test_a_video_cut_in_half_is_one_line_without_ffmpegs_own(tmp_path):
    """FFmpeg would print "[mov,mp4,...] moov atom not found" (its own log, straight to
    stderr) before the project's error: stderr holds the project's one line only."""
    noise = np.random.default_rng(0).integers(0, 256, (20, 120, 160, 3), dtype=np.uint8)
    whole = tmp_path / "whole.mp4"
    with video.VideoWriter(whole, 10.0, (160, 120)) as writer:
        for frame in noise:
            writer.write(frame)
    data = whole.read_bytes()  # the index (moov atom) is written last: cut off with the half
    (tmp_path / "half.mp4").write_bytes(data[: len(data) // 2])
    code = ("import sys\n"
            "from fkd_jax.errors import exit_on_user_error\n"
            "from fkd_jax.pictures.video import read_video\n"
            "exit_on_user_error(read_video)(sys.argv[1])\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_FFMPEG_LOGLEVEL"}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "half.mp4")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: {tmp_path / 'half.mp4'}: not a readable video "
                                        "(no frame could be decoded)"], proc.stderr


def test_a_folder_is_not_a_video(tmp_path):
    with pytest.raises(UserError, match="directory"):
        video.read_video(tmp_path)


def test_writer_rejects_an_unknown_suffix(tmp_path):
    with pytest.raises(UserError, match=r"\.gif"):
        video.VideoWriter(tmp_path / "a.gif", 10.0, (64, 48))


# --------------------------------------------------------------------------- the jitter benchmark


@pytest.fixture(scope="module")
def jitter():
    return load_benchmark("video_jitter")


def test_benchmark_video_moves_the_picture_by_exact_sub_pixel_amounts(jitter):
    h, w = 80, 100
    y, x = np.mgrid[0:h, 0:w] + 0.5  # pixel centres (fkd_jax.geometry.keypoints' convention)
    cx, cy = 40.3, 37.8
    blob = 200 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 4.0 ** 2))
    offsets = np.array([[0.0, 0.0], [3.3, -1.7], [0.25, 0.6], [-7.9, 5.05]])
    for dtype, tol in ((np.float32, 1e-4), (np.uint8, 0.02)):
        frames = jitter.render(np.repeat(blob[..., None], 3, 2).astype(dtype), offsets)
        for f, (dx, dy) in zip(frames, offsets):
            assert f.dtype == dtype and f.shape == (h, w, 3)
            g = f[..., 1].astype(np.float64)
            centroid = ((g * x).sum() / g.sum(), (g * y).sum() / g.sum())
            np.testing.assert_allclose(centroid, (cx + dx, cy + dy), atol=tol)


def test_benchmark_measures_a_known_lag_and_jitter(jitter):
    fps, still = 30.0, 2.5
    t = np.arange(255) / fps
    true = np.tile(jitter.path_offsets(t, still), (1, 15)) + np.arange(30)  # + a bias
    exact = jitter.measure(true, t, still, 1.0, fps)
    assert exact["error_rms"] < 1e-9 and exact["d2_rms"] < 1e-9 and abs(exact["lag_ms"]) < 1
    delayed = np.tile(jitter.path_offsets(t - 0.1, still), (1, 15))  # 100 ms late
    assert jitter.measure(delayed, t, still, 1.0, fps)["lag_ms"] == pytest.approx(100, abs=1)
    noisy = true + np.random.default_rng(0).normal(0, 0.5, true.shape)
    m = jitter.measure(noisy, t, still, 1.0, fps)
    assert m["still_rms"] == pytest.approx(0.5, rel=0.1)
    assert m["d2_rms"] == pytest.approx(0.5 * math.sqrt(6), rel=0.1)  # white noise: sqrt(6) sigma


def test_benchmark_runs_on_a_synthetic_face_and_smoothing_removes_jitter(jitter, tmp_path):
    out = tmp_path / "jitter.json"
    summary = jitter.main(["video_jitter.py", "--synthetic", "--noise=0.5", "--seconds=5",
                           f"--out={out}"])
    assert out.is_file() and summary["lost"] == 0
    raw, smoothed = summary["raw"], summary["smoothed"]
    assert raw["still_rms"] == pytest.approx(0.5, rel=0.15)  # the stand-in's own noise
    assert abs(raw["lag_ms"]) < 10
    assert smoothed["d2_rms"] < raw["d2_rms"] / 3 and smoothed["still_rms"] < raw["still_rms"]
    assert smoothed["lag_ms"] > raw["lag_ms"] + 10
