r"""Keypoints of a peer (dlib or MediaPipe Face Mesh) on photos, in fkd-jax's keypoints.csv format.
  benchmarks/.peers/dlib/bin/python benchmarks/peer_landmarks.py --peer dlib --out OUT PHOTO...
  benchmarks/.peers/mediapipe/bin/python benchmarks/peer_landmarks.py --peer mediapipe \
      --out OUT --list photos.txt
Runs in the peer's own environment (`bash benchmarks/setup_peers.sh`), never in fkd-jax's, and
imports nothing of fkd-jax; benchmarks/peers.py runs it beside predict.py and scores its output.

OUT receives:
  keypoints.csv    the columns of fkd-jax's keypoints.csv (fkd_jax/pictures/outputs.py): file,
                   frame (0), face, box_x, box_y, box_w, box_h, score, the 30 Kaggle keypoint
                   columns in the photo's pixels (continuous coordinates: a pixel's centre at
                   +0.5); a photo with no face has one row of empty cells
  landmarks68.csv  dlib only: file, face, p0_x, p0_y, ... p67_y (iBUG 68 landmarks)
  timing.json      load_s (from the script's start: imports and model load), loop_s (the
                   photos), total_s, photos_per_s (photos / total_s), latency_s (median
                   seconds of one photo in the loop: decode, detect, landmarks)
Peers:
  dlib       HOG face detector (`detector.run(image, 1)`: upsampled once), then the 68-point
             shape predictor of face_recognition_models on each box; +0.5 px on dlib's integer
             pixel indices; the 15 Kaggle keypoints read off the 68 as the shared labels were
             made (eye centres = mean of each eye's six points, corners 42/45 and 39/36, ...:
             IBUG68_TO_KAGGLE). Box: dlib's rectangle; score: the HOG detector's.
  mediapipe  `mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=4)`,
             normalised mesh coordinates x width and x height; the 15 from the usual
             mesh-to-iBUG correspondences (MESH_TO_KAGGLE). Box: the mesh's bounds; no score.
"""

import time

STARTED = time.perf_counter()  # before the imports below: load_s counts them

import csv  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, Sequence  # noqa: E402

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

PEERS = ("dlib", "mediapipe")
KEYPOINT_NAMES = (
    "left_eye_center", "right_eye_center", "left_eye_inner_corner", "left_eye_outer_corner",
    "right_eye_inner_corner", "right_eye_outer_corner", "left_eyebrow_inner_end",
    "left_eyebrow_outer_end", "right_eyebrow_inner_end", "right_eyebrow_outer_end", "nose_tip",
    "mouth_left_corner", "mouth_right_corner", "mouth_center_top_lip", "mouth_center_bottom_lip")
KAGGLE_COLUMNS = tuple(f"{n}_{a}" for n in KEYPOINT_NAMES for a in "xy")
# fkd-jax's keypoints.csv columns; the confidence cells stay empty (neither peer gives one).
CSV_COLUMNS = ("file", "frame", "face", "box_x", "box_y", "box_w", "box_h", "score",
               *KAGGLE_COLUMNS, *(f"{n}_confidence" for n in KEYPOINT_NAMES))
LANDMARK_COLUMNS = ("file", "face", *(f"p{i}_{a}" for i in range(68) for a in "xy"))
# Each Kaggle keypoint (KEYPOINT_NAMES order) as the mean of these points of the peer's set.
# iBUG 68 (0-based), as the shared labels were made; the subject's left eye is 42-47.
IBUG68_TO_KAGGLE = (tuple(range(42, 48)), tuple(range(36, 42)), (42,), (45,), (39,), (36,),
                    (22,), (26,), (21,), (17,), (30,), (54,), (48,), (51,), (57,))
# MediaPipe's 468-point mesh: eye contours, eye corners, brow ends, nose tip, mouth corners, lips.
MESH_TO_KAGGLE = ((362, 385, 387, 263, 373, 380), (33, 160, 158, 133, 153, 144), (362,), (263,),
                  (133,), (33,), (336,), (300,), (107,), (70,), (1,), (291,), (61,), (0,), (17,))

