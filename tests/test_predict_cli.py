"""predict.py end to end, as a user runs it: a folder of photos and a video, a user's box,
an exported model, scoring against labels, and every whole-command mistake (one line, exit 2,
nothing written); its rows are those of the Python API (fkd_jax.Detector) on the same files.
The model is a 1-epoch tiny run: this checks plumbing, not accuracy."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import face_scene, save_rgb

from fkd_jax.data import synthetic
from fkd_jax.geometry import keypoints

ROOT = Path(__file__).resolve().parents[1]
HEADER = ["file", "frame", "face", "box_x", "box_y", "box_w", "box_h", "score",
          *keypoints.COLUMNS, *(f"{n}_confidence" for n in keypoints.KEYPOINT_NAMES)]


def run(script, *args):
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_run):
    tmp = tmp_path_factory.mktemp("predict")
    (tmp / "run").symlink_to(tiny_run)
    photos = tmp / "photos"
    pic, kp = face_scene(0)
    save_rgb(photos / "a" / "x.png", pic)
    save_rgb(photos / "b" / "x.png", face_scene(5)[0])  # same name, other folder
    save_rgb(photos / "blank.jpg", np.full((200, 260, 3), 128, np.uint8))  # no face
    (photos / "corrupt.jpg").write_bytes(b"not a jpeg at all")
    writer = cv2.VideoWriter(str(photos / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10,
                             (320, 240))
    for i in range(4):  # the scene moving by a few pixels
        m = np.float32([[1, 0, 2 * i], [0, 1, math.sin(i)]])
        writer.write(cv2.cvtColor(cv2.warpAffine(pic, m, (320, 240),
                                                 borderMode=cv2.BORDER_REPLICATE),
                                  cv2.COLOR_RGB2BGR))
    writer.release()
    labels = tmp / "labels.csv"
    pd.DataFrame([["a/x.png", *kp]], columns=["file", *keypoints.COLUMNS]).to_csv(labels,
                                                                                    index=False)
    return tmp, photos, labels, kp


def test_folder_with_photos_video_and_a_corrupt_file(setup):
    tmp, photos, labels, _ = setup
    out = tmp / "out"
    proc = run("predict.py", "--workdir", tmp / "run", "--out", out, photos, "--labels", labels,
               "--relax", "1.2")
    assert proc.returncode == 1, proc.stderr  # some files failed
    assert "corrupt.jpg" in proc.stderr and "some files failed" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"no face found: {photos / 'blank.jpg'}" in proc.stdout

    table = pd.read_csv(out / "keypoints.csv")
    assert list(table.columns) == HEADER
    names = set(table["file"])
    assert {str(photos / "a" / "x.png"), str(photos / "b" / "x.png"), str(photos / "blank.jpg"),
            str(photos / "clip.avi")} == names  # the corrupt file has no row
    blank = table[table["file"] == str(photos / "blank.jpg")]
    assert len(blank) == 1 and blank["face"].isna().all()
    assert blank[list(keypoints.COLUMNS)].isna().all().all()
    video = table[table["file"] == str(photos / "clip.avi")]
    assert sorted(set(video["frame"])) == [0, 1, 2, 3]
    assert (table[table["file"] != str(photos / "clip.avi")]["frame"] == 0).all()
    found = table.dropna(subset=["face"])
    assert np.isfinite(found[list(keypoints.COLUMNS)].to_numpy()).all()
    # one regression model (the tiny run's simple_cnn) has no spread to tell: no confidences
    assert found[HEADER[-15:]].isna().all().all()

    overlays = out / "overlays"
    assert (overlays / "a" / "x.png").is_file() and (overlays / "b" / "x.png").is_file()
    assert (overlays / "blank.jpg").is_file() and (overlays / "clip.avi").is_file()
    assert not (overlays / "corrupt.jpg").exists()
    a = cv2.imread(str(overlays / "a" / "x.png"))
    assert a.shape == (240, 320, 3)
    cap = cv2.VideoCapture(str(overlays / "clip.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    cap.release()

    summary = json.loads((out / "summary.json").read_text())
    assert summary["files"] == 5 and summary["photos"] == 3 and summary["videos"] == 1
    assert summary["video_frames"] == 4
    assert [f["file"] for f in summary["failed"]] == [str(photos / "corrupt.jpg")]
    assert str(photos / "blank.jpg") in summary["no_face"]
    assert summary["faces"] == len(found)
    assert summary["timings_s"]["total_s"] > 0
    assert summary["settings"]["retry"] is True  # --no_retry turns it off
    assert summary["settings"]["relax"] == 1.2 and summary["settings"]["final_scales"] == []

    scores = json.loads((out / "scores.json").read_text())
    assert scores["final"]["n_faces"] == 1
    assert set(scores["per_pass"]) == {f"pass {p}" for p in range(1, 9)}
    assert (out / "ced.png").is_file() and (out / "scores.csv").is_file()


def test_rows_are_those_of_the_python_api(setup):
    """keypoints.csv holds, to the byte, the rows fkd_jax.Detector gives for the same files:
    each photo alone (`detector(path)`), the video through `detector.track`."""
    from fkd_jax.api import Detector
    from fkd_jax.errors import UserError
    from fkd_jax.pictures import outputs

    tmp, photos, _, _ = setup
    out = tmp / "out_rows"
    proc = run("predict.py", "--workdir", tmp / "run", "--out", out, "--no_overlays", photos)
    assert proc.returncode == 1, proc.stderr  # the corrupt file

    detector = Detector.load(tmp / "run")
    rows = []
    for path in sorted(p for p in photos.rglob("*") if p.is_file() and p.suffix != ".avi"):
        try:
            rows += outputs.face_rows(str(path), 0, detector(path))
        except UserError as e:
            assert path.name == "corrupt.jpg", e
    for index, faces in detector.track(photos / "clip.avi"):
        rows += outputs.face_rows(str(photos / "clip.avi"), index, faces)
    assert len(rows) >= 7  # 3 photos' rows, 4 frames'
    assert outputs.rows_to_csv(rows) == (out / "keypoints.csv").read_text()


def test_ctrl_c_keeps_the_photos_done(setup, tmp_path, monkeypatch, capsys):
    """Ctrl-C during a folder: the photos located before it keep their rows, summary.json says
    the run was interrupted, one line on stderr, exit 130."""
    from fkd_jax.api import Detector
    from fkd_jax.errors import exit_on_user_error
    from fkd_jax.pictures import inputs, location, outputs

    tmp, photos, _, _ = setup
    real, calls = location.find_faces, []

    def locate_then_ctrl_c(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(location, "find_faces", locate_then_ctrl_c)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        exit_on_user_error(outputs.process)(Detector.load(tmp / "run"),
                                            inputs.find_inputs([str(photos)]), out,
                                            overlays=False, chunk=1)
    assert stop.value.code == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("interrupted: Ctrl-C: stopped after 1 photos")
    assert "Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["photos"] == 1
    table = pd.read_csv(out / "keypoints.csv")
    assert len(set(table["file"])) == 1  # the one photo done, not the video after it


def test_user_box_and_exported_model_give_the_same_keypoints(setup):
    tmp, photos, _, kp = setup
    box = "60,20,192,192"
    out = tmp / "box"
    proc = run("predict.py", "--workdir", tmp / "run", "--out", out, "--box", box,
               photos / "a" / "x.png", "--passes", "2")
    assert proc.returncode == 0, proc.stderr
    rows = pd.read_csv(out / "keypoints.csv")
    assert len(rows) == 1 and rows["face"][0] == 0 and rows["score"][0] == 1.0
    assert tuple(rows[["box_x", "box_y", "box_w", "box_h"]].iloc[0]) == (60, 20, 192, 192)
    pred = rows[list(keypoints.COLUMNS)].to_numpy()[0]
    assert np.isfinite(pred).all()

    model = tmp / "model.jaxexport"
    proc = run("export.py", "--workdir", tmp / "run", "--out", model)
    assert proc.returncode == 0, proc.stderr
    out2 = tmp / "box_exported"
    proc = run("predict.py", "--model", model, "--out", out2, "--box", box,
               photos / "a" / "x.png", "--passes", "2")
    assert proc.returncode == 0, proc.stderr
    pred2 = pd.read_csv(out2 / "keypoints.csv")[list(keypoints.COLUMNS)].to_numpy()[0]
    np.testing.assert_allclose(pred2, pred, atol=0.02)  # 2-decimal CSV


@pytest.mark.parametrize("args,expect", [
    (["--out", "{out}", "{tmp}/missing.jpg"], "missing.jpg: no such file or folder"),
    (["--out", "{out}", "{tmp}/empty"], "holds no images or videos"),
    (["--out", "{out}", "--box", "1,2,3", "{photos}/blank.jpg"], "--box"),
    (["--out", "{out}", "--box", "1,2,0,5", "{photos}/blank.jpg"], "--box"),
    (["{photos}/blank.jpg"], "--out is required"),
    (["--out", "{out}", "{tmp}/labels.csv"], "not an image or video"),
    (["--out", "{out}", "--labels", "{tmp}/nolabels.csv", "{photos}/blank.jpg"], "--labels"),
    (["--out", "{out}", "--final_scales", "1,9", "{photos}/blank.jpg"], "final_scales"),
])
def test_whole_command_mistakes_are_one_line_and_write_nothing(setup, args, expect):
    tmp, photos, _, _ = setup
    (tmp / "empty").mkdir(exist_ok=True)
    out = tmp / "never"
    args = [a.format(tmp=tmp, photos=photos, out=out) for a in args]
    proc = run("predict.py", "--workdir", tmp / "run", *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0], proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("bad", ["workdir", "model"])
def test_unreadable_model_is_one_line_and_writes_nothing(setup, bad):
    tmp, photos, _, _ = setup
    out = tmp / f"never_{bad}"
    if bad == "workdir":
        (tmp / "notarun").mkdir(exist_ok=True)
        source = ["--workdir", tmp / "notarun"]
    else:
        (tmp / "garbage.jaxexport").write_bytes(b"\x00garbage")
        source = ["--model", tmp / "garbage.jaxexport"]
    proc = run("predict.py", *source, "--out", out, photos / "blank.jpg")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not out.exists()


def test_photo_conditions_benchmark_moves_photos_and_their_labels_together(tmp_path):
    """benchmarks/photo_conditions.py: a photo enlarged s times has s times the pixels and its
    labels s times the coordinates (pixel j covers [j, j+1)); at 1x without noise the photo
    is copied byte for byte, not re-encoded; turned, its labels turn with it."""
    from conftest import load_benchmark

    bench = load_benchmark("photo_conditions")
    images, kps = synthetic.generate_faces(1, seed=3)
    photo = tmp_path / "face.jpg"
    cv2.imwrite(str(photo), images[0])
    row = {"file": "face.jpg", **dict(zip(keypoints.COLUMNS, kps[0].tolist()))}
    other = {"file": "other.jpg", **dict(zip(keypoints.COLUMNS, kps[0].tolist()))}
    labels = tmp_path / "labels.csv"
    pd.DataFrame([row, other]).to_csv(labels, index=False)
    out = bench.enlarged([photo], labels, tmp_path / "x3", 3.0, 16.0)
    big = cv2.imread(str(tmp_path / "x3" / "face.jpg"), cv2.IMREAD_GRAYSCALE)
    assert big.shape == (3 * images[0].shape[0], 3 * images[0].shape[1])
    scaled = pd.read_csv(out)
    assert list(scaled["file"]) == ["face.jpg"]
    np.testing.assert_allclose(scaled[list(keypoints.COLUMNS)].to_numpy()[0], 3 * kps[0],
                               rtol=1e-6)
    bench.enlarged([photo], labels, tmp_path / "x1", 1.0, 0.0)
    assert (tmp_path / "x1" / "face.jpg").read_bytes() == photo.read_bytes()
    # Turned by 90 degrees: the canvas swaps sides and a dark pixel lands where its label does.
    dot = np.full((60, 80), 200, np.uint8)
    dot[10, 30] = 0  # centre at (30.5, 10.5)
    cv2.imwrite(str(tmp_path / "dot.png"), dot)
    at = {"file": "dot.png", **dict(zip(keypoints.COLUMNS, np.tile([30.5, 10.5], 15)))}
    pd.DataFrame([at]).to_csv(tmp_path / "dot.csv", index=False)
    out = bench.turned([tmp_path / "dot.png"], tmp_path / "dot.csv", tmp_path / "t90", 90.0)
    pic = cv2.imread(str(tmp_path / "t90" / "dot.png"), cv2.IMREAD_GRAYSCALE)
    assert pic.shape == (80, 60)
    x, y = pd.read_csv(out)[list(keypoints.COLUMNS[:2])].to_numpy()[0]
    i, j = np.unravel_index(np.argmin(pic), pic.shape)
    assert (j + 0.5, i + 0.5) == pytest.approx((x, y), abs=1e-6)


def test_compiled_programs_are_kept_for_later_runs(setup, tmp_path):
    """--compilation_cache DIR fills DIR on the first run and a second run reads it back to the
    same rows; a DIR that cannot be a folder is one line naming the option, exit 2."""
    tmp, photos, _, _ = setup
    cache = tmp_path / "cache"
    first, second = tmp_path / "first", tmp_path / "second"
    for out in (first, second):
        proc = run("predict.py", "--workdir", tmp / "run", "--out", out, "--no_overlays",
                   "--compilation_cache", cache, photos / "a" / "x.png")
        assert proc.returncode == 0, proc.stderr
        if out == first:
            kept = sorted(p.name for p in cache.iterdir())
            assert kept, "nothing compiled was kept"
    assert sorted(p.name for p in cache.iterdir()) == kept  # nothing new to compile
    assert (first / "keypoints.csv").read_text() == (second / "keypoints.csv").read_text()

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = run("predict.py", "--workdir", tmp / "run", "--out", tmp_path / "third",
               "--compilation_cache", blocker / "sub", photos / "a" / "x.png")
    assert proc.returncode == 2 and "--compilation_cache" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "third").exists()
