"""Writing files, atomically: the one place every module and script writes through.

A write goes to a temporary file beside the target and is renamed over it once complete, so
a reader (or a run killed mid-write) never sees half a file, and a failed write leaves the
previous version in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`.

    For writers that want a file name (matplotlib, video encoders). The temporary name keeps
    the target's suffix, so writers that pick a format from it still do.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual mode
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import, before any thread
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically, flushed to disk before the rename."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """Write `obj` as JSON (with a trailing newline) to `path` atomically."""
    return write_text(path, json.dumps(obj, indent=indent) + "\n")


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Render a matplotlib figure to `path` atomically (format from the suffix, PNG default)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower() or "png", dpi=dpi)
    return path


def append_line(path: str | Path, line: str) -> None:
    """Append one line to a log-like file (metrics.jsonl) and flush it to disk.

    Appends are not atomic renames: a reader must tolerate a last line cut short by a kill.
    """
    with open(path, "a", encoding="utf-8") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())


def mirrored_names(inputs: list[str | Path]) -> list[Path]:
    """One relative output name per input: its path below the inputs' common folder, full
    file name kept, so `a/x.jpg`, `b/x.jpg` and `b/x.png` never share an output."""
    resolved = [Path(p).resolve() for p in inputs]
    if not resolved:
        return []
    common = Path(os.path.commonpath([p.parent for p in resolved]))
    return [p.relative_to(common) for p in resolved]