# A peer: RGB uint8 (H, W, 3) -> faces, each (box (x, y, w, h), score or None, points (N, 2)).
Face = tuple[tuple[float, float, float, float], float | None, np.ndarray]
Peer = Callable[[np.ndarray], list[Face]]

FLAGS = flags.FlagValues()
flags.DEFINE_enum("peer", None, list(PEERS), "Which peer.", flag_values=FLAGS)
flags.DEFINE_string("out", None, "Output folder (required).", flag_values=FLAGS)
flags.DEFINE_string("list", None, "Text file of photo paths, one a line (besides any PHOTO "
                    "arguments).", flag_values=FLAGS)


def kaggle15(points: np.ndarray, groups: Sequence[Sequence[int]]) -> np.ndarray:
    """(30,) Kaggle keypoints (x, y interleaved) of a peer's points (N, 2): each keypoint the
    mean of its group; one function for both peers, so both map alike."""
    return np.concatenate([points[list(g)].mean(axis=0) for g in groups])


def dlib_peer() -> tuple[Peer, Sequence[Sequence[int]]]:
    """dlib's HOG detector and 68-point predictor. The model file is found without importing
    face_recognition_models (its __init__ needs pkg_resources, which new setuptools lack)."""
    import importlib.util

    import dlib

    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("face_recognition_models is not installed (setup_peers.sh)")
    model = (Path(spec.submodule_search_locations[0]) / "models"
             / "shape_predictor_68_face_landmarks.dat")
    detector, predictor = dlib.get_frontal_face_detector(), dlib.shape_predictor(str(model))

    def run(rgb: np.ndarray) -> list[Face]:
        rects, scores, _ = detector.run(rgb, 1)
        faces = []
        for rect, s in zip(rects, scores):
            shape = predictor(rgb, rect)
            # dlib gives integer pixel indices; a pixel's centre is at +0.5 here.
            points = np.array([(p.x + 0.5, p.y + 0.5) for p in shape.parts()], np.float64)
            box = (float(rect.left()), float(rect.top()), float(rect.width()),
                   float(rect.height()))
            faces.append((box, float(s), points))
        return faces

    return run, IBUG68_TO_KAGGLE


def mediapipe_peer() -> tuple[Peer, Sequence[Sequence[int]]]:
    """MediaPipe Face Mesh on still photos (each photo detected afresh, up to 4 faces)."""
    import mediapipe as mp

    mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=4)

    def run(rgb: np.ndarray) -> list[Face]:
        h, w = rgb.shape[:2]
        found = mesh.process(rgb).multi_face_landmarks or []
        faces = []
        for landmarks in found:
            points = np.array([(p.x * w, p.y * h) for p in landmarks.landmark], np.float64)
            lo, hi = points.min(axis=0), points.max(axis=0)
            faces.append(((float(lo[0]), float(lo[1]), float(hi[0] - lo[0]),
                           float(hi[1] - lo[1])), None, points))
        return faces

    return run, MESH_TO_KAGGLE


def read_rgb(path: str) -> np.ndarray:
    """A photo as RGB uint8 (H, W, 3), contiguous (both peers want that)."""
    from PIL import Image

    with Image.open(path) as im:
        return np.ascontiguousarray(np.asarray(im.convert("RGB")))


def face_rows(name: str, faces: list[Face], groups: Sequence[Sequence[int]]
              ) -> tuple[list[dict], list[dict]]:
    """(keypoints.csv rows, landmarks68.csv rows) of one photo: one per face, or a row of
    empty cells (and no landmark row) when it has none."""
    if not faces:
        return [{"file": name, "frame": 0}], []
    rows, landmarks = [], []
    for i, (box, score, points) in enumerate(faces):
        row = {"file": name, "frame": 0, "face": i, "score": score}
        row.update(zip(("box_x", "box_y", "box_w", "box_h"), box))
        row.update(zip(KAGGLE_COLUMNS, kaggle15(points, groups)))
        rows.append(row)
        if len(points) == 68:
            landmarks.append({"file": name, "face": i,
                              **dict(zip(LANDMARK_COLUMNS[2:], points.reshape(-1)))})
    return rows, landmarks


