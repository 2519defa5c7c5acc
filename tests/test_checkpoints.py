"""Checkpoints (one orbax manager: the latest two + the best epoch) and the work-directory lock.

Tiny states, written into tmp_path; two subprocesses (the lock holder, a write that fails for
lack of room), each a few seconds.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from fkd_jax.training import checkpoints
from fkd_jax.training import lock
from fkd_jax.training.checkpoints import Checkpoints, abstract_like
from fkd_jax.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def state(value: float, n: int = 3, leaves: int = 1) -> dict:
    """A training state in miniature: params, an optimiser state and a step."""
    params = {f"w{i}" if leaves > 1 else "w": jnp.full((n,), float(value)) + jnp.arange(n)
              for i in range(leaves)}
    return {"params": params, "opt_state": {"mu": jax.tree.map(jnp.zeros_like, params)},
            "step": jnp.asarray(int(value), jnp.int32)}


def save_epochs(workdir: Path, rmses: list[float], **kw) -> None:
    with Checkpoints(workdir) as ckpt:
        for epoch, rmse in enumerate(rmses, start=1):
            ckpt.save(epoch, state(epoch, **kw), {"epoch": epoch, "step": epoch}, rmse)


def on_disk(workdir: Path) -> set[int]:
    return {int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()}


def tree(path: Path) -> dict[str, tuple[bytes, int]]:
    """{relative path: (bytes, mtime_ns)} of every file and directory under `path`."""
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else b"", p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*"))}


def garble(checkpoint: Path, how: str) -> None:
    """Damage the data files (every file at least half the largest's size: the store may
    keep more than one, in no fixed order): flip bytes (same length: only a digest can tell)
    or cut them in half."""
    files = [p for p in checkpoint.rglob("*") if p.is_file()]
    largest = max(p.stat().st_size for p in files)
    for data in [p for p in files if p.stat().st_size >= largest / 2]:
        raw = bytearray(data.read_bytes())
        if how == "flip":
            mid = len(raw) // 2
            raw[mid:mid + 64] = bytes(b ^ 0x5A for b in raw[mid:mid + 64])
        else:
            raw = raw[: len(raw) // 2]
        data.write_bytes(bytes(raw))


def process_wide_state() -> tuple:
    """Everything the checkpoint module must leave as it found it."""
    loggers = {name: (tuple(lg.filters), tuple(lg.handlers), lg.level, lg.disabled)
               for name, lg in [("", logging.root), *logging.root.manager.loggerDict.items()]
               if isinstance(lg, logging.Logger)}
    return (sys.excepthook, sys.unraisablehook, threading.excepthook,
            logging.root.manager.disable, loggers)


def unchanged_since(before: tuple) -> bool:
    """The hooks and logging are as in `before` (loggers created since: without filters)."""
    now = process_wide_state()
    old_loggers, new_loggers = before[-1], now[-1]
    return (now[:-1] == before[:-1]
            and all(new_loggers[name] == config for name, config in old_loggers.items())
            and not any(new_loggers[name][0] for name in set(new_loggers) - set(old_loggers)))


# --- what is kept -------------------------------------------------------------------------------


def test_keeps_the_latest_two_and_the_best_each_written_once(tmp_path):
    save_epochs(tmp_path, [3.0, 1.0, 2.0, 4.0, 5.0])
    assert on_disk(tmp_path) == {2, 4, 5}
    # One directory per kept epoch and nothing else: no copy of the best under another name.
    written = sorted(p.parent.name for p in tmp_path.rglob("_CHECKPOINT_METADATA"))
    assert written == ["2", "4", "5"]
    abstract = abstract_like(state(0))
    with Checkpoints(tmp_path, read_only=True) as ckpt:
        best, best_meta = ckpt.restore_best(abstract)
        latest, latest_meta = ckpt.restore_latest(abstract)
    assert best_meta == {"epoch": 2, "step": 2}
    np.testing.assert_array_equal(best["params"]["w"], state(2)["params"]["w"])
    assert latest_meta["epoch"] == 5 and int(latest["step"]) == 5


def test_a_new_best_replaces_the_old_one_and_the_best_can_be_the_latest(tmp_path):
    save_epochs(tmp_path, [3.0, 2.0, 1.0])
    assert on_disk(tmp_path) == {2, 3}  # epoch 1 is neither recent nor best any more
    with Checkpoints(tmp_path, read_only=True) as ckpt:
        assert ckpt.restore_best(abstract_like(state(0)))[1]["epoch"] == 3


def test_an_empty_run_directory_restores_nothing_and_read_only_creates_nothing(tmp_path):
    workdir = tmp_path / "run"
    with Checkpoints(workdir, read_only=True) as ckpt:
        assert ckpt.restore_latest(abstract_like(state(0))) is None
        assert ckpt.restore_best(abstract_like(state(0))) is None
    assert not workdir.exists()


def test_read_only_restores_change_nothing_on_disk(tmp_path):
    save_epochs(tmp_path, [3.0, 1.0, 2.0])
    garble(tmp_path / "checkpoints" / "3", "flip")  # a fallback must not delete anything either
    before = tree(tmp_path)
    with Checkpoints(tmp_path, read_only=True) as ckpt:
        assert ckpt.restore_latest(abstract_like(state(0)))[1]["epoch"] == 2
        assert ckpt.restore_best(abstract_like(state(0)))[1]["epoch"] == 2
    assert tree(tmp_path) == before


# --- unreadable checkpoints -----------------------------------------------------------------


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_an_unreadable_newest_falls_back_with_one_warning_and_is_redone(tmp_path, capfd, how):
    save_epochs(tmp_path, [3.0, 2.0, 1.0], n=20_000, leaves=12)
    newest = tmp_path / "checkpoints" / "3"
    garble(newest, how)
    abstract = abstract_like(state(0, n=20_000, leaves=12))
    with Checkpoints(tmp_path) as ckpt:
        restored, meta = ckpt.restore_latest(abstract)
        assert meta["epoch"] == 2
        # the run redoes epoch 3: the unreadable one is replaced
        ckpt.save(3, state(33, n=20_000, leaves=12), {"epoch": 3, "step": 3}, 1.0)
    err = capfd.readouterr().err
    assert err.startswith(f"warning: checkpoint {newest} is unreadable (")
    assert err.rstrip().endswith("); using the previous one") and err.count("\n") == 1, err
    with Checkpoints(tmp_path, read_only=True) as ckpt:
        again, meta = ckpt.restore_latest(abstract)
    assert meta["epoch"] == 3
    np.testing.assert_array_equal(again["params"]["w0"], state(33, n=20_000)["params"]["w"])


def test_an_unreadable_best_falls_back_to_the_next_best(tmp_path, capsys):
    save_epochs(tmp_path, [2.0, 1.0, 3.0])  # kept: 2 (best), 3; epoch 1 (2.0) is gone
    garble(tmp_path / "checkpoints" / "2", "flip")
    with Checkpoints(tmp_path, read_only=True) as ckpt:
        assert ckpt.restore_best(abstract_like(state(0)))[1]["epoch"] == 3
    assert "using the next best one" in capsys.readouterr().err


def test_the_only_checkpoint_unreadable_is_a_user_error(tmp_path):
    save_epochs(tmp_path, [1.0])
    garble(tmp_path / "checkpoints" / "1", "flip")
    with Checkpoints(tmp_path, read_only=True) as ckpt, pytest.raises(UserError) as e:
        ckpt.restore_latest(abstract_like(state(0)))
    assert f"checkpoint {tmp_path / 'checkpoints' / '1'} is unreadable" in str(e.value)
    assert "no earlier one exists" in str(e.value)


def test_hooks_and_logging_are_untouched_and_later_errors_still_reported(tmp_path, monkeypatch):
    reported = []
    monkeypatch.setattr(threading, "excepthook", lambda a: reported.append(a.exc_value))
    monkeypatch.setattr(sys, "unraisablehook", lambda u: reported.append(u.exc_value))
    before = process_wide_state()
    save_epochs(tmp_path, [3.0, 2.0, 1.0], n=20_000, leaves=12)
    garble(tmp_path / "checkpoints" / "3", "truncate")
    with Checkpoints(tmp_path) as ckpt:
        assert ckpt.restore_latest(abstract_like(state(0, n=20_000, leaves=12)))[1]["epoch"] == 2
    assert unchanged_since(before)
    gc.collect()
    assert reported == []  # the failed read left nothing to report later

    class Unraisable:
        def __del__(self):
            raise ValueError("in __del__")

    thread = threading.Thread(target=lambda: 1 / 0)
    thread.start()
    thread.join()
    Unraisable()
    gc.collect()
    assert [type(e) for e in reported] == [ZeroDivisionError, ValueError]


def test_a_checkpoint_saved_without_its_digest_is_unreadable(tmp_path, capsys):
    """Every checkpoint this version writes carries the digest of its state's bytes."""
    save_epochs(tmp_path, [1.0])
    manager = checkpoints._manager(tmp_path / "checkpoints", read_only=False)
    manager.save(2, args=ocp.args.Composite(state=ocp.args.StandardSave(state(2)),
                                            meta=ocp.args.JsonSave({"epoch": 2})),
                 metrics={checkpoints.BEST_METRIC: 0.5}, force=True)
    manager.close()
    with Checkpoints(tmp_path, read_only=True) as ckpt:
        assert ckpt.restore_latest(abstract_like(state(0)))[1]["epoch"] == 1
    err = capsys.readouterr().err
    assert "checkpoints/2 is unreadable (ValueError: no digest of the state's bytes" in err


