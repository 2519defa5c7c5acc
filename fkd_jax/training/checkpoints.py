"""Orbax checkpoints of the training state: one manager keeps the latest two and the best epoch.

Layout under the work directory:
  checkpoints/<epoch>/   one directory per kept epoch: the two most recent (the older one is the
                         fallback if the newest is unreadable, e.g. a kill during its save) and
                         the one with the lowest validation RMSE (`val_rmse_px`), which may be
                         one of those two. Each epoch is written once.
Each checkpoint holds `state` (the training-state pytree), `meta` (JSON: epoch, step, best
validation RMSE, model name, ..., and the SHA-256 of the state's bytes) and orbax's `metrics`
(`val_rmse_px`, which orbax's preservation policy ranks). Orbax writes into a temporary
directory and renames it when complete, so a half-written checkpoint is never taken for a
finished one; leftover temporary directories (a kill mid-save) are removed on the next start.
Orbax's zstd chunks carry no checksum, so a damaged data file can decode to different numbers:
the digest catches that, and such a checkpoint counts as unreadable.

Saves are asynchronous. `save()` itself hashes the state (SHA-256 of its bytes, for the digest)
and checks the free space (it needs the state's uncompressed size plus 1 MiB: the previous
checkpoints are deleted only after the new one is complete). When it returns, every array of
the state has been copied to host
memory (orbax transfers all arrays to host before it returns unless a device-to-host byte limit
is set, which this module does not set; on CPU the host copy is a view that holds the buffer,
and XLA then declines to donate that buffer), so the caller may donate or overwrite the state's
device buffers at once (`jax.jit(..., donate_argnums=0)`) while the files are written in the
background. The next `save()`, `wait()` or `close()` waits for that write; a write that failed
(disk full, directory made read-only) surfaces there as a `UserError` naming the epoch's
directory and the OS's reason; the checkpoints saved before it are untouched (orbax deletes the
epochs that fall out of the policy only after the new one is committed).

Restores always go against an abstract target (shapes and dtypes of the current model), and a
structure or shape mismatch is a `UserError` naming the first differing array.

Nothing here changes process-wide state for longer than one of our calls: orbax reports a
failed read or write itself (log lines with tracebacks, tensorstore callbacks into a closed
event loop, coroutines that re-raise when collected) before it hands the error to us, and we
report it as one line, so those reports are dropped only while our call runs (`_quiet`), which
also waits for the failed operation's leftovers before it restores every hook and logger. A
write that fails in the background between our calls is reported by orbax at that moment;
disk full, the common cause, is therefore checked before each save starts (`_check_space`).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import hashlib
import logging
import math
import os
import re
import sys
import time
import types
from pathlib import Path
from typing import Any, Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

from fkd_jax.errors import UserError

BEST_METRIC = "val_rmse_px"  # lower is better
KEEP_LATEST = 2
_DIGEST_KEY = "state_sha256"
_METADATA_BYTES = 2**20  # a checkpoint's files besides the arrays' bytes: ~40 KB, rounded up


def abstract_like(state) -> Any:
    """ShapeDtypeStructs of `state` (works on arrays or on `jax.eval_shape` output)."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


