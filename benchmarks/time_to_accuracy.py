"""Time to accuracy of finished (or running) train.py runs: when each first reached a target RMSE.
  uv run python benchmarks/time_to_accuracy.py RUN_DIR [RUN_DIR ...] [--target 1.35[,1.40]]
      [--metric val_rmse_px[,val_rmse_px_ema]]

A RUN_DIR is a train.py --workdir (config.json, metrics.jsonl, split.json), or a folder of
them (scripts/seeds.py's WORKDIR: every sub-folder holding a metrics.jsonl is taken). From
metrics.jsonl, per run, metric and target (px, validation RMSE; by default every metric the
runs have: raw val_rmse_px and val_rmse_px_ema / _swa when averaging was on):
  epoch          the first epoch whose metric is <= the target (none: "not reached")
  images_seen    training images up to and including that epoch: per epoch
                 images_per_s x epoch_time_s, which is exactly steps x batch size (the
                 remainder of the rows that do not fill a batch is not trained that epoch)
  wall_s         compile_time_s + the sum of epoch_time_s + eval_time_s up to that epoch:
                 compiling, training and the validation pass(es) every epoch (a resumed run
                 compiled once per process: each compile is counted). Not included, because
                 metrics.jsonl does not record them: reading the data, saving checkpoints,
                 process start-up (a few seconds per run)
  images_per_s   training images over training time (epoch_time_s only) up to that epoch
Also train_rows (split.json's training rows, before the label policy) and each run's
batch size. Then, over the runs that reached the target, mean ± sample std (ddof=1) of
each figure. The last line printed is one JSON object.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

from absl import flags

from fkd_jax import cli
from fkd_jax.data import preparation
from fkd_jax.errors import UserError, exit_on_user_error
from fkd_jax.training import restore, run_dir

METRICS = ("val_rmse_px", "val_rmse_px_ema", "val_rmse_px_swa")
FIGURES = ("epoch", "images_seen", "wall_s", "images_per_s")


def run_dirs(paths: list[str]) -> list[Path]:
    """The run directories named, a folder of runs standing for its sub-folders."""
    out = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise UserError(f"{p}: no such directory")
        if (p / "metrics.jsonl").is_file():
            out.append(p)
            continue
        subs = sorted(d for d in p.iterdir() if (d / "metrics.jsonl").is_file())
        if not subs:
            raise UserError(f"{p}: not a run directory (no metrics.jsonl) and holds none")
        out += subs
    return out


def read_run(workdir: Path) -> dict:
    """A run's metrics records (each checked for the fields used) and its facts."""
    records = run_dir.read_metrics(workdir)
    if not records:
        raise UserError(f"{workdir}/metrics.jsonl: no finished epoch recorded")
    for r in records:
        missing = [k for k in ("epoch", "epoch_time_s", "images_per_s") if k not in r]
        if missing:
            raise UserError(f"{workdir}/metrics.jsonl, epoch {r.get('epoch', '?')}: no "
                            f"{', '.join(missing)} (written by an older train.py?)")
    config = restore.read_run_config(workdir)
    split = workdir / "split.json"
    train_rows = len(preparation.load_split(split)[0]) if split.is_file() else None
    return {"workdir": str(workdir), "records": records,
            "batch_size": config.train.batch_size, "train_rows": train_rows,
            "eval_time_recorded": all("eval_time_s" in r for r in records),
            "compile_time_recorded": all("compile_time_s" in r for r in records)}


def time_to_target(records: list[dict], metric: str, target: float) -> dict | None:
    """The FIGURES at the first epoch whose `metric` <= `target`; None if none reached it."""
    images = seconds = train_seconds = 0.0
    previous_compile = None
    for r in records:
        compile_s = r.get("compile_time_s", 0.0)
        if compile_s != previous_compile:  # a new process (the start or a resume) compiled
            seconds += compile_s
            previous_compile = compile_s
        epoch_images = round(r["images_per_s"] * r["epoch_time_s"])
        images += epoch_images
        train_seconds += r["epoch_time_s"]
        seconds += r["epoch_time_s"] + r.get("eval_time_s", 0.0)
        value = r.get(metric)
        if value is not None and math.isfinite(value) and value <= target:
            return {"epoch": r["epoch"], "images_seen": int(images), "wall_s": seconds,
                    "images_per_s": images / train_seconds, "rmse_px": value,
                    "images_per_epoch": epoch_images}
    return None


