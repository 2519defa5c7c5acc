"""Derive the synthetic faces' shape model and label-pattern fractions from Kaggle's real labels, into
`fkd_jax/geometry/face_shape_stats.py` (from which `fkd_jax.data.synthetic` samples face shapes).
    uv run python scripts/fit_face_shape.py --labels training_keypoints.csv --lookup IdLookupTable.csv

With --split (a run's split.json: only its training rows are read) and --shapes_only, the shape
model alone of another labelled set, e.g. the filmed faces' `filmed_shape_stats.py`:
    uv run python scripts/fit_face_shape.py --labels PATH/training.zip --split RUN/split.json \
        --shapes_only --out fkd_jax/geometry/filmed_shape_stats.py

The file holds summary numbers only (a mean shape, a few principal components, their spreads,
residual spreads and a handful of fractions), never label rows.

The shape model is a PCA of the 2140 complete rows in raw pixel coordinates, so the leading
components carry the pose (position, size, in-plane rotation) as well as the face's own shape;
the variance the kept components miss is returned per coordinate as independent residual
noise, so sampled shapes match the real per-coordinate spread.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from absl import flags

from fkd_jax import cli, files
from fkd_jax.errors import DataError, UserError, exit_on_user_error
from fkd_jax.geometry.keypoints import COLUMNS, KEYPOINT_NAMES, SPARSE_SET

ROOT = Path(__file__).resolve().parents[1]
NUM_COMPONENTS = 12  # ~95% of the variance of Kaggle's complete rows

FLAGS = flags.FlagValues()
flags.DEFINE_string("labels", None,
                    "Kaggle training labels (the 30 keypoint columns; Image not needed).",
                    flag_values=FLAGS)
flags.DEFINE_string("lookup", None, "Kaggle's lookup table.",
                    flag_values=FLAGS)
flags.DEFINE_string("out", str(ROOT / "fkd_jax" / "geometry" / "face_shape_stats.py"),
                    "The python module written.", flag_values=FLAGS)
flags.DEFINE_string("split", None, "A run's split.json: fit on its training rows only.",
                    flag_values=FLAGS)
flags.DEFINE_bool("shapes_only", False, "Write the shape model alone (no label pattern, no "
                  "lookup table).", flag_values=FLAGS)
flags.DEFINE_integer("components", NUM_COMPONENTS, "Principal components kept.", lower_bound=1,
                     flag_values=FLAGS)


def fit_shape(keypoints: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """PCA of complete shapes (N, 30) px: mean (30,), components (k, 30), their stds (k,),
    and the per-coordinate std (30,) of what the k components leave unexplained."""
    mean = keypoints.mean(axis=0)
    centred = keypoints - mean
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    var = s**2 / (len(keypoints) - 1)
    comps = vt[:k] * np.sign(vt[:k].sum(axis=1, keepdims=True) + 1e-12)  # stable sign
    total = centred.var(axis=0, ddof=1)
    explained = (comps**2 * var[:k, None]).sum(axis=0)
    return {"mean": mean, "components": comps, "component_std": np.sqrt(var[:k]),
            "residual_std": np.sqrt(np.maximum(total - explained, 0.0)),
            "explained": var[:k].sum() / var.sum()}


def missing_pattern(present: np.ndarray) -> dict[str, object]:
    """Fractions of rows complete / exactly SPARSE_SET / other, and per-keypoint presence in the
    other rows. `present` is bool (N, 15), one column per keypoint."""
    sparse = np.isin(KEYPOINT_NAMES, SPARSE_SET)
    complete = present.all(axis=1)
    sparse_only = (present == sparse).all(axis=1)
    other = ~(complete | sparse_only)
    return {"complete": complete.mean(), "sparse_only": sparse_only.mean(),
            "other_presence": present[other].mean(axis=0), "n_rows": len(present),
            "n_complete": int(complete.sum()), "n_sparse_only": int(sparse_only.sum())}


def lookup_full_fraction(lookup: pd.DataFrame) -> tuple[float, int]:
    """Fraction of test images for which more than the 8 sparse coordinates are requested."""
    per_image = lookup.groupby("ImageId").size()
    return float((per_image > 2 * len(SPARSE_SET)).mean()), len(per_image)


def _literal(values, decimals: int, indent: int = 4) -> str:
    """A tuple literal of rounded floats, wrapped to lines of at most 96 characters."""
    body = textwrap.fill(", ".join(f"{v:.{decimals}f}" for v in np.ravel(values)) + ",",
                         width=96 - indent, break_on_hyphens=False)
    return "(\n" + textwrap.indent(body, " " * indent) + "\n" + " " * (indent - 4) + ")"


def _shape_text(shape: dict, first_comment: str) -> str:
    """The shape model's names (what `fkd_jax.data.synthetic` samples from), as module text."""
    comps = ",\n".join(f"    {_literal(c, 4, indent=8)}" for c in shape["components"])
    return f'''{first_comment}# shape = MEAN_SHAPE + sum_k b_k * COMPONENTS[k] + residual, b_k ~ N(0, COMPONENT_STD[k]^2),
# residual_j ~ N(0, RESIDUAL_STD[j]^2). The {len(shape["components"])} components explain \
{100 * shape["explained"]:.1f}% of the variance.
MEAN_SHAPE = {_literal(shape["mean"], 3)}
COMPONENT_STD = {_literal(shape["component_std"], 4)}
COMPONENTS = (
{comps},
)
RESIDUAL_STD = {_literal(shape["residual_std"], 4)}

# Per-coordinate spread of the complete rows (for comparison only).
REAL_STD = {_literal(shape["real_std"], 3)}
'''