def state_digest(state) -> str:
    """SHA-256 over every leaf's dtype, shape and bytes in tree order (replicated arrays: the
    local copy), so a restore can prove it read back exactly what was saved."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(state):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _rank(metrics: dict | None) -> float:
    """The value orbax ranks checkpoints by (lower is better); unknown or non-finite: last."""
    value = (metrics or {}).get(BEST_METRIC)
    return float(value) if value is not None and math.isfinite(value) else math.inf


# --- scoped quiet -------------------------------------------------------------------------------


def _from_orbax(exc: BaseException | None) -> bool:
    """Whether an exception is orbax's leftover of a failed read or write: a read coroutine
    closed at garbage collection that re-raises its error, or a tensorstore callback into the
    event loop orbax has already closed."""
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        return True
    tb = getattr(exc, "__traceback__", None)
    while tb is not None:
        if f"{os.sep}orbax{os.sep}" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _is_orbax_coroutine(obj) -> bool:
    return (isinstance(obj, types.CoroutineType) and obj.cr_frame is not None
            and f"{os.sep}orbax{os.sep}" in obj.cr_code.co_filename)


def _settle(timeout_s: float = 5.0) -> None:
    """After a failed read or write, wait (inside `_quiet`) until orbax's other coroutines of
    that operation are gone: tensorstore still holds them until its in-flight I/O completes,
    and each then reports itself (a closed event loop, an error re-raised at close)."""
    deadline = time.monotonic() + timeout_s
    while True:
        gc.collect()
        if not any(_is_orbax_coroutine(o) for o in gc.get_objects()):
            return
        if time.monotonic() > deadline:
            return
        time.sleep(0.01)


class _DropOrbaxRecords(logging.Filter):
    """Orbax logs each failure (traceback included) before it hands it to us, and asyncio logs
    the tasks a failed read left pending; we report the failure as one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if f"{os.sep}orbax{os.sep}" in record.pathname:
            return False
        return not (record.exc_info and _from_orbax(record.exc_info[1]))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Mute orbax's noise about a failure while one of our calls runs, and only then.

    A failed read leaves orbax coroutines that raise again when they are collected
    (`sys.unraisablehook`); a failed write leaves tensorstore callbacks into a closed event loop
    (`sys.excepthook`); orbax logs both failures from its threads. Within the block those
    reports are dropped (anything else still reaches the original hook or handler); on exit
    every hook and logger is as it was.
    """
    drop = _DropOrbaxRecords()
    loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
    unraisable, excepthook = sys.unraisablehook, sys.excepthook

    def quiet_unraisable(u):
        if not _from_orbax(u.exc_value):
            unraisable(u)

    def quiet_excepthook(t, v, tb):
        if not _from_orbax(v):
            excepthook(t, v, tb)

    for logger in loggers:
        logger.addFilter(drop)
    sys.unraisablehook, sys.excepthook = quiet_unraisable, quiet_excepthook
    try:
        yield
    finally:
        if sys.unraisablehook is quiet_unraisable:  # someone else's later change stays
            sys.unraisablehook = unraisable
        if sys.excepthook is quiet_excepthook:
            sys.excepthook = excepthook
        for logger in loggers:
            logger.removeFilter(drop)


# --- errors -------------------------------------------------------------------------------------


def _save_error(directory: Path, e: BaseException | None, reason: str = "",
                detail: str = "") -> UserError:
    """One-line UserError for a failed save, naming the directory and the OS's reason."""
    if e is not None:
        reason = _os_reason(e)
    return UserError(f"could not save a checkpoint in {directory} ({reason}); the checkpoints "
                     f"saved before it are intact. {detail}Free space or fix the directory, "
                     "then run the same command to resume")


def _os_reason(e: BaseException) -> str:
    """'No space left on device' from an OSError or from the error code in tensorstore's
    message (often in a chained exception); else the error's type and first words."""
    text, cause, seen = "", e, set()
    while cause is not None and id(cause) not in seen:  # the reason is often in a chained error
        seen.add(id(cause))
        text += f" {cause}"
        cause = cause.__cause__ or cause.__context__
    code = re.search(r"os_error_code=\\?'?(\d+)", text)
    if isinstance(e, OSError) and e.strerror:
        reason = e.strerror
    elif code:
        reason = os.strerror(int(code.group(1)))
    else:
        reason = f"{type(e).__name__}: {_first_words(e)}"
    return reason


def _state_bytes(state) -> int:
    """Bytes of every leaf of `state` (global arrays: their whole size)."""
    return sum(int(getattr(leaf, "nbytes", None) or np.asarray(leaf).nbytes)
               for leaf in jax.tree.leaves(state))


