"""Fit the numbers of fkd_jax/geometry/framing_stats.py on photos of the TRAINING people only.
  uv run python scripts/fit_framing.py --split RUN/split.json --photos PHOTOS_DIR
      --youtube CROPS_DIR [--list_validation FILE]

Which person a photo shows: photos/keypoints.csv names people (`person`); the run's split.json
lists rows of youtube_faces/training.zip and person_ids.txt gives each row's person id. Each
photo is matched to its training.zip row by content (its 15 keypoints carried into the
training crop frame by the exact crop rule equal that row's keypoints to < 0.02 px) and the
script checks that this agrees with the other route (person names sorted alphabetically are
person ids 0, 1, 2, ...). Training people = people with a row in `train_row_ids`.

Prints the fitted numbers as a block for framing_stats.py and the residual spreads; with
--list_validation writes the validation people's photo paths (one a line) for scoring with
predict.py --labels. Never copies photos or labels.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from absl import flags

from fkd_jax import cli, files
from fkd_jax.errors import UserError, exit_on_user_error
from fkd_jax.geometry import framing, framing_stats, keypoints
from fkd_jax.geometry.framing import to_gray
from fkd_jax.pictures import detection, images


FLAGS = flags.FlagValues()
flags.DEFINE_string("split", None, "A run's split.json.", flag_values=FLAGS, required=True)
flags.DEFINE_string("photos", None, "Folder of photos with keypoints.csv.",
                    flag_values=FLAGS)
flags.DEFINE_string("youtube", None,
                    "Folder with training.zip and person_ids.txt.", flag_values=FLAGS)
flags.DEFINE_string("list_validation", None, "Write the validation people's photo paths here.",
                    flag_values=FLAGS)


def load_photos(photos: Path) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(keypoints.csv table, keypoints (N, 30), landmarks (N, 136)), rows aligned by file."""
    kp = pd.read_csv(photos / "keypoints.csv")
    lm = pd.read_csv(photos / "landmarks68.csv")
    if list(kp["file"]) != list(lm["file"]):
        raise UserError(f"{photos}: keypoints.csv and landmarks68.csv list different files")
    return kp, kp[list(keypoints.COLUMNS)].to_numpy(np.float64), lm.iloc[:, 1:].to_numpy(np.float64)


def person_ids(kp: pd.DataFrame, pts: np.ndarray, lms: np.ndarray, youtube: Path) -> np.ndarray:
    """Person id (person_ids.txt numbering) of every photo, by content, cross-checked by name."""
    with zipfile.ZipFile(youtube / "training.zip") as z:
        rows = pd.read_csv(z.open("training.csv"), usecols=list(keypoints.COLUMNS))
    table = rows[list(keypoints.COLUMNS)].to_numpy(np.float64)
    ids = np.loadtxt(youtube / "person_ids.txt", dtype=np.int64)
    in_crop = np.stack([framing.training_framing(p, lm).to_crop(p) for p, lm in zip(pts, lms)])
    dist = np.abs(in_crop[:, None, :] - table[None]).max(axis=-1)
    row = dist.argmin(axis=1)
    if dist.min(axis=1).max() > 0.02:
        raise UserError("some photo matches no training.zip row (labels differ by > 0.02 px)")
    by_content = ids[row]
    names = sorted(set(kp["person"]))
    by_name = np.array([names.index(n) for n in kp["person"]])
    if not np.array_equal(by_content, by_name):
        raise UserError("person ids by content and by sorted name disagree")
    return by_content


def best_box(detector: detection.FaceDetector, gray: np.ndarray, centre: np.ndarray):
    """The highest-scored detector box that contains the true keypoints' centre, or None."""
    for d in detector.detect(gray):
        x, y, w, h = d.box
        if x <= centre[0] <= x + w and y <= centre[1] <= y + h:
            return d
    return None


