"""One train.py per work directory: an exclusive `flock` on `WORKDIR/.lock`.

Two runs writing the same checkpoints and metrics would corrupt each other's resume, so a
second train.py on a directory in use stops at once with a one-line `UserError` naming the
holder, and changes nothing in the directory.

The lock is the kernel's, not the file's existence: it belongs to the open file and the kernel
drops it when the holder exits for any reason, `kill -9` included, so a crashed run never
blocks the next one. The file holds the holder's "pid host" only for the message. A normal
release deletes the file; a killed holder leaves it behind, unlocked, and the next run takes
it. On NFS, Linux implements `flock` with POSIX byte-range locks, which NFS shares between
hosts.

Multi-process runs (several JAX processes sharing one work directory through --process_id):
only process 0 takes the lock; the others would see it held by process 0 and stop.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from pathlib import Path
from typing import Iterator

from fkd_jax.errors import UserError

LOCK_NAME = ".lock"


def _holder(fd: int) -> str:
    """'pid N on HOST' from the lock file (written by the holder right after it locked)."""
    try:
        pid, host = os.pread(fd, 4096, 0).decode(errors="replace").split()[:2]
    except ValueError:  # empty or cut short: the holder is between locking and writing
        return "pid unknown"
    return f"pid {pid} on {host}"


def _lock(path: Path, workdir: Path) -> int:
    """Open `path` and lock it exclusively without waiting; returns the descriptor."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise UserError(f"--workdir {workdir} is not writable ({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _holder(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise UserError(f"--workdir {workdir} is in use by another train.py ({holder}); "
                                "wait for it or use another --workdir") from None
            raise UserError(f"--workdir {workdir}: cannot lock {path} ({e.strerror or e})"
                            ) from None
        # A holder that released between our open and our lock deleted the file: our lock is
        # on a name nobody else will open. Retry on the current file.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def hold(workdir: str | Path) -> Iterator[None]:
    """Hold `workdir`'s lock for the block; a UserError at once if another process holds it.

    The directory must exist (train.py creates it first). Take it on process 0 only.
    """
    workdir = Path(workdir)
    path = workdir / LOCK_NAME
    fd = _lock(path, workdir)
    try:
        # In place (not an atomic rename): the lock belongs to this file, this inode.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while still locked: a waiting opener then retries (see _lock)
        os.close(fd)
