"""Write procedural faces (fkd_jax.data.synthetic) as Kaggle-format CSV files: training.csv and,
with --n_test > 0, test.csv and IdLookupTable.csv; the same flags give the same bytes.
  uv run python scripts/make_synthetic.py --out DIR --n 500 --seed 0 [--n_test 100] [--kaggle_missing]
"""

from __future__ import annotations

import sys

from absl import flags

from fkd_jax import cli
from fkd_jax.data import synthetic
from fkd_jax.errors import exit_on_user_error

FLAGS = flags.FlagValues()
flags.DEFINE_string("out", None, "Output directory.", flag_values=FLAGS, required=True)
flags.DEFINE_integer("n", None, "Training faces.", lower_bound=1, flag_values=FLAGS,
                     required=True)
flags.DEFINE_integer("seed", None, "Random seed (face i depends only on seed and i).",
                     lower_bound=0, flag_values=FLAGS, required=True)
flags.DEFINE_integer("n_test", 0, "Also write test.csv and IdLookupTable.csv with this many "
                     "faces.", lower_bound=0, flag_values=FLAGS)
flags.DEFINE_bool("kaggle_missing", False, "Leave labels out as in Kaggle's training.csv "
                  "(~70% of rows keep 4 keypoints).", flag_values=FLAGS)


def main(argv: list[str]) -> None:
    cli.parse_flags(argv, FLAGS)
    paths = synthetic.write_kaggle_files(FLAGS.out, FLAGS.n, FLAGS.seed, FLAGS.kaggle_missing,
                                         FLAGS.n_test)
    print(" ".join(str(path) for path in paths.values()))


if __name__ == "__main__":
    exit_on_user_error(main)(sys.argv)
