"""Orbax checkpoints of the training state: the latest (for resuming) and the best (for eval).

Layout under the work directory:
  checkpoints/latest/<epoch>/  the two most recent epochs (the older one is the fallback if the
                               newest is unreadable, e.g. a kill during its save)
  checkpoints/best/<epoch>/    the epoch with the lowest validation RMSE so far
Each checkpoint holds `state` (the training-state pytree) and `meta` (JSON: epoch, step, best
validation RMSE, model name, ..., and the SHA-256 of the state's bytes). Orbax writes into a
temporary directory and renames it when complete, so a half-written checkpoint is never taken
for a finished one; leftover temporary directories (a kill mid-save) are removed on the next
start. Orbax's zstd chunks carry no checksum, so a damaged data file can decode to different
numbers: the digest catches that, and such a checkpoint counts as unreadable.

A save that fails (disk full, directory made read-only) is a `UserError` naming the directory
and the reason; the checkpoints saved before it are untouched.

Restores always go against an abstract target (shapes and dtypes of the current model), and a
structure or shape mismatch is a `UserError` naming the first differing array.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from fkd_jax.errors import UserError


def abstract_like(state) -> Any:
    """ShapeDtypeStructs of `state` (works on arrays or on `jax.eval_shape` output)."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


_DIGEST_KEY = "state_sha256"


def state_digest(state) -> str:
    """SHA-256 over every leaf's dtype, shape and bytes in tree order (replicated arrays: the
    local copy), so a restore can prove it read back exactly what was saved."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(state):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class _DropOrbaxLogs(logging.Filter):
    """Orbax logs each failure from its threads, tracebacks included, before we see it; every
    such failure reaches the user as our own one-line error or warning instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "orbax" not in record.pathname and "orbax" not in str(record.msg)


for _name in ("absl", "asyncio"):
    logging.getLogger(_name).addFilter(_DropOrbaxLogs())


def _is_closed_loop_noise(exc: BaseException | None) -> bool:
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


def _drop_closed_loop_noise() -> None:
    """When a write fails (disk full), tensorstore's native threads still call back into the
    asyncio loop orbax has already closed, and each callback prints a 'RuntimeError: Event
    loop is closed' traceback. Those callbacks carry no information (the failure itself is
    reported as a UserError), so only they are dropped; every other exception still prints."""
    excepthook, unraisablehook = sys.excepthook, sys.unraisablehook
    sys.excepthook = lambda t, v, tb: None if _is_closed_loop_noise(v) else excepthook(t, v, tb)
    sys.unraisablehook = lambda u: (None if _is_closed_loop_noise(u.exc_value)
                                    else unraisablehook(u))


_drop_closed_loop_noise()


def _quiet_failed_io() -> None:
    """After a failed read or write, orbax's leftover asyncio tasks print tracebacks when they
    are collected or at exit ("Event loop is closed"); the one line we print replaces them."""
    sys.unraisablehook = lambda *_: None
    threading.excepthook = lambda *_: None