def robust_std(x: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


def main(argv: list[str]) -> None:
    cli.parse_flags(argv, FLAGS)
    if not (FLAGS.photos and FLAGS.youtube):
        raise UserError("--photos (photos with keypoints.csv and landmarks68.csv) and --youtube "
                        "(the face crops' training.zip and person_ids.txt) are required")
    split_path, photos, youtube = Path(FLAGS.split), Path(FLAGS.photos), Path(FLAGS.youtube)
    if not split_path.is_file():
        raise UserError(f"--split {split_path}: no such file")

    kp, pts, lms = load_photos(photos)
    pid = person_ids(kp, pts, lms, youtube)
    split = json.loads(split_path.read_text())
    all_ids = np.loadtxt(youtube / "person_ids.txt", dtype=np.int64)
    train_people = set(all_ids[split["train_row_ids"]].tolist())
    val_people = set(all_ids[split["val_row_ids"]].tolist())
    if train_people & val_people:
        raise UserError(f"{split_path}: a person is on both sides of the split")
    train = np.array([p in train_people for p in pid])
    print(f"photos: {len(kp)}; training people {len(train_people)} ({train.sum()} photos), "
          f"validation people {len(val_people)} ({(~train).sum()} photos)")

    truth = [framing.training_framing(p, lm) for p, lm in zip(pts, lms)]

    # 1. Side from the 15 keypoints' shape, in the square's axes as the pipeline sees them
    #    (turned with the eye line): least squares on log(side / size).
    feats = []
    for p in pts:
        origin, rot, _ = framing.square_axes(p, rotate=True)
        feats.append(framing.shape_features((keypoints.as_points(p) - origin) @ rot))
    x = np.stack([f for f, _ in feats])
    target = np.log(np.array([t.side for t in truth]) / np.array([size for _, size in feats]))
    weights, *_ = np.linalg.lstsq(x[train], target[train], rcond=None)
    rel = x @ weights - target
    print(f"side from keypoints: {len(weights)} weights, log error std "
          f"{rel[train].std():.4f} (train) {rel[~train].std():.4f} (validation)")

    # 2. Detector box -> training square.
    detector = detection.FaceDetector()
    rows = []
    for i in np.flatnonzero(train):
        gray = to_gray(images.read_picture(photos / kp["file"][i]))
        d = best_box(detector, gray, keypoints.as_points(pts[i]).mean(axis=0))
        if d is not None:
            x, y, w, h = d.box
            t = truth[i]
            rows.append(((t.cx - x) / w, (t.cy - y) / h, t.side / np.sqrt(w * h), t.side / w))
    r = np.array(rows)
    centre = np.median(r[:, :2], axis=0)
    side = float(np.exp(np.median(np.log(r[:, 2]))))
    resid = (robust_std(r[:, 0] / r[:, 3]), robust_std(r[:, 1] / r[:, 3]),
             robust_std(np.log(r[:, 2])))
    print(f"detector boxes containing the face: {len(r)} of {train.sum()} training photos")

    in_force = (framing_stats.BOX_CENTRE, framing_stats.BOX_SIDE, framing_stats.SIDE_FROM_SHAPE)
    # The second look frames faces by the rule being fitted here, so it scores with it.
    framing_stats.SIDE_FROM_SHAPE = tuple(float(w) for w in weights)

    # 3. Second look: the cascade's score on the crop framed by each face's TRUE keypoints.
    conf = np.array([detector.confirm_score(
        to_gray(images.read_picture(photos / kp["file"][i])), pts[i])
        for i in np.flatnonzero(train)])
    low = np.percentile(conf, 1)
    print(f"confirm score of the true faces: lowest {np.sort(conf)[:5].round(2)}, "
          f"1st percentile {low:.2f}, median {np.median(conf):.2f}")

    print("\n# ---- framing_stats.py ----")
    print(f"BOX_CENTRE = ({centre[0]:.4f}, {centre[1]:.4f})")
    print(f"BOX_SIDE = {side:.4f}")
    print(f"BOX_RESIDUAL_STD = ({resid[0]:.4f}, {resid[1]:.4f}, {resid[2]:.4f})")
    print("SIDE_FROM_SHAPE = (" + ", ".join(f"{w:.5f}" for w in weights) + ")")
    print(f"SIDE_RESIDUAL_STD = {robust_std(rel[train]):.4f}")
    print(f"CONFIRM_MIN_SCORE = {np.floor(low * 10) / 10:.1f}  # 1st percentile, rounded down")
    print("# (in force now: BOX_CENTRE {}, BOX_SIDE {}, SIDE_FROM_SHAPE {})".format(*in_force))

    if FLAGS.list_validation is not None:
        paths = [str((photos / f).resolve()) for f in kp["file"][~train]]
        files.write_text(FLAGS.list_validation, "\n".join(paths) + "\n")
        print(f"wrote {len(paths)} validation photo paths to {FLAGS.list_validation}")


if __name__ == "__main__":
    exit_on_user_error(main)(sys.argv)
