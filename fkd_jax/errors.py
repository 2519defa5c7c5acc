"""User-facing errors: one line, exit status 2, no traceback.

Library code raises `UserError` (or `DataError`) for anything the user can fix: a bad file,
a bad option. The command-line entry points wrap their `main` in `exit_on_user_error`, which
prints the message as a single line on stderr and exits with status 2. So does an `OSError` of
the environment a user can fix (disk full, quota, read-only file system, permission denied),
named by its file. Programming errors are not caught and keep their traceback.
"""

from __future__ import annotations

import errno
import functools
import sys
from typing import Callable, TypeVar

EXIT_USER_ERROR = 2
# OSErrors that say "the machine refused the write", not "the program is wrong".
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                                errno.EPERM})

F = TypeVar("F", bound=Callable)


class UserError(Exception):
    """Something the user can fix (bad input file, bad option)."""


class RunStopped(UserError):
    """A run that stops on purpose: the message says why and what was kept; own exit status
    (3 for a non-finite loss, 130 for Ctrl-C) and prefix ("error", "interrupted")."""

    def __init__(self, message: str, exit_code: int, prefix: str = "error"):
        super().__init__(message)
        self.exit_code, self.prefix = exit_code, prefix


class DataError(UserError):
    """A problem in a data file, located by path and (1-based, spreadsheet-style) row."""

    def __init__(self, path, message: str, row: int | None = None, column: str | None = None):
        where = str(path)
        if row is not None:
            where += f", row {row}"
        if column is not None:
            where += f", column {column}"
        super().__init__(f"{where}: {message}")
        self.path, self.row, self.column = str(path), row, column


def _print_error(message: str, prefix: str = "error") -> None:
    one_line = " ".join(str(message).split())
    print(f"{prefix}: {one_line}", file=sys.stderr, flush=True)


def fail(message: str, exit_code: int = EXIT_USER_ERROR, prefix: str = "error") -> None:
    """Print `prefix: message` as one line on stderr and exit with `exit_code` (2)."""
    _print_error(message, prefix)
    raise SystemExit(exit_code)


def exit_on_user_error(main: F) -> F:
    """Decorator for CLI entry points: UserError (or a disk-full/read-only/permission
    OSError) -> one line on stderr, exit 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            fail(str(e), getattr(e, "exit_code", EXIT_USER_ERROR), getattr(e, "prefix", "error"))
        except OSError as e:
            if e.errno not in ENVIRONMENT_ERRNOS:
                raise
            fail(f"{e.filename}: {e.strerror}" if e.filename is not None else str(e.strerror))

    return wrapper  # type: ignore[return-value]
