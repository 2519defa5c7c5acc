"""Orbax checkpoints of the training state: the latest (for resuming) and the best (for eval).

Layout under the work directory:
  checkpoints/latest/<epoch>/  the two most recent epochs (the older one is the fallback if the
                               newest is unreadable, e.g. a kill during its save)
  checkpoints/best/<epoch>/    the epoch with the lowest validation RMSE so far
Each checkpoint holds `state` (the training-state pytree) and `meta` (JSON: epoch, step, best
validation RMSE, model name, ...). Orbax writes into a temporary directory and renames it when
complete, so a half-written checkpoint is never taken for a finished one.

Restores always go against an abstract target (shapes and dtypes of the current model), and a
structure or shape mismatch is a `UserError` naming the first differing array.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from fkd_jax.errors import UserError


def abstract_like(state) -> Any:
    """ShapeDtypeStructs of `state` (works on arrays or on `jax.eval_shape` output)."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


def _key_name(key) -> str:
    for attr in ("key", "idx", "name"):  # DictKey, SequenceKey, GetAttrKey
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _shapes(tree) -> dict[str, tuple]:
    """{'opt_state/0/mu/convs/0/bias': shape, ...}; orbax metadata stores namedtuples as dicts
    and integer keys as strings, so paths are compared by their names alone."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)
    return {"/".join(_key_name(k) for k in path): tuple(getattr(leaf, "shape", ()))
            for path, leaf in flat if leaf is not None}


def _check_compatible(saved_tree, abstract, where: Path) -> None:
    saved, wanted = _shapes(saved_tree), _shapes(abstract)
    for key in sorted(set(saved) | set(wanted)):
        s, w = saved.get(key), wanted.get(key)
        if s != w:
            what = (f"{key}: saved {s if s is not None else 'absent'}, "
                    f"this model needs {w if w is not None else 'absent'}")
            raise UserError(f"checkpoint {where} does not match the configured model ({what}); "
                            "use the config it was trained with or a new --workdir")


class _Manager:
    """One orbax CheckpointManager holding (state, meta) per epoch."""

    def __init__(self, directory: Path, max_to_keep: int, read_only: bool = False):
        self.directory = directory
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                               read_only=read_only)
        # Handlers up front, so a fresh (e.g. read-only) manager can read item metadata.
        self._mgr = ocp.CheckpointManager(directory, options=options, item_handlers={
            "state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})

    def steps(self) -> list[int]:
        return sorted(self._mgr.all_steps())

    def save(self, epoch: int, state, meta: dict) -> None:
        self._mgr.save(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

    def restore(self, epoch: int, abstract) -> tuple[Any, dict]:
        where = self.directory / str(epoch)
        saved = self._mgr.item_metadata(epoch)["state"]
        if saved is None:
            raise ValueError(f"no readable metadata in {where}")
        _check_compatible(getattr(saved, "tree", saved), abstract, where)
        out = self._mgr.restore(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        return out["state"], dict(out["meta"])

    def wait(self) -> None:
        self._mgr.wait_until_finished()

    def close(self) -> None:
        self._mgr.close()


class Checkpoints:
    """The run's latest and best checkpoints. Call `close()` (or use `with`) before exit."""

    def __init__(self, workdir: str | Path, read_only: bool = False):
        root = Path(workdir).absolute() / "checkpoints"  # orbax needs absolute paths
        self._closed = False
        self.latest = _Manager(root / "latest", max_to_keep=2, read_only=read_only)
        self.best = _Manager(root / "best", max_to_keep=1, read_only=read_only)

    def __enter__(self) -> "Checkpoints":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def save(self, epoch: int, state, meta: dict, is_best: bool) -> None:
        """Save asynchronously; `state` must not be donated/deleted before `wait()`."""
        self.latest.save(epoch, state, meta)
        if is_best:
            self.best.save(epoch, state, meta)

    def restore_latest(self, abstract) -> tuple[Any, dict] | None:
        """The newest readable latest checkpoint, or None if there is none.

        An unreadable newest checkpoint (corrupted or cut short) falls back to the previous one
        with a warning; a model mismatch is an error, never a silent fallback.
        """
        return _restore_newest(self.latest, abstract)

    def restore_best(self, abstract) -> tuple[Any, dict] | None:
        return _restore_newest(self.best, abstract)

    def wait(self) -> None:
        self.latest.wait()
        self.best.wait()

    def close(self) -> None:
        """Wait for pending saves and release the managers (safe to call twice)."""
        if self._closed:
            return
        self._closed = True
        self.wait()
        self.latest.close()
        self.best.close()


def _restore_newest(manager: _Manager, abstract):
    steps = manager.steps()
    for i, epoch in enumerate(reversed(steps)):
        try:
            return manager.restore(epoch, abstract)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - any read failure means "unreadable"
            where = manager.directory / str(epoch)
            if i + 1 < len(steps):
                print(f"warning: checkpoint {where} is unreadable ({type(e).__name__}: "
                      f"{str(e).splitlines()[0][:200]}); using the previous one", file=sys.stderr)
                continue
            raise UserError(f"checkpoint {where} is unreadable ({type(e).__name__}) and no "
                            "earlier one exists; delete it to start over") from e
    return None
