"""Restore a trained run from its directory: the one restore path (eval, predict, export, API).

An ensemble's directory (fkd_jax.training.ensemble) restores as one `Run` whose parameters are
a tuple, one entry per member, predicting the members' mean. `start_params`/`start_from`
start a new run from a trained one's parameters (`train.init_from`: fine-tuning).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections

from fkd_jax.errors import UserError
from fkd_jax.inference.predictor import Run
from fkd_jax.training import run_dir


def read_run_config(workdir: Path, option: str = "--workdir") -> ml_collections.ConfigDict:
    """The resolved config a run was trained with (its config.json), after checking that this
    version of fkd-jax wrote the directory (`run_dir.check_run_format`). `option` names the
    flag the directory came from, in the error."""
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise UserError(f"{option} {workdir} is not a run directory (no config.json); "
                        "train one with train.py first")
    run_dir.check_run_format(workdir)
    try:
        return ml_collections.ConfigDict(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def load_run(workdir: str | Path, which: str = "best", option: str = "--workdir") -> Run:
    """Restore the `which` ("best" or "latest") checkpoint of a run directory (of each member's,
    for an ensemble); `option` as for `read_run_config`."""
    from fkd_jax.training import checkpoints, ensemble, steps

    workdir = Path(workdir)
    config = read_run_config(workdir, option)
    n = ensemble.members(config)
    if n > 1:
        runs = [load_run(ensemble.member_dir(workdir, i), which, option) for i in range(n)]
        return Run(config, runs[0].graphdef, tuple(r.params for r in runs),
                   {"epoch": [r.meta["epoch"] for r in runs]}, members=n)
    graphdef, abstract = steps.abstract_state(config)
    with checkpoints.Checkpoints(workdir, read_only=True) as ckpt:
        restored = (ckpt.restore_best if which == "best" else ckpt.restore_latest)(abstract)
    if restored is None:
        raise UserError(f"{workdir}/checkpoints holds no {which} checkpoint yet")
    state, meta = restored
    return Run(config, graphdef, state.get("avg_params", state["params"]), meta)


def start_params(source: str | None):
    """The best (averaged) parameters of run directory `source`, a tuple for an ensemble."""
    if not source:
        return None
    return load_run(source, option="--config.train.init_from").params


def start_from(params, source: str, state: dict, tx, member: int, averaging) -> dict:
    """`state` with run `source`'s `params` (its member `member` mod its members, for an
    ensemble) and a fresh optimiser; the model must be the same but for the keypoint outputs.

    Layers that differ only in their last axis (the outputs: one per keypoint, or two per
    keypoint for a regressor) keep this run's fresh initialisation, so a model trained on
    another keypoint set (Kaggle's 15 -> iBUG's 68) starts the new set from its features.
    """
    params = _member(params, member)
    ours, theirs = jax.tree.structure(state["params"]), jax.tree.structure(params)
    if ours != theirs or not all(map(_same_but_outputs, jax.tree.leaves(state["params"]),
                                     jax.tree.leaves(params))):
        raise UserError(f"--config.train.init_from {source}: its model differs from this "
                        "config's (model name and sizes must match)")
    params = jax.tree.map(lambda new, old: jnp.asarray(old if new.shape == old.shape else new),
                          state["params"], params)
    state = {**state, "params": params, "opt_state": tx.init(params)}
    if averaging is not None:
        state["avg_params"] = jax.tree.map(jnp.copy, params)
    return state


def fresh_outputs(state_params, params) -> list[str]:
    """Paths of the layers `start_from` left freshly initialised (the keypoint outputs), once
    it accepted `params` for a state whose own parameters were `state_params`."""
    flat = jax.tree_util.tree_flatten_with_path(state_params)[0]
    return [jax.tree_util.keystr(path)
            for (path, new), old in zip(flat, jax.tree.leaves(_member(params, 0)))
            if new.shape != old.shape]


def _member(params, member: int):
    """Member `member` (mod their number) of an ensemble's parameter tuple; a run's own
    parameters otherwise."""
    return params[member % len(params)] if isinstance(params, tuple) else params


def _same_but_outputs(new, old) -> bool:
    # A hidden layer's width shows in the next layer's input axis too, so only the outputs,
    # which no layer reads, can differ in their last axis alone.
    return new.shape[:-1] == old.shape[:-1] and new.ndim == old.ndim