def _save_error(directory: Path, e: BaseException) -> UserError:
    """One-line UserError for a failed save, naming the directory and the OS's reason.

    The run ends with it, so the leftover noise of the failed write (tracebacks from native
    callback threads via sys.excepthook, concurrent.futures' logged callbacks) is muted too.
    """
    _quiet_failed_io()
    sys.excepthook = lambda *_: None
    logging.disable(logging.CRITICAL)
    text, cause = "", e
    while cause is not None:  # the reason is usually in a chained tensorstore error
        text += f" {cause}"
        cause = cause.__cause__ or cause.__context__
    code = re.search(r"os_error_code=\\?'(\d+)", text)
    if isinstance(e, OSError) and e.strerror:
        reason = e.strerror
    elif code:
        reason = os.strerror(int(code.group(1)))
    else:
        reason = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
    error = UserError(f"could not save a checkpoint in {directory} ({reason}); the checkpoints "
                      "saved before it are intact. Free space or fix the directory, then run "
                      "the same command to resume")
    error.abandon_threads = True  # see errors.exit_on_user_error
    return error


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
        # A kill mid-save leaves a "<epoch>.orbax-checkpoint-tmp" directory: drop it on start.
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                               read_only=read_only,
                                               cleanup_tmp_directories=not read_only)
        # Handlers up front, so a fresh (e.g. read-only) manager can read item metadata.
        self._mgr = ocp.CheckpointManager(directory, options=options, item_handlers={
            "state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})

    def steps(self) -> list[int]:
        return sorted(self._mgr.all_steps())

    def save(self, epoch: int, state, meta: dict) -> None:
        meta = {**meta, _DIGEST_KEY: state_digest(state)}
        try:
            if epoch in self._mgr.all_steps():  # redone after falling back from it
                self._mgr.delete(epoch)
            self._mgr.save(epoch, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
        except Exception as e:  # noqa: BLE001 - any write failure: say where and why
            raise _save_error(self.directory, e) from e

    def restore(self, epoch: int, abstract) -> tuple[Any, dict]:
        where = self.directory / str(epoch)
        saved = self._mgr.item_metadata(epoch)["state"]
        if saved is None:
            raise ValueError(f"no readable metadata in {where}")
        _check_compatible(getattr(saved, "tree", saved), abstract, where)
        out = self._mgr.restore(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        meta = dict(out["meta"])
        digest = meta.pop(_DIGEST_KEY, None)  # absent in checkpoints from before the digest
        if digest is not None and digest != state_digest(out["state"]):
            raise ValueError("the state's bytes do not match the digest saved with them")
        return out["state"], meta

    def wait(self) -> None:
        try:
            self._mgr.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - an async write failed
            raise _save_error(self.directory, e) from e

    def close(self) -> None:
        self._mgr.close()


class Checkpoints:
    """The run's latest and best checkpoints. Call `close()` (or use `with`) before exit."""

    def __init__(self, workdir: str | Path, read_only: bool = False):
        root = Path(workdir).absolute() / "checkpoints"  # orbax needs absolute paths
        self._closed = self._failed = False
        self.latest = _Manager(root / "latest", max_to_keep=2, read_only=read_only)
        self.best = _Manager(root / "best", max_to_keep=1, read_only=read_only)

    def __enter__(self) -> "Checkpoints":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def save(self, epoch: int, state, meta: dict, is_best: bool) -> None:
        """Save asynchronously; `state` must not be donated/deleted before `wait()`."""
        with self._noting_failure():
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
        with self._noting_failure():
            self.latest.wait()
            self.best.wait()

    def close(self) -> None:
        """Wait for pending saves and release the managers (safe to call twice).

        After a failed save (its UserError already raised) this only releases the managers,
        so a `finally: close()` does not replace that error with a second one.
        """
        if self._closed:
            return
        self._closed = True
        if not self._failed:
            try:
                self.wait()
            except UserError:
                self._release_quietly()
                raise
            self.latest.close()
            self.best.close()
        else:
            self._release_quietly()

    @contextlib.contextmanager
    def _noting_failure(self):
        try:
            yield
        except UserError:
            self._failed = True
            raise

    def _release_quietly(self) -> None:
        for manager in (self.latest, self.best):
            try:
                manager.close()
            except Exception:  # noqa: BLE001 - the failed save is the error to report
                pass


def _restore_newest(manager: _Manager, abstract):
    steps = manager.steps()
    for i, epoch in enumerate(reversed(steps)):
        try:
            return manager.restore(epoch, abstract)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - any read failure means "unreadable"
            _quiet_failed_io()
            where = manager.directory / str(epoch)
            if i + 1 < len(steps):
                print(f"warning: checkpoint {where} is unreadable ({type(e).__name__}: "
                      f"{str(e).splitlines()[0][:200]}); using the previous one", file=sys.stderr)
                continue
            raise UserError(f"checkpoint {where} is unreadable ({type(e).__name__}) and no "
                            "earlier one exists; delete it to start over") from e
    return None
