"""The peer benchmark without the peers or real data: benchmarks/peers.py's scoring of hand-made
keypoints.csv files and its table, benchmarks/peer_landmarks.py's mappings and CSV writer."""

from __future__ import annotations

import numpy as np
import pytest

from fkd_jax.errors import UserError
from fkd_jax.evaluation import metrics
from fkd_jax.geometry import keypoints
from fkd_jax.pictures import outputs
from fkd_jax.pictures.location import Face
from conftest import load_benchmark

peers = load_benchmark("peers")
peer_landmarks = load_benchmark("peer_landmarks")

# One labelled face per photo: Kaggle's 30 coordinates, outer eye corners 100 px apart.
TRUTH = np.array([150, 100, 70, 100, 130, 100, 160, 100, 90, 100, 60, 100, 130, 80, 170, 75,
                  90, 80, 50, 75, 110, 130, 140, 160, 80, 160, 110, 150, 110, 175], np.float64)


def write_labels(path, names):
    cols = ["file", *keypoints.COLUMNS]
    lines = [",".join(cols)] + [",".join([n, *map(str, TRUTH)]) for n in names]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_keypoints(folder, faces: dict):
    """keypoints.csv as predict.py writes it (outputs.rows_to_csv)."""
    rows = []
    for name, kps in faces.items():
        rows += outputs.face_rows(name, 0, [Face((0.0, 0.0, 10.0, 10.0), 1.0, k) for k in kps])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "keypoints.csv").write_text(outputs.rows_to_csv(rows))


def test_scores_count_a_missed_or_absent_photo_as_a_failure(tmp_path):
    from fkd_jax.pictures import scoring

    names = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    labels = scoring.read_labels(write_labels(tmp_path / "labels.csv", names))
    off = TRUTH.copy()
    off[0::2] += 3.0  # every point 3 px right: NME 3 / 100
    off[1::2] += 4.0  # ... and 4 px down: 5 px, NME 5%
    far = TRUTH + 20.0  # sqrt(800) = 28.3 px: NME 28.3%, a failure still matched
    # b.jpg: a row of empty cells (no face); d.jpg: not in the file at all.
    write_keypoints(tmp_path / "run", {"a.jpg": [off], "b.jpg": [], "c.jpg": [far, TRUTH]})
    result = peers.score_pipeline(tmp_path / "run", names, labels, None, tmp_path / "scores")
    s = result["scores"]
    assert s["n_faces"] == 4 and s["found"] == 0.5
    assert s["nme_mean"] == pytest.approx((0.05 + 0.0) / 2, abs=1e-5)  # c: the nearer face
    assert s["failure_rate"] == 0.5  # b and d
    assert s["auc_10"] == pytest.approx((0.5 + 1.0) / 4, abs=1e-3)
    assert result["extra_faces"] == 1 and result["nme68"] is None
    assert (tmp_path / "scores" / "scores.csv").is_file()


def test_68_point_nme_uses_the_300w_eye_corners(tmp_path):
    from fkd_jax.pictures import scoring

    rng = np.random.default_rng(0)
    truth68 = rng.uniform(50, 150, 136)
    truth68[[72, 73, 90, 91]] = [60, 100, 160, 100]  # points 36 and 45: 100 px apart
    cols = ["file", *keypoints.IBUG68.columns]
    (tmp_path / "l68.csv").write_text(",".join(cols) + "\n"
                                      + ",".join(["a.jpg", *map(str, truth68)]) + "\n")
    labels68 = scoring.read_labels(tmp_path / "l68.csv", "--labels68", keypoints.IBUG68.columns)
    pred68 = truth68 + 2.0  # every point 2*sqrt(2) px off, the jaw's twice that
    pred68[:34] += 2.0
    kp15 = keypoints.kaggle15_from_ibug68(truth68)
    labels = {"a.jpg": kp15[None]}
    write_keypoints(tmp_path / "run", {"a.jpg": [kp15]})
    lm = ["file,face," + ",".join(keypoints.IBUG68.columns),
          ",".join(["a.jpg", "0", *map(str, pred68)])]
    (tmp_path / "run" / "landmarks68.csv").write_text("\n".join(lm) + "\n")
    result = peers.score_pipeline(tmp_path / "run", ["a.jpg"], labels, labels68, tmp_path / "s")
    want = (17 * 4 + 51 * 2) * np.sqrt(2) / 68 / 100
    assert result["nme68"]["nme_mean"] == pytest.approx(want, abs=1e-5)
    assert float(metrics.nme(pred68, truth68, eyes=metrics.IBUG68_OUTER_EYES)) == \
        pytest.approx(want)
    by_part = result["nme68_by_part"]
    assert set(by_part) == {"jaw", "eyebrows", "nose", "eyes", "mouth"}
    assert by_part["jaw"] == pytest.approx(4 * np.sqrt(2) / 100, abs=1e-5)
    assert by_part["mouth"] == pytest.approx(2 * np.sqrt(2) / 100, abs=1e-5)


def test_labels68_without_the_columns_is_a_one_line_error(tmp_path):
    from fkd_jax.pictures import scoring

    write_labels(tmp_path / "k.csv", ["a.jpg"])
    with pytest.raises(UserError, match="--labels68 .*missing column"):
        scoring.read_labels(tmp_path / "k.csv", "--labels68", keypoints.IBUG68.columns)


