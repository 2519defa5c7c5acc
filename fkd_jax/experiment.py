"""A run's work directory and the data it trains on, shared by train.py and eval.py.

Work directory layout (`--workdir DIR`):
  config.json      the resolved config of the run
  split.json       source-CSV row ids of the train and validation rows (reused on resume)
  metrics.jsonl    one JSON object per finished epoch
  checkpoints/     orbax checkpoints (see fkd_jax.checkpoints)
  synthetic/       the embedded procedural faces, when no --config.data.train_path is given
  eval/            eval.py's numbers and figures
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from fkd_jax import data as kdata
from fkd_jax import synthetic


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def training_file(config, workdir: Path) -> Path:
    """The Kaggle-format training file of the run: the configured one, or the embedded default.

    The default is generated once into DIR/synthetic/ (deterministic from
    `config.data.synthetic_seed`), so it flows through the same loader and label policy as
    real data.
    """
    if config.data.train_path:
        return Path(config.data.train_path)
    d = config.data
    name = f"n{d.synthetic_n}-seed{d.synthetic_seed}"
    out = workdir / "synthetic" / (name + ("-kaggle-missing" if d.synthetic_kaggle_missing else ""))
    path = out / "training.csv"
    if not path.exists():
        synthetic.write_kaggle_files(out, d.synthetic_n, d.synthetic_seed,
                                     kaggle_missing=d.synthetic_kaggle_missing)
    return path


def load_run_data(config, workdir: Path) -> tuple[kdata.KeypointData, kdata.KeypointData]:
    """(train, validation) for the run: the split fixed, the label policy applied to training.

    The first run of a work directory splits every row of the file (by group when
    `config.data.groups_path` is set) with `config.seed` and stores the row ids in split.json;
    later runs (resume, eval) reuse them. Only the training rows then get the label policy
    (and, for experiments, `config.data.missing_pattern_path`'s missing labels): validation
    keeps every row and is scored on its labelled coordinates, so runs with either policy are
    compared on the same faces.
    """
    path = training_file(config, workdir)
    full = kdata.load_training(path)
    split_path = workdir / "split.json"
    if split_path.exists():
        train_ids, val_ids = kdata.load_split(split_path)
        train_idx = kdata.indices_for_rows(full, train_ids, split_path)
        val_idx = kdata.indices_for_rows(full, val_ids, split_path)
    else:
        groups = (kdata.load_groups(config.data.groups_path, len(full))
                  if config.data.groups_path else None)
        train_idx, val_idx = kdata.split_indices(len(full), config.data.val_fraction,
                                                 config.seed, groups=groups)
        kdata.save_split(split_path, full.row_ids[train_idx], full.row_ids[val_idx])
    train = full.subset(train_idx)
    if config.data.get("missing_pattern_path"):
        pattern = kdata.load_label_pattern(config.data.missing_pattern_path)
        train = kdata.impose_missing(train, pattern, config.seed)
    return kdata.apply_label_policy(train, config.data.label_policy), full.subset(val_idx)


def read_metrics(workdir: Path) -> list[dict]:
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut short by a kill: everything after it is untrustworthy
    return records


def truncate_metrics(workdir: Path, last_epoch: int) -> None:
    """Keep only the epochs a checkpoint covers (a resumed run rewrites the rest)."""
    records = [r for r in read_metrics(workdir) if r.get("epoch", 0) <= last_epoch]
    atomic_write_text(Path(workdir) / "metrics.jsonl",
                      "".join(json.dumps(r) + "\n" for r in records))


def append_metrics(workdir: Path, record: dict) -> None:
    with open(Path(workdir) / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
