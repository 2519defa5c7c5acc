"""How long `load_training` takes on a Kaggle-sized training.csv and its .zip (one JSON line).
  uv run python benchmarks/load_time.py [--labels=PATH] [--repeats=3] [--also=PATH,...]
--also times one load of other files (e.g. youtube_faces/training.zip) into the same line.

Builds, in a temporary directory, a 7049-row training.csv shaped like Kaggle's: the real
keypoint cells (text as shipped, so the same missing pattern and number widths) from
training_keypoints.csv, and uniformly random pixels 0..255 for each Image. Zips it, then
times `load_training` on both (median of --repeats).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from absl import flags

from fkd_jax import cli
from fkd_jax.data.kaggle import IMAGE_COLUMN, NUM_PIXELS, load_training
from fkd_jax.errors import UserError, exit_on_user_error
from fkd_jax.geometry.keypoints import COLUMNS

# development data beside the repository, never committed

FLAGS = flags.FlagValues()
flags.DEFINE_string("labels", None, "Kaggle's keypoint columns as shipped "
                    "(training.csv without its Image column).", flag_values=FLAGS)
flags.DEFINE_integer("repeats", 3, "Loads timed per file (median).", lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_list("also", [], "Other files to time one load of.", flag_values=FLAGS)


def write_kaggle_sized_csv(labels_path: Path, out: Path, seed: int = 0) -> int:
    """training.csv with the label rows of `labels_path` and random images; returns rows."""
    label_lines = labels_path.read_text().splitlines()
    if label_lines[0].split(",") != list(COLUMNS):
        raise UserError(f"{labels_path}: expected the 30 Kaggle keypoint columns")
    rng = np.random.default_rng(seed)
    tokens = [str(v) for v in range(256)]
    with out.open("w") as f:
        f.write(label_lines[0] + "," + IMAGE_COLUMN + "\n")
        for line in label_lines[1:]:
            pixels = rng.integers(0, 256, NUM_PIXELS).tolist()
            f.write(line + "," + " ".join([tokens[v] for v in pixels]) + "\n")
    return len(label_lines) - 1


def median_seconds(path: Path, repeats: int) -> tuple[float, int]:
    times, n = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        n = len(load_training(path))
        times.append(time.perf_counter() - start)
    return statistics.median(times), n


def main(argv: list[str]) -> None:
    cli.parse_flags(argv, FLAGS)
    if not FLAGS.labels:
        raise UserError("--labels is required: Kaggle's training keypoints (a CSV of the 30 columns)")
    labels = Path(FLAGS.labels)
    if not labels.is_file():
        raise UserError(f"--labels {labels}: no such file")
    args = SimpleNamespace(labels=labels, repeats=FLAGS.repeats,
                           also=[Path(p) for p in FLAGS.also])

    with tempfile.TemporaryDirectory() as tmp:
        csv_path, zip_path = Path(tmp) / "training.csv", Path(tmp) / "training.zip"
        rows = write_kaggle_sized_csv(args.labels, csv_path)
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.write(csv_path, "training.csv")
        csv_s, n_csv = median_seconds(csv_path, args.repeats)
        zip_s, n_zip = median_seconds(zip_path, args.repeats)
        assert n_csv == n_zip == rows
        result = {
            "rows": rows,
            "csv_mb": round(csv_path.stat().st_size / 1e6, 1),
            "zip_mb": round(zip_path.stat().st_size / 1e6, 1),
            "csv_s": round(csv_s, 2),
            "zip_s": round(zip_s, 2),
            "repeats": args.repeats,
        }
    for path in args.also:
        seconds, n = median_seconds(path, 1)
        result[str(path)] = {"rows": n, "s": round(seconds, 2)}
    print(json.dumps(result))


if __name__ == "__main__":
    exit_on_user_error(main)(sys.argv)
