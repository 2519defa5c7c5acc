"""Restore a trained run from its directory: the one restore path (eval, predict, export, API).

An ensemble's directory (fkd_jax.training.ensemble) restores as one `Run` whose parameters are
a tuple, one entry per member, predicting the members' mean.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_collections

from fkd_jax.errors import UserError
from fkd_jax.inference.predictor import Run
from fkd_jax.training import run_dir


def read_run_config(workdir: Path) -> ml_collections.ConfigDict:
    """The resolved config a run was trained with (its config.json), after checking that this
    version of fkd-jax wrote the directory (`run_dir.check_run_format`)."""
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise UserError(f"--workdir {workdir} is not a run directory (no config.json); "
                        "train one with train.py first")
    run_dir.check_run_format(workdir)
    try:
        return ml_collections.ConfigDict(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def load_run(workdir: str | Path, which: str = "best") -> Run:
    """Restore the `which` ("best" or "latest") checkpoint of a run directory (of each member's,
    for an ensemble)."""
    from fkd_jax.training import checkpoints, ensemble, steps

    workdir = Path(workdir)
    config = read_run_config(workdir)
    n = ensemble.members(config)
    if n > 1:
        runs = [load_run(ensemble.member_dir(workdir, i), which) for i in range(n)]
        return Run(config, runs[0].graphdef, tuple(r.params for r in runs),
                   {"epoch": [r.meta["epoch"] for r in runs]}, members=n)
    graphdef, abstract = steps.abstract_state(config)
    with checkpoints.Checkpoints(workdir, read_only=True) as ckpt:
        restored = (ckpt.restore_best if which == "best" else ckpt.restore_latest)(abstract)
    if restored is None:
        raise UserError(f"{workdir}/checkpoints holds no {which} checkpoint yet")
    state, meta = restored
    return Run(config, graphdef, state.get("avg_params", state["params"]), meta)