def write_csv(path: Path, columns: Sequence[str], rows: list[dict]) -> None:
    """CSV with fixed columns, numbers at 2 decimals (as fkd-jax's keypoints.csv), empty cells
    for what a row lacks; written to a temporary name and renamed (never half written)."""
    def cell(v) -> str:
        return "" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)

    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([cell(r.get(c)) for c in columns] for r in rows)
    tmp.replace(path)


def run_photos(peer: Peer, groups: Sequence[Sequence[int]], photos: list[str]
               ) -> tuple[list[dict], list[dict], list[float], list[str]]:
    """Every photo through the peer: (keypoints rows, landmark rows, seconds per photo, photos
    that could not be read). An unreadable photo is named on stderr and gets no rows."""
    rows, landmarks, seconds, failed = [], [], [], []
    for name in photos:
        t = time.perf_counter()
        try:
            rgb = read_rgb(name)
        except OSError as e:
            print(f"error: {name}: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
            failed.append(name)
            continue
        r, lm = face_rows(name, peer(rgb), groups)
        seconds.append(time.perf_counter() - t)
        rows += r
        landmarks += lm
    return rows, landmarks, seconds, failed


def peer_version(name: str) -> str:
    """The installed version of the peer's package, for the report."""
    from importlib import metadata

    return metadata.version({"dlib": "dlib-bin", "mediapipe": "mediapipe"}[name])


def parse_args(argv: list[str]) -> tuple[str, Path, list[str]]:
    """absl flags as fkd_jax.cli parses them (this interpreter has no fkd_jax): --help prints
    the docstring's first paragraph and the flags; a mistake is one line, exit status 2."""
    if any(a in ("--help", "-h") for a in argv[1:]):
        print(__doc__.split("\n\n")[0] + "\n\nflags:\n" + FLAGS.get_help())
        raise SystemExit(0)
    try:
        photos = FLAGS(argv)[1:]
        if FLAGS.peer is None or FLAGS.out is None:
            raise flags.Error("--peer and --out are required")
        if FLAGS.list is not None:
            if not Path(FLAGS.list).is_file():
                raise flags.Error(f"--list {FLAGS.list}: no such file")
            photos += [s.strip() for s in Path(FLAGS.list).read_text().splitlines() if s.strip()]
        if not photos:
            raise flags.Error("give photos: PHOTO arguments or --list FILE")
        missing = [p for p in photos if not Path(p).is_file()]
        if missing:
            raise flags.Error(f"{missing[0]}: no such file"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        out = Path(FLAGS.out)
        out.mkdir(parents=True, exist_ok=True)
    except (flags.Error, OSError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        raise SystemExit(2) from None
    return FLAGS.peer, out, photos


def main(argv: list[str]) -> int:
    name, out, photos = parse_args(argv)
    peer, groups = {"dlib": dlib_peer, "mediapipe": mediapipe_peer}[name]()
    load_s = time.perf_counter() - STARTED
    t = time.perf_counter()
    rows, landmarks, seconds, failed = run_photos(peer, groups, photos)
    loop_s = time.perf_counter() - t
    write_csv(out / "keypoints.csv", CSV_COLUMNS, rows)
    if name == "dlib":
        write_csv(out / "landmarks68.csv", LANDMARK_COLUMNS, landmarks)
    total_s = time.perf_counter() - STARTED
    timing = {"peer": name, "version": peer_version(name), "photos": len(photos), "failed": failed,
              "faces": sum(1 for r in rows if "face" in r),
              "load_s": round(load_s, 4), "loop_s": round(loop_s, 4), "total_s": round(total_s, 4),
              "photos_per_s": round(len(photos) / total_s, 3),
              "latency_s": round(statistics.median(seconds), 5) if seconds else None}
    (out / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    print(f"{name}: {len(photos)} photos, {timing['faces']} faces, {len(failed)} unreadable; "
          f"wrote {out}/keypoints.csv")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