def test_peer_mapping_of_the_68_is_fkd_jax_s():
    points = np.random.default_rng(1).uniform(0, 200, (68, 2))
    assert np.allclose(peer_landmarks.kaggle15(points, peer_landmarks.IBUG68_TO_KAGGLE),
                       keypoints.kaggle15_from_ibug68(points.reshape(-1)))
    assert peer_landmarks.KAGGLE_COLUMNS == keypoints.COLUMNS
    assert peer_landmarks.CSV_COLUMNS == outputs.CSV_COLUMNS
    assert len(peer_landmarks.MESH_TO_KAGGLE) == keypoints.NUM_KEYPOINTS
    assert all(0 <= i < 468 for g in peer_landmarks.MESH_TO_KAGGLE for i in g)


def test_peer_csv_writer_with_a_fake_peer_is_read_back(tmp_path):
    """A fake peer through peer_landmarks' loop and writer, read by peers.py like predict.py's."""
    from PIL import Image

    for name in ("one.png", "none.png"):
        Image.new("RGB", (40, 30)).save(tmp_path / name)
    photos = [str(tmp_path / "one.png"), str(tmp_path / "none.png")]
    points = np.arange(136, dtype=np.float64).reshape(68, 2) + 0.25

    calls = []

    def fake(rgb):  # a face in the first photo, none in the second
        calls.append(rgb.shape)
        return [((1.0, 2.0, 30.0, 20.0), 0.5, points)] if len(calls) == 1 else []

    rows, landmarks, seconds, failed = peer_landmarks.run_photos(
        fake, peer_landmarks.IBUG68_TO_KAGGLE, photos)
    assert calls == [(30, 40, 3)] * 2
    assert len(seconds) == 2 and failed == [] and len(landmarks) == 1
    peer_landmarks.write_csv(tmp_path / "keypoints.csv", peer_landmarks.CSV_COLUMNS, rows)
    peer_landmarks.write_csv(tmp_path / "landmarks68.csv", peer_landmarks.LANDMARK_COLUMNS,
                             landmarks)
    faces = peers.read_faces(tmp_path / "keypoints.csv", photos)
    assert faces[photos[1]] == []
    (face,) = faces[photos[0]]
    assert face.box == (1.0, 2.0, 30.0, 20.0) and face.score == 0.5
    assert np.allclose(face.keypoints_px, keypoints.kaggle15_from_ibug68(points.reshape(-1)),
                       atol=0.005)
    back = peers.read_landmarks68(tmp_path / "landmarks68.csv")
    assert np.allclose(back[(photos[0], 0)], points.reshape(-1), atol=0.005)


def test_table_has_a_row_per_pipeline():
    scores = {"n_faces": 4, "found": 0.75, "nme_mean": 0.05, "nme_median": 0.04,
              "failure_rate": 0.25, "auc_10": 0.5}
    pipeline = {"scores": scores, "nme68": None, "photos_per_s": 20.0, "latency_s": 0.031,
                "extra_faces": 2,
                "rounds": [{"photos_per_s": 19.0}, {"photos_per_s": 20.0}, {"photos_per_s": 21.0}]}
    report = {"labels68": "l68.csv", "photos": 4, "labelled_faces": 4, "rounds": 3,
              "machine": {"cpus": 2}, "notes": ["mediapipe: not installed; skipped"],
              "pipelines": {"fkd-jax": pipeline, "dlib": {**pipeline, "latency_s": None,
                                                         "nme68": {**scores, "nme_mean": 0.07}}}}
    text = peers.table(report)
    lines = text.splitlines()
    assert lines[0].count("|") == 10 and len([x for x in lines if x.startswith("| ")]) == 3
    assert "| fkd-jax | 75.0% | 2 | 5.00% (4.00%) | 25.0% | 0.500 | 20 (19, 20, 21) | " \
           "31 ms | - |" in text
    assert "| dlib |" in text and "7.00% (4.00%)" in text
    assert "- mediapipe: not installed; skipped" in text


def test_several_fkd_models_are_pipelines_named_by_their_folder_or_file():
    """Two setups of fkd-jax (a run and its ONNX file) are compared inside one run."""
    try:
        peers.FLAGS(["peers.py", "--workdir=runs/unet_pair", "--model=out/small.onnx"])
        assert peers.fkd_models() == {
            "fkd-jax unet_pair": ["--workdir=runs/unet_pair", "--checkpoint=best"],
            "fkd-jax small.onnx": ["--model=out/small.onnx"]}
        peers.FLAGS(["peers.py", "--workdir=", "--model=a/small.onnx"])
        assert peers.fkd_models() == {"fkd-jax": ["--model=a/small.onnx"]}
        peers.FLAGS(["peers.py", "--workdir=", "--model=a/m.onnx,b/m.onnx"])
        with pytest.raises(UserError, match="same name"):
            peers.fkd_models()
        peers.FLAGS(["peers.py", "--workdir=", "--model=a/small.onnx", "--face_net=f.onnx"])
        assert peers.fkd_models() == {  # with a learned face detector: each model twice
            "fkd-jax": ["--model=a/small.onnx"],
            "fkd-jax + face_net": ["--model=a/small.onnx", "--face_net=f.onnx"]}
    finally:
        peers.FLAGS.unparse_flags()