def summarise(runs: list[dict], metric: str, target: float) -> dict:
    """Per run the figures (or None), then mean/std over the runs that reached the target."""
    per_run = {r["workdir"]: time_to_target(r["records"], metric, target) for r in runs
               if any(metric in rec for rec in r["records"])}
    reached = [v for v in per_run.values() if v is not None]
    stats = {}
    for key in FIGURES:
        values = [float(v[key]) for v in reached]
        stats[key] = {"mean": statistics.mean(values) if values else None,
                      "std": statistics.stdev(values) if len(values) > 1 else None}
    return {"metric": metric, "target_px": target, "runs": per_run,
            "reached": len(reached), "of": len(per_run), **stats}


def print_table(s: dict) -> None:
    print(f"\n{s['metric']} <= {s['target_px']} px: reached by {s['reached']} of {s['of']} runs")
    print(f"{'run':40s} {'epoch':>5s} {'images seen':>12s} {'wall min':>9s} {'images/s':>9s}")
    for name, v in s["runs"].items():
        if v is None:
            print(f"{name[-40:]:40s} {'not reached':>5s}")
        else:
            print(f"{name[-40:]:40s} {v['epoch']:5d} {v['images_seen']:12d} "
                  f"{v['wall_s'] / 60:9.2f} {v['images_per_s']:9.1f}")
    if s["reached"]:
        cells = []
        for key, unit, scale, fmt in (("epoch", "epoch", 1, "{:.1f}"),
                                      ("images_seen", "images seen", 1, "{:.0f}"),
                                      ("wall_s", "min", 1 / 60, "{:.2f}"),
                                      ("images_per_s", "images/s", 1, "{:.1f}")):
            mean, std = s[key]["mean"], s[key]["std"]
            spread = "" if std is None else " ± " + fmt.format(std * scale)
            cells.append(f"{fmt.format(mean * scale)}{spread} {unit}")
        print(f"mean ± std over the {s['reached']} runs that reached it: " + ", ".join(cells))


FLAGS = flags.FlagValues()
flags.DEFINE_string("target", "1.35", "Validation RMSE(s) in px, comma-separated.",
                    flag_values=FLAGS)
flags.DEFINE_string("metric", None, f"Comma-separated, from {', '.join(METRICS)}; default: all "
                    "the runs have.", flag_values=FLAGS)


def parse_args(argv: list[str]) -> SimpleNamespace:
    """The options, with the RUN_DIRs as `runs` and --target, --metric split into lists."""
    runs = cli.parse_flags(argv, FLAGS, positional=True)
    if not runs:
        raise UserError("give at least one RUN_DIR (a train.py run directory or a folder of them)")
    args = SimpleNamespace(**FLAGS.flag_values_dict(), runs=runs)
    try:
        args.targets = [float(t) for t in args.target.split(",") if t]
    except ValueError:
        raise UserError(f"--target {args.target}: give numbers in px, e.g. 1.35 or "
                        "1.35,1.40") from None
    if not args.targets or any(not math.isfinite(t) or t <= 0 for t in args.targets):
        raise UserError(f"--target {args.target}: give positive numbers in px, e.g. 1.35")
    args.metrics = None
    if args.metric:
        args.metrics = [m for m in args.metric.split(",") if m]
        for m in args.metrics:
            if m not in METRICS:
                raise UserError(f"--metric {m!r}: choose from {', '.join(METRICS)}")
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    runs = [read_run(d) for d in run_dirs(args.runs)]
    present = [m for m in METRICS if any(m in rec for r in runs for rec in r["records"])]
    for m in args.metrics or []:
        if m not in present:
            raise UserError(f"--metric {m}: none of the runs recorded it (they have "
                            f"{', '.join(present) or 'no validation RMSE'})")
    metrics = args.metrics or present
    summaries = [summarise(runs, m, t) for m in metrics for t in args.targets]
    for s in summaries:
        print_table(s)
    notes = [f"{r['workdir']}: no {what} in metrics.jsonl; wall_s leaves it out"
             for r in runs for what, ok in (("eval_time_s", r["eval_time_recorded"]),
                                            ("compile_time_s", r["compile_time_recorded"]))
             if not ok]
    for n in notes:
        print(f"note: {n}")
    print(json.dumps({"runs": [{k: v for k, v in r.items() if k != "records"}
                               | {"epochs": len(r["records"])} for r in runs],
                      "wall_s_includes": "compile + training epochs + validation each epoch",
                      "summaries": summaries, "notes": notes}))


if __name__ == "__main__":
    exit_on_user_error(main)(sys.argv)
