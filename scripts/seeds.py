"""Train one config for several seeds and report each figure as mean ± std over the seeds.
  uv run python scripts/seeds.py --config configs/unet_pair.py --seeds 0,1,2 [--jobs 2]
      [--workdir runs/unet_pair_seeds] [--config.x=y ...]

Each seed k trains in its own run directory `WORKDIR/seed<k>` (the library's
`loop.train_and_evaluate`, exactly what train.py runs, with `--config.seed=k`), then its
best checkpoint is scored with flip TTA on the validation split. Resumable: a seed whose
`seed_result.json` exists is skipped, a seed cut short resumes from its checkpoint; a seed
directory trained with a different config is refused (use a new --workdir).

`--jobs N` trains N seeds at once, each group of seeds in its own process pinned to its own
share of the CPU cores (its output in WORKDIR/log_seeds_<k>.txt). On CPU one process training
unet_pair's batches of 8 does not keep two cores busy: on 2 cores `--jobs 2` trained two seeds
with 1.4x the images/s of one after the other (docs/experiments/2026-12-01-ema-seeds.md). Each seed's result is the same run as with --jobs 1 up to
float rounding (one thread per process changes the order of some sums).

The seed varies initialisation, shuffling, dropout and augmentation; the data's draws (the
validation split, and imposed missing labels) stay fixed at `config.data.split_seed`, or 0
when the config leaves it None, so the spread is that of training alone on one split.
`--vary_split` lets each seed draw its own split instead (`data.split_seed` = None).

A config with `train.members` = N > 1 (an ensemble, fkd_jax/training/ensemble.py) trains each seed k
as train.py would with `--config.seed=k`: members of seeds N*k ... N*k+N-1 side by side on all
cores (so --jobs must be 1), and reports the mean prediction (`ensemble_rmse_px`), the members
alone (`members_rmse_px_mean`) and the mean with flip TTA, all at the members' best checkpoints.

Writes WORKDIR/summary.json and WORKDIR/summary.md (and prints the table). Per seed, from its
metrics.jsonl and best checkpoint:
  best_epoch            the epoch of the best checkpoint (ranked by the averaged parameters'
                        RMSE when train.ema_decay / swa_start_epoch is on)
  val_rmse_px_best      lowest validation RMSE of the raw parameters over the epochs (px)
  val_rmse_px_last      the raw parameters' validation RMSE at the last epoch
  val_rmse_px_ema_best, val_rmse_px_ema_last   the same for the averaged parameters, when on
                        (_swa_ for SWA)
  tta_rmse_px           the best checkpoint with flip TTA (the averaged parameters when on)
  wall_s                wall time of this command's training call for the seed (data, compile,
                        training, validation every epoch); `resumed` says it finished an
                        earlier call's run, whose time is not included
  images_per_s          training images per second over all its epochs (epoch time only)
Then mean and sample standard deviation (ddof=1; null for one seed) of every number.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from absl import flags
from ml_collections import config_flags

from fkd_jax.errors import UserError, exit_on_user_error

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (python, get_config()).",
                                          lock_config=True)
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds to train, e.g. 0,1,2.")
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Directory of the seeds' runs (default: runs/<config name>_seeds).")
_VARY_SPLIT = flags.DEFINE_bool("vary_split", False,
                                "Let each seed draw its own validation split.")
_JOBS = flags.DEFINE_integer("jobs", 1, "Seeds trained at once, each process pinned to its own "
                             "share of the CPU cores (at most one job per core).")
_SUMMARY = flags.DEFINE_bool("summary", True, "Write summary.json/.md (the worker processes of "
                             "--jobs leave that to the command that started them).")

RESULT = "seed_result.json"
DEFAULT_SPLIT_SEED = 0
_RMSE_KEYS = ("val_rmse_px", "val_rmse_px_ema", "val_rmse_px_swa")


# --- pure: one seed's figures, the aggregate, the table -----------------------------------------


def seed_figures(records: list[dict]) -> dict:
    """Best (lowest over epochs) and last-epoch value of each validation RMSE in a run's
    metrics records, and its training images/s over all epochs."""
    if not records:
        raise ValueError("no metrics records")
    out = {"epochs": int(records[-1]["epoch"])}
    for key in _RMSE_KEYS:
        if key in records[-1]:
            values = [float(r[key]) for r in records]
            out[f"{key}_best"], out[f"{key}_last"] = min(values), values[-1]
    seconds = sum(float(r["epoch_time_s"]) for r in records)
    images = sum(float(r["images_per_s"]) * float(r["epoch_time_s"]) for r in records)
    out["images_per_s"] = images / seconds if seconds > 0 else math.nan
    return out


def aggregate(rows: list[dict]) -> tuple[dict, dict]:
    """(mean, std) of every number the rows share (seed and flags excluded); std is the sample
    standard deviation (ddof=1), None for a single row."""
    keys = [k for k, v in rows[0].items()
            if k != "seed" and isinstance(v, (int, float)) and not isinstance(v, bool)
            and all(isinstance(r.get(k), (int, float)) for r in rows)]
    mean, std = {}, {}
    for k in keys:
        values = np.array([float(r[k]) for r in rows])
        mean[k] = float(values.mean())
        std[k] = float(values.std(ddof=1)) if len(values) > 1 else None
    return mean, std


def _columns(rows: list[dict]) -> list[tuple[str, str, str]]:
    """(key, header, format) of the table's columns, those the rows have."""
    if "ensemble_rmse_px" in rows[0]:  # seeds of an ensemble config
        return [("ensemble_rmse_px", "val ensemble (px)", "{:.3f}"),
                ("members_rmse_px_mean", "val members alone, mean (px)", "{:.3f}"),
                ("tta_rmse_px", "ensemble + TTA (px)", "{:.3f}"),
                ("wall_s", "wall (min)", "{:.1f}")]
    cols = [("best_epoch", "best epoch", "{:.0f}")]
    for key in _RMSE_KEYS:
        if f"{key}_best" in rows[0]:
            what = "raw" if key == "val_rmse_px" else key.rsplit("_", 1)[1]
            cols += [(f"{key}_best", f"val {what} best (px)", "{:.3f}"),
                     (f"{key}_last", f"val {what} last (px)", "{:.3f}")]
    cols += [("tta_rmse_px", "TTA, best ckpt (px)", "{:.3f}"),
             ("wall_s", "wall (min)", "{:.1f}"), ("images_per_s", "images/s", "{:.0f}")]
    return cols