def test_a_checkpoint_of_another_model_names_the_first_differing_array(tmp_path):
    save_epochs(tmp_path, [1.0])
    wider = state(0, n=4)
    with Checkpoints(tmp_path, read_only=True) as ckpt, pytest.raises(UserError) as e:
        ckpt.restore_latest(abstract_like(wider))
    assert str(e.value).startswith(
        f"checkpoint {tmp_path / 'checkpoints' / '1'} does not match the configured model "
        "(opt_state/mu/w: saved (3,), this model needs (4,))")


# --- saving -------------------------------------------------------------------------------------


def test_the_state_can_be_donated_as_soon_as_save_returns(tmp_path):
    """The training loop donates the state to the next epoch without waiting for the write."""
    step = jax.jit(lambda s: jax.tree.map(lambda x: x * 2 + 1, s), donate_argnums=0)
    current, saved = state(1, n=100_000, leaves=4), {}
    with Checkpoints(tmp_path) as ckpt:
        for epoch in range(1, 5):
            current = step(current)
            saved[epoch] = np.array(current["params"]["w0"])
            ckpt.save(epoch, current, {"epoch": epoch}, float(epoch))
    abstract = abstract_like(current)
    with Checkpoints(tmp_path, read_only=True) as ckpt:  # restore checks each digest too
        for epoch in (3, 4):
            restored, _ = checkpoints._restore(ckpt._mgr, epoch, abstract)
            np.testing.assert_array_equal(restored["params"]["w0"], saved[epoch])