def render_module(shape: dict, pattern: dict, full_fraction: float, n_test_images: int) -> str:
    shape_comment = (f"# Shape model: PCA of the {pattern['n_complete']} complete rows in raw "
                     "pixel coordinates.\n")
    return f'''"""Summary numbers of Kaggle's facial keypoint labels, for `fkd_jax.data.synthetic`.

GENERATED by scripts/fit_face_shape.py from the 7049 rows of Kaggle's training labels and its
IdLookupTable.csv ({n_test_images} test images); do not edit by hand. Only summaries, no rows.
Pixels, Kaggle column order (fkd_jax.geometry.keypoints.COLUMNS).
"""

{_shape_text(shape, shape_comment)}
# Missing-label pattern of training.csv: fraction of rows with all 15 keypoints, with exactly
# the 4 of keypoints.SPARSE_SET, and otherwise (the rest) each keypoint present with
# OTHER_PRESENCE[k] (one per keypoint, KEYPOINT_NAMES order).
FRACTION_COMPLETE = {pattern["complete"]:.4f}
FRACTION_SPARSE_ONLY = {pattern["sparse_only"]:.4f}
OTHER_PRESENCE = {_literal(pattern["other_presence"], 3)}

# IdLookupTable.csv: the leading block of test images asks for all keypoints, the rest for the
# 8 coordinates of SPARSE_SET only. Fraction of test images in the leading block:
LOOKUP_FULL_FRACTION = {full_fraction:.4f}
'''


def render_shape_module(shape: dict, source: str, n_rows: int) -> str:
    """A module of the shape model alone."""
    return f'''"""Shape model of {source}'s 15 keypoints, for `fkd_jax.data.synthetic`.

GENERATED by scripts/fit_face_shape.py --shapes_only from {n_rows} complete label rows (a run's
training people only); do not edit by hand. Only summaries, no rows. Pixels, Kaggle column
order (fkd_jax.geometry.keypoints.COLUMNS).
"""

{_shape_text(shape, "")}'''


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataError(path, "file not found")
    return pd.read_csv(path)


def main(argv: list[str]) -> None:
    cli.parse_flags(argv, FLAGS)
    if not FLAGS.labels or not (FLAGS.lookup or FLAGS.shapes_only):
        raise UserError("--labels (Kaggle's training keypoints CSV) and --lookup (IdLookupTable.csv) "
                        "are required (--lookup not with --shapes_only)")
    labels, out = Path(FLAGS.labels), Path(FLAGS.out)

    table = _read_csv(labels)
    if FLAGS.split:
        from fkd_jax.data import preparation

        train_rows, _ = preparation.load_split(FLAGS.split)
        if len(train_rows) and train_rows.max() >= len(table):
            raise DataError(labels, f"has {len(table)} rows; --split {FLAGS.split} names row "
                            f"{train_rows.max()}")
        table = table.iloc[train_rows]
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise DataError(labels, f"missing keypoint columns {missing[:3]}")
    values = table[list(COLUMNS)].to_numpy(dtype=np.float64)
    present = ~np.isnan(values)
    if not (present[:, 0::2] == present[:, 1::2]).all():
        raise DataError(labels, "some keypoint has x without y or y without x")
    complete = values[present.all(axis=1)]
    shape = fit_shape(complete, FLAGS.components)
    shape["real_std"] = complete.std(axis=0, ddof=1)
    if FLAGS.shapes_only:
        files.write_text(out, render_shape_module(shape, f"{labels.parent.name}/{labels.name}",
                                                  len(complete)))
        print(f"wrote {out}: {len(complete)} complete rows, {FLAGS.components} components "
              f"explain {100 * shape['explained']:.1f}%")
        return
    pattern = missing_pattern(present[:, 0::2])
    full_fraction, n_test_images = lookup_full_fraction(_read_csv(Path(FLAGS.lookup)))

    text = render_module(shape, pattern, full_fraction, n_test_images)
    files.write_text(out, text)
    print(f"wrote {out}: {len(complete)} complete of {pattern['n_rows']} rows, "
          f"{FLAGS.components} components explain {100 * shape['explained']:.1f}%, "
          f"sparse-only {pattern['n_sparse_only']}, lookup full fraction {full_fraction:.4f}")


if __name__ == "__main__":
    exit_on_user_error(main)(sys.argv)
