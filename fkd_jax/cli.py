"""Command-line plumbing shared by the scripts: flags and the output directory.

Config files are python files with `get_config()` (ml_collections); any key can be overridden
as `--config.train.epochs=5`. Mistakes in flags become a `UserError` (one line, exit status 2);
config values are checked by fkd_jax/training/config_check.py.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from absl import flags
from absl import logging as absl_logging

from fkd_jax.errors import UserError


def parse_flags(argv: list[str], flag_values: flags.FlagValues) -> None:
    """Parse `argv` into `flag_values`, turning every flag/config mistake into a UserError.

    Also quiets absl's library warnings (orbax's read-only notices) so the scripts' own lines
    are what a user sees.
    """
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        flag_values(_last_of_each_config_key(argv))
    except flags.UnrecognizedFlagError as e:
        raise UserError(f"unknown option --{e.flagname}; see --help") from None
    except flags.Error as e:
        raise UserError(_one_line(str(e))) from None
    except AttributeError as e:  # ml_collections: override of a key the config lacks
        # str(e) is repr-like, quotes and escaped newline included: take the leading name.
        found = re.match(r"""[\s'"\\]*([A-Za-z_]\w*)""", str(e))
        key = found.group(1) if found else str(e)
        hint = re.search(r'Did you mean "([^"]+)"', str(e))
        bad = next((a.split("=")[0] for a in argv if re.search(rf"\.{re.escape(key)}(=|$)", a)),
                   key)
        raise UserError(f"unknown config key {bad}"
                        + (f' (did you mean "{hint.group(1)}"?)' if hint else "")) from None
    except (OSError, SyntaxError, ImportError) as e:
        raise UserError(f"cannot load config: {_one_line(str(e))}") from None


def _last_of_each_config_key(argv: list[str]) -> list[str]:
    """`argv` with each `--config.key value` pair joined into `--config.key=value` and the
    earlier of repeated overrides dropped. ml_collections keeps the last value of a repeated
    scalar key but appends a repeated tuple to the first ("--config.model.widths=(8,16)" then
    "=(4,4)" built (8, 16, 4, 4)); this makes the last one win for every key."""
    joined: list[str] = []
    for arg in argv:
        if joined and re.fullmatch(r"--config\.[\w.]+", joined[-1]) and not arg.startswith("-"):
            joined[-1] += f"={arg}"
        else:
            joined.append(arg)
    keys = [m.group(1) if (m := re.match(r"--(config\.[\w.]+)=", a)) else None for a in joined]
    return [a for i, (a, k) in enumerate(zip(joined, keys)) if k is None or k not in keys[i + 1:]]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def default_workdir(config_path: str) -> Path:
    """runs/<config file stem>, e.g. runs/base for configs/base.py."""
    return Path("runs") / Path(config_path.split(":")[0]).stem


def check_workdir(workdir: Path, option: str = "--workdir") -> Path:
    """Create the output directory given by `option`, or say clearly why it cannot be used."""
    if workdir.exists() and not workdir.is_dir():
        raise UserError(f"{option} {workdir} exists and is not a directory")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write_test.{os.getpid()}"  # per process: several may share it
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"{option} {workdir} is not writable ({e.strerror or e})") from None
    return workdir