def test_a_save_the_disk_cannot_hold_is_refused_before_it_starts(tmp_path, monkeypatch):
    save_epochs(tmp_path, [1.0])
    before = tree(tmp_path)
    real = os.statvfs

    def nearly_full(path):
        s = real(path)
        return os.statvfs_result((s.f_bsize, 4096, s.f_blocks, 10, 10, *s[5:]))

    with Checkpoints(tmp_path) as ckpt:
        monkeypatch.setattr(os, "statvfs", nearly_full)
        with pytest.raises(UserError) as e:
            ckpt.save(2, state(2, n=100_000), {"epoch": 2}, 0.5)
        monkeypatch.undo()
    assert str(e.value).startswith(
        f"could not save a checkpoint in {tmp_path / 'checkpoints' / '2'} (No space left on "
        "device); the checkpoints saved before it are intact. It needs about 1.8 MB, 0.0 MB "
        "are free.")
    assert tree(tmp_path) == before


_FAILING_WRITE = """
import logging, resource, signal, sys, threading
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write over the limit fails with EFBIG instead
sys.path.insert(0, {tests!r})
from test_checkpoints import process_wide_state, state, unchanged_since
from fkd_jax.training.checkpoints import Checkpoints
from fkd_jax.errors import UserError

ckpt = Checkpoints(sys.argv[1])
ckpt.save(1, state(1), {{"epoch": 1}}, 1.0)
ckpt.wait()
before = process_wide_state()
resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))  # no file over 1 MiB from now on
ckpt.save(2, state(2, n=100_000, leaves=20), {{"epoch": 2}}, 0.5)
try:
    ckpt.wait()
except UserError as e:
    print(f"error: {{e}}", file=sys.stderr, flush=True)
ckpt.close()
print("unchanged" if unchanged_since(before) else "changed", file=sys.stderr)
"""


