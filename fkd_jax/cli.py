"""Command-line plumbing shared by every entry point and script: flags and the output directory.

One convention everywhere: absl flags (`--name=value` or `--name value`, booleans as `--name` /
`--noname`), parsed by `parse_flags`. `--help` prints the entry point's summary (the first
paragraph of its module docstring) and its flags. Config files are python files with
`get_config()` (ml_collections); any key can be overridden as `--config.train.epochs=5`.
Mistakes in flags become a `UserError` (one line, exit status 2 through
`fkd_jax.errors.exit_on_user_error`); config values are checked by
fkd_jax/training/config_check.py.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

from absl import flags
from absl import logging as absl_logging

from fkd_jax.errors import UserError


def parse_flags(argv: list[str], flag_values: flags.FlagValues, *,
                positional: bool = False) -> list[str]:
    """Parse `argv` (program name first) into `flag_values`, turning every flag/config mistake
    into a UserError; returns the positional arguments, which are an error unless `positional`.

    Flags start from their defaults on every call (a script's `main` may run twice in one
    process). `--help` / `-h` prints `help_text` and exits 0. Also quiets absl's library
    warnings (orbax's read-only notices) so the scripts' own lines are what a user sees.
    """
    absl_logging.set_verbosity(absl_logging.ERROR)
    if any(a in ("--help", "-h", "--helpfull") for a in argv[1:argv.index("--")
                                                            if "--" in argv else None]):
        print(help_text(flag_values))
        raise SystemExit(0)
    flag_values.unparse_flags()
    try:
        rest = flag_values(_last_of_each_config_key(argv))[1:]
    except flags.UnrecognizedFlagError as e:
        raise UserError(f"unknown option --{e.flagname}; see --help") from None
    except flags.Error as e:
        raise UserError(_one_line(str(e))) from None
    except AttributeError as e:
        if e.name == "get_config":  # ml_collections calls the config module's get_config()
            where = getattr(getattr(e, "obj", None), "__file__", None) or "the config file"
            raise UserError(f"{where} has no get_config(); a config file defines "
                            "get_config() returning its ml_collections.ConfigDict") from None
        # ml_collections: override of a key the config lacks. str(e) is repr-like, quotes and
        # escaped newline included: take the leading name.
        found = re.match(r"""[\s'"\\]*([A-Za-z_]\w*)""", str(e))
        key = found.group(1) if found else str(e)
        hint = re.search(r'Did you mean "([^"]+)"', str(e))
        bad = next((a.split("=")[0] for a in argv if re.search(rf"\.{re.escape(key)}(=|$)", a)),
                   key)
        raise UserError(f"unknown config key {bad}"
                        + (f' (did you mean "{hint.group(1)}"?)' if hint else "")) from None
    except (OSError, SyntaxError, ImportError) as e:
        raise UserError(f"cannot load config: {_one_line(str(e))}") from None
    if rest and not positional:
        raise UserError(f"unexpected argument {rest[0]!r} (options are --name=value); "
                        "see --help")
    return rest


def as_namespace(flag_values: flags.FlagValues) -> SimpleNamespace:
    """The parsed flags as a plain namespace, one attribute per flag, for code that passes its
    options around as one object or derives values from them (a FlagValues would re-parse)."""
    return SimpleNamespace(**flag_values.flag_values_dict())


def help_text(flag_values: flags.FlagValues, doc: str | None = None) -> str:
    """The entry point's `--help`: the first paragraph of `doc` (default: the `__main__`
    module's docstring) and its flags: all of a script's own FlagValues, or those of absl's
    global FLAGS that the entry point itself defines (not absl's logging flags nor orbax's)."""
    if doc is None:
        doc = getattr(sys.modules.get("__main__"), "__doc__", None) or ""
    by_module = flag_values.flags_by_module_dict()
    own = (by_module.get(sys.argv[0], []) if flag_values is flags.FLAGS
           else [f for module_flags in by_module.values() for f in module_flags])
    lines = [doc.strip().split("\n\n")[0], "", "flags:"]
    for flag in sorted(own, key=lambda f: f.name):
        value = ",".join(flag.default) if isinstance(flag.default, list) else flag.default
        default = "" if value in (None, "") else f" (default: {value})"
        lines.append(f"  --{flag.name}: {_one_line(flag.help)}{default}")
    return "\n".join(lines)


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


def check_out_file(out: Path, example: str) -> None:
    """Say before seconds or minutes of work whether the file --out can be written at all
    (`example`: a file name to suggest when --out is a folder)."""
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file name, e.g. {out}/{example}")
    parent = out.parent
    while not parent.exists():  # the writer creates missing folders; check the first that exists
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"--out {out}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {parent} is not writable")


def use_compilation_cache(path: str | None, option: str = "--compilation_cache") -> bool:
    """Keep compiled programs on disk across processes (JAX's persistent compilation cache), so
    a command's later runs skip compiling: most of a short predict.py's time after start-up.
    None: JAX_COMPILATION_CACHE_DIR if set, else the user cache folder ($XDG_CACHE_HOME or
    ~/.cache, then fkd-jax/jax), skipped quietly if it cannot be made (caching only saves
    time); "": off; a folder the user named must be usable. Returns whether the cache is on."""
    import jax

    if path == "":
        jax.config.update("jax_enable_compilation_cache", False)
        return False
    default = path is None
    if default and jax.config.jax_compilation_cache_dir:  # set by JAX's own environment variable
        return True
    if default:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = os.path.join(base, "fkd-jax", "jax")
    try:
        check_workdir(Path(path), option)
    except UserError:
        if default:
            return False
        raise
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # small programs too
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return True