def _check_space(directory: Path, where: Path, need: int) -> None:
    """Refuse a save the disk cannot hold before orbax starts it.

    Orbax cannot stop a write that fails midway cleanly: its other in-flight writes print
    tracebacks from tensorstore's threads while training goes on. The uncompressed size plus
    the metadata is an upper bound of what a checkpoint takes (float weights barely compress).
    Every process of a multi-process run sees the same shared filesystem after the previous
    save's barrier, so they agree.
    """
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    if free < need:
        mb = 2**20
        raise _save_error(where, None, reason=os.strerror(errno.ENOSPC),
                          detail=f"It needs about {need / mb:.1f} MB, {free / mb:.1f} MB are "
                                 "free. ")


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


# --- orbax --------------------------------------------------------------------------------------


def _manager(directory: Path, read_only: bool) -> ocp.CheckpointManager:
    """One CheckpointManager of (state, meta) per epoch, keeping the latest KEEP_LATEST and the
    epoch with the lowest BEST_METRIC."""
    policy = None
    if not read_only:
        policy = ocm.AnyPreservationPolicy([
            ocm.LatestN(n=KEEP_LATEST),
            # reverse=True sorts descending and keeps the last n: the lowest value.
            ocm.BestN(get_metric_fn=_rank, reverse=True, n=1,
                      keep_checkpoints_without_metrics=False)])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        best_fn=_rank, best_mode="min",  # makes orbax write the `metrics` item with each save
        create=not read_only, read_only=read_only,
        # A kill mid-save leaves a "<epoch>.orbax-checkpoint-tmp-*" directory: dropped at start.
        cleanup_tmp_directories=not read_only)
    # Handlers up front, so a fresh (e.g. read-only) manager can read item metadata.
    return ocp.CheckpointManager(directory, options=options, item_handlers={
        "state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})


def _placed(abstract) -> Any:
    """`abstract` with every leaf that names no sharding put on this process's first device:
    without one orbax would restore the saving run's layout, and refuses a checkpoint written
    by another number of devices (a 4-device run read by a 1-device eval.py)."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda x: x if getattr(x, "sharding", None) is not None else
                        jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract)


def _restore(manager: ocp.CheckpointManager, epoch: int, abstract) -> tuple[Any, dict]:
    where = Path(manager.directory) / str(epoch)
    abstract = _placed(abstract)
    saved = manager.item_metadata(epoch)["state"]
    if saved is None:
        raise ValueError(f"no readable metadata in {where}")
    _check_compatible(getattr(saved, "tree", saved), abstract, where)
    out = manager.restore(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    meta = dict(out["meta"])
    digest = meta.pop(_DIGEST_KEY, None)
    if digest is None:
        raise ValueError("no digest of the state's bytes was saved with it")
    if digest != state_digest(out["state"]):
        raise ValueError("the state's bytes do not match the digest saved with them")
    return out["state"], meta


def _restore_first_readable(manager: ocp.CheckpointManager, epochs: list[int], abstract,
                            instead: str) -> tuple[Any, dict] | None:
    """Restore the first readable of `epochs`, warning (one line) about each unreadable one;
    a model mismatch is an error, never a silent fallback."""
    with _quiet():
        for i, epoch in enumerate(epochs):
            where = Path(manager.directory) / str(epoch)
            try:
                return _restore(manager, epoch, abstract)
            except UserError:
                raise
            except Exception as e:  # noqa: BLE001 - any read failure means "unreadable"
                reason = f"{type(e).__name__}: {_first_words(e)}"
            _settle()
            if i + 1 == len(epochs):
                raise UserError(f"checkpoint {where} is unreadable ({reason}) and no earlier one "
                                "exists; delete it to start over")
            print(f"warning: checkpoint {where} is unreadable ({reason}); using {instead}",
                  file=sys.stderr)
    return None


def _first_words(e: BaseException) -> str:
    """The start of an error's message on one line (tensorstore appends a whole spec)."""
    text = " ".join(str(e).split()).split(" See full TensorStore details")[0]
    return text[:200]


class Checkpoints:
    """The run's checkpoints (latest two + best). Use `with` or call `close()` before exit.

    Multi-process runs: every process opens the same directory and calls `save` with its part
    of the state (orbax syncs them); `read_only=True` (eval) creates and deletes nothing.
    """

    def __init__(self, workdir: str | Path, read_only: bool = False):
        self.directory = Path(workdir).absolute() / "checkpoints"  # orbax needs absolute paths
        self.read_only = read_only
        self._closed = self._failed = False
        self._pending: int | None = None  # the epoch whose write may still be running
        with _quiet():
            self._mgr = _manager(self.directory, read_only)

    def __enter__(self) -> "Checkpoints":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def epochs(self) -> list[int]:
        """The kept epochs, oldest first."""
        return sorted(self._mgr.all_steps())

    def save(self, epoch: int, state, meta: dict, val_rmse_px: float) -> None:
        """Start writing `state` and `meta` (JSON) as `epoch`; returns once the state is on the
        host (see the module doc: the caller may then donate its buffers). Waits first for the
        previous save's write, raising its failure.

        `val_rmse_px` (the epoch's validation RMSE in pixels, lower is better; NaN: unknown,
        never best) ranks the epoch for the best slot. An epoch that already exists (redone
        after a fallback from it) is replaced.
        """
        value = float(val_rmse_px)
        metrics = {BEST_METRIC: value if math.isfinite(value) else None}
        meta = {**meta, _DIGEST_KEY: state_digest(state)}
        self._wait()  # the previous write's failure is reported as that epoch's
        with self._failing_as_user_error(epoch):
            if epoch in self._mgr.all_steps():  # redone after falling back from it
                self._mgr.delete(epoch)
            _check_space(self.directory, self.directory / str(epoch),
                         _state_bytes(state) + _METADATA_BYTES)
            self._pending = epoch
            self._mgr.save(epoch, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                metrics=metrics, force=True)

    def restore_latest(self, abstract) -> tuple[Any, dict] | None:
        """(state, meta) of the newest readable epoch, or None if there is none.

        An unreadable newest checkpoint (corrupted or cut short) falls back to the previous one
        with a one-line warning on stderr.
        """
        epochs = sorted(self._mgr.all_steps(), reverse=True)
        return _restore_first_readable(self._mgr, epochs, abstract, "the previous one")

    def restore_best(self, abstract) -> tuple[Any, dict] | None:
        """(state, meta) of the kept epoch with the lowest validation RMSE (ties: the earliest
        reached it; none known: the newest), or None; an unreadable one falls back to the next
        best with a warning."""
        def order(epoch: int) -> tuple[float, int]:
            rank = _rank(self._mgr.metrics(epoch))
            return rank, epoch if math.isfinite(rank) else -epoch

        epochs = sorted(self._mgr.all_steps(), key=order)
        return _restore_first_readable(self._mgr, epochs, abstract, "the next best one")

    def wait(self) -> None:
        """Block until the pending write is on disk (raises its failure as a UserError)."""
        self._wait()

    def close(self) -> None:
        """Wait for the pending write and release orbax's threads (safe to call twice).

        After a failed save (its UserError already raised) this only releases the manager, so
        a `finally: close()` does not replace that error with a second one.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if not self._failed:
                self._wait()
        finally:
            self._release()

    # -- internals --

    def _wait(self) -> None:
        if self._pending is None:
            return
        with self._failing_as_user_error(self._pending):
            self._mgr.wait_until_finished()
        self._pending = None

    @contextlib.contextmanager
    def _failing_as_user_error(self, epoch: int) -> Iterator[None]:
        try:
            with _quiet():
                yield
        except UserError:
            self._failed = True
            raise
        except Exception as e:  # noqa: BLE001 - any write failure: say where and why
            self._failed = True
            error = _save_error(self.directory / str(epoch), e)
        else:
            return
        with _quiet():
            _settle()
        raise error

    def _release(self) -> None:
        try:
            with _quiet():
                self._mgr.close()
        except Exception:  # noqa: BLE001 - a failed save was already reported
            if not self._failed:
                raise