def markdown_table(rows: list[dict], mean: dict, std: dict) -> str:
    """One line per seed, then mean ± std (sample std)."""
    cols = _columns(rows)
    scale = {"wall_s": 1 / 60}

    def cell(key, fmt, value, spread=None):
        if value is None:
            return "-"
        text = fmt.format(value * scale.get(key, 1))
        if spread is not None:
            text += " ± " + fmt.format(spread * scale.get(key, 1))
        return text

    lines = ["| seed | " + " | ".join(h for _, h, _ in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    for r in rows:
        lines.append(f"| {r['seed']} | " + " | ".join(cell(k, f, r.get(k)) for k, _, f in cols)
                     + " |")
    lines.append(f"| mean ± std (n={len(rows)}) | "
                 + " | ".join(cell(k, f, mean.get(k), std.get(k)) for k, _, f in cols) + " |")
    return "\n".join(lines) + "\n"


def _first_difference(a, b, prefix: str = "") -> str | None:
    """The first dotted key where two JSON-like dicts differ, as 'key: a vs b'."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            d = _first_difference(a.get(k), b.get(k), f"{prefix}{k}.")
            if d is not None:
                return d
        return None
    return None if a == b else f"{prefix[:-1]}: {a!r} there, {b!r} now"


# --- the command --------------------------------------------------------------------------------


def _seed_config(config, seed: int, vary_split: bool):
    import copy

    c = copy.deepcopy(config)
    c.seed = seed
    if vary_split:
        c.data.split_seed = None
    elif c.data.get("split_seed") is None:
        c.data.split_seed = DEFAULT_SPLIT_SEED
    return c


def _check_same_config(seed_dir: Path, config) -> None:
    """Refuse a seed directory started with another config: its results would mix two."""
    path = seed_dir / "config.json"
    if not path.exists():
        return
    before = json.loads(path.read_text())
    difference = _first_difference(before, json.loads(config.to_json_best_effort()))
    if difference is not None:
        raise UserError(f"{seed_dir} was trained with a different config ({difference}); "
                        "use a new --workdir")


def _tta_rmse(seed_dir: Path) -> tuple[float, float, int]:
    """(RMSE, RMSE with flip TTA, epoch) of the run's best checkpoint on its validation split."""
    from fkd_jax.training import run_dir
    from fkd_jax.training import restore
    from fkd_jax.inference import predictor
    from fkd_jax.training import steps

    run = restore.load_run(seed_dir, "best")
    run_data = run_dir.read_run_data(run.config, seed_dir)
    run_dir.discard_run_data(run_data)
    val = run_data.val
    predict = predictor.Predictor.from_run(run)
    plain, tta = (steps.rmse_report(predict(val.images, tta=t), val.keypoints, val.mask,
                                       val.keypoint_set)["rmse_px"] for t in (False, True))
    return plain, tta, int(run.meta["epoch"])


def run_seed(config, seed: int, seed_dir: Path, member_command=None) -> dict:
    """Train (or resume) one seed, score its best checkpoint, write its seed_result.json.
    An ensemble's seed (`config.train.members` > 1) trains its members with
    `member_command(i)` (train.py's command line for member i) and is scored as a whole."""
    from fkd_jax import cli
    from fkd_jax.training import config_check
    from fkd_jax.training import ensemble
    from fkd_jax.training import run_dir
    from fkd_jax import files
    from fkd_jax.training import loop

    config_check.check_config(config)
    _check_same_config(seed_dir, config)
    cli.check_workdir(seed_dir)
    n = ensemble.members(config)
    first = ensemble.member_dir(seed_dir, 0) if n > 1 else seed_dir
    resumed = bool(run_dir.read_metrics(first))
    t0 = time.perf_counter()
    if n > 1:
        scores = loop.train_ensemble(config, seed_dir, member_command)
        row = {"seed": seed, "workdir": str(seed_dir), "ensemble_rmse_px": scores["val_rmse_px"],
               "members_rmse_px_mean": float(np.mean(scores["members_val_rmse_px"])),
               "members_rmse_px": scores["members_val_rmse_px"],
               "tta_rmse_px": scores["tta_rmse_px"]}
    else:
        loop.train_and_evaluate(config, seed_dir)
        plain, tta, best_epoch = _tta_rmse(seed_dir)
        row = {"seed": seed, "workdir": str(seed_dir), "best_epoch": best_epoch,
               **seed_figures(run_dir.read_metrics(seed_dir)), "tta_rmse_px": tta,
               "best_checkpoint_rmse_px": plain}
    row.update(wall_s=time.perf_counter() - t0, resumed=resumed)
    files.write_json(seed_dir / RESULT, row)
    return row


def _member_command(argv: list[str], config_path: str, config, seed_dir: Path):
    """train.py's command line for member i of a seed's ensemble: the config file, this
    command's --config.* overrides, then the member's seed and split."""
    from fkd_jax.training import ensemble

    train_py = Path(__file__).resolve().parents[1] / "train.py"
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    command = [sys.executable, str(train_py), f"--config={config_path}", *overrides]
    return lambda i: ensemble.member_command(command, config, seed_dir, i)


def _train_side_by_side(argv: list[str], seeds: list[int], workdir: Path,
                        groups: list[list[int]]) -> None:
    """Train `seeds` in one worker process (this script, --jobs=1 --nosummary) per group of
    cores, pinned to it (fkd_jax.training.processes)."""
    from fkd_jax.training import processes

    jobs = []
    for i in range(len(groups)):
        mine = seeds[i::len(groups)]
        if not mine:
            continue
        names = ",".join(map(str, mine))
        log = workdir / f"log_seeds_{names.replace(',', '_')}.txt"
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv[1:],
               f"--seeds={names}", f"--workdir={workdir}", "--jobs=1", "--nosummary"]
        print(f"seeds {names}: training on core(s) "
              f"{','.join(map(str, groups[i]))}, output in {log}", flush=True)
        jobs.append(processes.Job(f"seeds {names}", cmd, log))
    status = processes.run_pinned(jobs, groups)
    failed = [f"{job.name} (exit {status[job.name]}: {processes.last_line(job.log)}; "
              f"log {job.log})" for job in jobs if status.get(job.name, 0) != 0]
    if failed:
        raise UserError("training failed for " + "; ".join(failed))


def _parse_seeds(values: list[str]) -> list[int]:
    try:
        seeds = [int(v) for v in values]
    except ValueError:
        raise UserError(f"--seeds={','.join(values)} must be integers, e.g. 0,1,2") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds={','.join(values)} must be distinct integers >= 0")
    return seeds


def _same_split(seed_dirs: list[Path]) -> bool:
    from fkd_jax.training import run_dir

    splits = [json.loads(run_dir.split_path(d).read_text()) for d in seed_dirs]
    return all(s == splits[0] for s in splits)


def main(argv: list[str]) -> None:
    from fkd_jax import cli
    from fkd_jax.training import config_check
    from fkd_jax.training import ensemble
    from fkd_jax import files
    from fkd_jax.training import processes

    cli.parse_flags(argv, flags.FLAGS)
    if _CONFIG.value is None:
        raise UserError("--config is required, e.g. --config configs/unet_pair.py")
    seeds = _parse_seeds(_SEEDS.value)
    config_path = config_flags.get_config_filename(flags.FLAGS["config"])
    configs = {k: _seed_config(_CONFIG.value, k, _VARY_SPLIT.value) for k in seeds}
    for c in configs.values():  # every seed's config, before anything is written
        config_check.check_config(c)
    groups = processes.core_groups(processes.available_cores(), _JOBS.value)  # first
    if _JOBS.value > 1 and ensemble.members(_CONFIG.value) > 1:
        raise UserError(f"--jobs={_JOBS.value}: each seed of an ensemble config already trains "
                        "its members side by side on all cores; use --jobs=1")
    default = cli.default_workdir(config_path)
    workdir = cli.check_workdir(Path(_WORKDIR.value or f"{default}_seeds"))

    done = {k for k in seeds if (workdir / f"seed{k}" / RESULT).exists()}
    for k in sorted(done):
        _check_same_config(workdir / f"seed{k}", configs[k])
        print(f"seed {k}: done ({workdir / f'seed{k}' / RESULT}), skipped", flush=True)
    todo = [k for k in seeds if k not in done]
    if _JOBS.value > 1 and len(todo) > 1:
        _train_side_by_side(argv, todo, workdir, groups)
    rows = []
    for k in seeds:
        seed_dir = workdir / f"seed{k}"
        if (seed_dir / RESULT).exists():
            rows.append(json.loads((seed_dir / RESULT).read_text()))
            continue
        print(f"seed {k}: training in {seed_dir}", flush=True)
        rows.append(run_seed(configs[k], k, seed_dir,
                             _member_command(argv, config_path, configs[k], seed_dir)))
    if not _SUMMARY.value:
        return

    mean, std = aggregate(rows)
    table = markdown_table(rows, mean, std)
    summary = {
        "config": config_path,
        "overrides": [a for a in argv[1:] if a.startswith("--config.")],
        "split_seed": None if _VARY_SPLIT.value else configs[seeds[0]].data.split_seed,
        "same_split": _same_split([workdir / f"seed{k}" for k in seeds]),
        "jobs": _JOBS.value, "n_seeds": len(rows), "seeds": rows, "mean": mean, "std": std,
        "std_note": "sample standard deviation (ddof=1)",
    }
    files.write_json(workdir / "summary.json", summary)
    files.write_text(workdir / "summary.md", table)
    print(table, end="")
    print(f"wrote {workdir / 'summary.json'} and {workdir / 'summary.md'}")


if __name__ == "__main__":
    exit_on_user_error(main)(sys.argv)