def test_a_write_that_fails_midway_is_one_line_and_leaves_no_noise_behind(tmp_path):
    """A real I/O error inside orbax's background write (a file-size limit: EFBIG)."""
    script = _FAILING_WRITE.format(tests=str(Path(__file__).parent))
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    error = next(i for i, line in enumerate(lines) if line.startswith("error: "))
    assert lines[error].startswith(f"error: could not save a checkpoint in "
                                   f"{tmp_path / 'checkpoints' / '2'} (File too large); the "
                                   "checkpoints saved before it are intact.")
    # Orbax's own reports of the failure would come after the error if it did not settle it
    # (before it, they may print from orbax's thread if the write fails before wait() runs).
    assert lines[error + 1:] == ["unchanged"], proc.stderr
    assert on_disk(tmp_path) == {1}
    with Checkpoints(tmp_path, read_only=True) as ckpt:
        assert ckpt.restore_latest(abstract_like(state(0)))[1]["epoch"] == 1


def test_leftovers_of_a_killed_save_are_removed_on_the_next_start(tmp_path):
    save_epochs(tmp_path, [1.0])
    leftover = tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp-1234"
    (leftover / "state").mkdir(parents=True)
    with Checkpoints(tmp_path) as ckpt:
        assert ckpt.restore_latest(abstract_like(state(0)))[1]["epoch"] == 1
        ckpt.save(2, state(2), {"epoch": 2}, 0.5)
    assert not leftover.exists() and on_disk(tmp_path) == {1, 2}


def test_relative_work_directories_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_epochs(Path("rel/run"), [1.0])
    assert on_disk(tmp_path / "rel/run") == {1}


# --- one run per work directory -----------------------------------------------------------------


_HOLDER = ("import sys, time\nfrom fkd_jax.training import lock\n"
           "with lock.hold(sys.argv[1]):\n"
           "    print('held', flush=True)\n    time.sleep(300)\n")


def test_a_second_run_on_a_held_work_directory_stops_at_once_and_a_killed_holder_frees_it(
        tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        before = tree(tmp_path)
        with pytest.raises(UserError) as e:
            with lock.hold(tmp_path):
                pytest.fail("the lock was taken twice")
        assert str(e.value) == (f"--workdir {tmp_path} is in use by another train.py (pid "
                                f"{holder.pid} on {socket.gethostname()}); wait for it or use "
                                "another --workdir")
        assert tree(tmp_path) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    assert (tmp_path / ".lock").exists()  # left by the killed holder, but no longer locked
    with lock.hold(tmp_path):
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()} {socket.gethostname()}\n"
    assert not (tmp_path / ".lock").exists()


def test_the_lock_is_released_on_an_exception_and_is_exclusive_within_a_process(tmp_path):
    with pytest.raises(RuntimeError), lock.hold(tmp_path):
        with pytest.raises(UserError, match="is in use by another train.py"):
            with lock.hold(tmp_path):
                pass
        raise RuntimeError("the run failed")
    with lock.hold(tmp_path):
        pass


def test_a_lock_in_a_missing_directory_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="is not writable"):
        with lock.hold(tmp_path / "missing"):
            pass
    assert not (tmp_path / "missing").exists()
