"""Command-line plumbing shared by train.py and eval.py: flags, config checks, run directory.

Config files are python files with `get_config()` (ml_collections); any key can be overridden
as `--config.train.epochs=5`. Mistakes (unknown key, wrong type, impossible value) become a
`UserError`: one line, exit status 2.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from fkd_jax import models
from fkd_jax.errors import UserError

LABEL_POLICIES = ("mask", "drop")


def parse_flags(argv: list[str], flag_values: flags.FlagValues) -> None:
    """Parse `argv` into `flag_values`, turning every flag/config mistake into a UserError.

    Also quiets absl's library warnings (orbax's read-only notices) so the scripts' own lines
    are what a user sees.
    """
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        flag_values(argv)
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


def _one_line(text: str) -> str:
    return " ".join(text.split())


def check_config(config) -> None:
    """Reject impossible values early, naming the option."""
    t, d = config.train, config.data
    checks = [
        (t.epochs >= 1, "--config.train.epochs", t.epochs, "must be >= 1"),
        (t.batch_size >= 1, "--config.train.batch_size", t.batch_size, "must be >= 1"),
        (t.learning_rate > 0, "--config.train.learning_rate", t.learning_rate, "must be > 0"),
        (0.0 < d.val_fraction < 1.0, "--config.data.val_fraction", d.val_fraction,
         "must be between 0 and 1 (exclusive)"),
        (d.label_policy in LABEL_POLICIES, "--config.data.label_policy", d.label_policy,
         f"must be one of {', '.join(LABEL_POLICIES)}"),
        (t.weight_decay >= 0, "--config.train.weight_decay", t.weight_decay, "must be >= 0"),
        (t.grad_clip >= 0, "--config.train.grad_clip", t.grad_clip, "must be >= 0"),
        (t.warmup_epochs >= 0, "--config.train.warmup_epochs", t.warmup_epochs, "must be >= 0"),
        (0.0 <= config.model.dropout < 1.0, "--config.model.dropout", config.model.dropout,
         "must be in [0, 1)"),
        (d.synthetic_n >= 2, "--config.data.synthetic_n", d.synthetic_n, "must be >= 2"),
        (config.model.compute_dtype in models.COMPUTE_DTYPES, "--config.model.compute_dtype",
         config.model.compute_dtype, f"must be one of {', '.join(models.COMPUTE_DTYPES)}"),
        (config.model.conv_impl in models.CONV_IMPLS, "--config.model.conv_impl",
         config.model.conv_impl, f"must be one of {', '.join(models.CONV_IMPLS)}"),
        (config.model.name in models.MODELS, "--config.model.name", config.model.name,
         f"must be one of {', '.join(sorted(models.MODELS))}"),
    ]
    for ok, option, value, why in checks:
        if not ok:
            raise UserError(f"{option}={value!r} {why}")


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
