"""Draw random faces of a Kaggle-format file (training.csv or a .zip holding it) with their
labelled keypoints, titled by spreadsheet row, into one figure (.png, .pdf or .svg).
  uv run python scripts/plot_faces.py --data training.csv --out faces.png [--n 32] [--seed 0]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from absl import flags

from fkd_jax import cli
from fkd_jax.data.kaggle import load_training
from fkd_jax.errors import UserError, exit_on_user_error
from fkd_jax.evaluation.plots import plot_face_grid

FLAGS = flags.FlagValues()
flags.DEFINE_string("data", None, "training.csv or a .zip holding it.", flag_values=FLAGS,
                    required=True)
flags.DEFINE_string("out", None, "Output figure (.png, .pdf or .svg).", flag_values=FLAGS,
                    required=True)
flags.DEFINE_integer("n", 32, "Faces to draw (random rows).", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "Which random rows.", lower_bound=0, flag_values=FLAGS)


def main(argv: list[str]) -> None:
    cli.parse_flags(argv, FLAGS)
    out = Path(FLAGS.out)
    if out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UserError(f"--out {out}: use a .png, .pdf or .svg file name")
    data = load_training(FLAGS.data)
    if len(data) == 0:
        raise UserError(f"{FLAGS.data}: no rows to draw")
    rows = np.sort(np.random.default_rng(FLAGS.seed).choice(len(data), min(FLAGS.n, len(data)),
                                                            replace=False))
    shown = data.subset(rows)
    titles = [f"row {r + 2}" for r in shown.row_ids]  # spreadsheet rows: header is row 1
    path = plot_face_grid(out, shown.images, shown.keypoints, mask=shown.mask, titles=titles)
    print(f"wrote {path} ({len(rows)} of {len(data)} faces)")


if __name__ == "__main__":
    exit_on_user_error(main)(sys.argv)
