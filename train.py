"""Train a facial keypoint regressor.
  python train.py --config configs/base.py [--workdir DIR] [--config.train.epochs=5 ...]

With no --config.data.train_path it trains on the embedded procedural faces. Re-running the
same command on the same --workdir resumes from the latest checkpoint. Ctrl-C finishes the
current epoch, saves it and exits (status 130); a non-finite loss stops the run (status 3)
keeping the last good checkpoint. The work itself is `fkd_jax.training.loop.train_and_evaluate`.

With --config.train.members=N > 1 it trains an ensemble (fkd_jax/training/ensemble.py), each
member in --workdir/member<i>: on CPU this command once per member, side by side, each pinned
to its share of the cores; on a GPU or TPU every member in this process, vmapped
(--config.train.members_mode chooses); then it scores the members' mean on the validation
split.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (python, get_config()).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config name>).")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "Multi-host: HOST:PORT of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "Multi-host: this process's index.")


def main(argv: list[str]) -> None:
    from fkd_jax import cli
    from fkd_jax.training import config_check
    from fkd_jax.training import ensemble
    from fkd_jax.training import parallel
    from fkd_jax.training import loop
    from fkd_jax.errors import UserError

    cli.parse_flags(argv, flags.FLAGS)
    if _CONFIG.value is None:
        raise UserError("--config is required, e.g. --config configs/base.py")
    config_check.check_config(_CONFIG.value)  # every key, before anything is read or written
    if ensemble.members(_CONFIG.value) > 1 and _NUM_PROCESSES.value > 1:
        raise UserError("--config.train.members > 1 trains its members side by side on one "
                        "machine; it cannot be combined with --num_processes")
    parallel.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    config_path = config_flags.get_config_filename(flags.FLAGS["config"])
    workdir = cli.check_workdir(Path(_WORKDIR.value or cli.default_workdir(config_path)))
    if ensemble.members(_CONFIG.value) == 1:
        loop.train_and_evaluate(_CONFIG.value, workdir)
        return

    command = [sys.executable, str(Path(__file__).resolve()), *argv[1:]]
    loop.train_ensemble(_CONFIG.value, workdir,
                           lambda i: ensemble.member_command(command, _CONFIG.value, workdir, i))


if __name__ == "__main__":
    from fkd_jax.errors import exit_on_user_error

    exit_on_user_error(main)(sys.argv)
