"""A run's work directory and the data it trains on, shared by train.py and eval.py.

Work directory layout (`--workdir DIR`):
  run.json         {"run_format": RUN_FORMAT}: which layout of these files this is
  config.json      the resolved config of the run
  split.json       source-CSV row ids of the train and validation rows (reused on resume)
  metrics.jsonl    one JSON object per finished epoch
  checkpoints/     orbax checkpoints (see fkd_jax.training.checkpoints)
  synthetic/       the embedded procedural faces, when no --config.data.train_path is given
  eval/            eval.py's numbers and figures

A directory written by another version of fkd-jax (another RUN_FORMAT, or none: format 1) is
refused with one line by every reader and by a resume (`check_run_format`): train it again.

Reading and writing are separate steps: `read_run_data` only reads (a new synthetic set is
generated into a temporary folder), so a run can check everything about its data before
`save_run_data` writes the synthetic set and split.json into the work directory.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fkd_jax import files
from fkd_jax.data import kaggle, preparation, synthetic
from fkd_jax.errors import UserError
from fkd_jax.geometry import keypoints
from fkd_jax.training import ensemble


RUN_FORMAT = 2  # raise it whenever this version could misread another's run directory
RUN_FILE = "run.json"


def write_run_files(config, workdir: Path) -> None:
    """The run's format and resolved config (run.json first: a config.json always has one)."""
    files.write_json(Path(workdir) / RUN_FILE, {"run_format": RUN_FORMAT})
    files.write_text(Path(workdir) / "config.json", config.to_json_best_effort(indent=2) + "\n")


def check_run_format(workdir: Path) -> None:
    """Refuse a run directory (one with a config.json) that another version of fkd-jax wrote;
    a directory without a config.json is no run yet and passes."""
    workdir = Path(workdir)
    if not (workdir / "config.json").is_file():
        return
    try:
        found = json.loads((workdir / RUN_FILE).read_text()).get("run_format")
    except FileNotFoundError:
        found = 1  # the format before run.json existed
    except (OSError, ValueError, AttributeError):
        found = "unreadable"
    if found != RUN_FORMAT:
        raise UserError(f"{workdir}: written by another version of fkd-jax (run format {found}; "
                        f"this version reads {RUN_FORMAT}): train it again")


@dataclass
class RunData:
    """(train, validation) of a run, and what `save_run_data` still has to write."""

    train: kaggle.KeypointData
    val: kaggle.KeypointData
    source: Path  # the training file the rows come from
    new_synthetic: Path | None = None  # a freshly generated synthetic folder to move in
    new_split: tuple[np.ndarray, np.ndarray] | None = None  # row ids, when split.json is new


def synthetic_dir(config, workdir: Path) -> Path:
    """Where the run keeps its embedded procedural faces (a name that says how they were made)."""
    d = config.data
    name = f"n{d.synthetic_n}-seed{d.synthetic_seed}"
    levers = synthetic_levers(config)
    shapes = levers.pop("shapes")
    name += "".join(f"-{lever}" for lever, on in levers.items() if on)
    name += f"-{shapes}-shapes" if shapes != "kaggle" else ""
    return workdir / "synthetic" / (name + ("-kaggle-missing" if d.synthetic_kaggle_missing else ""))


def synthetic_levers(config) -> dict[str, bool | str]:
    """The photo-like levers of the procedural faces and their shape model (off and "kaggle" in
    configs written before them)."""
    levers: dict[str, bool | str] = {lever: bool(config.data.get(f"synthetic_{lever}", False))
                                     for lever in ("pose", "texture", "camera", "anatomy",
                                                   "occluders")}
    levers["shapes"] = config.data.get("synthetic_shapes", "kaggle")
    return levers


def split_path(workdir: str | Path) -> Path:
    """A run's split.json; an ensemble's is its member 0's (all members share the split)."""
    own = Path(workdir) / "split.json"
    member = ensemble.member_dir(workdir, 0) / "split.json"
    return member if not own.exists() and member.exists() else own


def read_run_data(config, workdir: Path) -> RunData:
    """The run's (train, validation) rows, the split fixed and the label policy applied to
    training; writes nothing into `workdir`.

    The first run of a work directory splits every row of the file (by group when
    `config.data.groups_path` is set) with `config.data.split_seed`, or `config.seed` when that
    is None (or absent, in configs from before it existed); later runs (resume, eval) reuse
    split.json. Only the training rows then get the label policy (and, for experiments,
    `config.data.missing_pattern_path`'s missing labels): validation keeps every row and is
    scored on its labelled coordinates, so runs with either policy are compared on the same
    faces. A file in which no training row keeps a labelled keypoint is refused.
    An ensemble's data are those of its member 0 (all members share the split).
    """
    if ensemble.members(config) > 1:
        return read_run_data(ensemble.member_config(config, 0), ensemble.member_dir(workdir, 0))
    d = config.data
    data_seed = config.seed if d.get("split_seed") is None else d.split_seed
    new_synthetic = None
    if d.train_path:
        path = Path(d.train_path)
    else:
        path = synthetic_dir(config, workdir) / "training.csv"
        if not path.exists():
            new_synthetic = Path(tempfile.mkdtemp(prefix="fkd-synthetic-"))
            synthetic.write_kaggle_files(new_synthetic, d.synthetic_n, d.synthetic_seed,
                                         kaggle_missing=d.synthetic_kaggle_missing,
                                         **synthetic_levers(config))
            path = new_synthetic / "training.csv"
    try:
        full = kaggle.load_training(path, keypoints.KEYPOINT_SETS[d.keypoints], d.keypoints_path,
                                    margin_px=config.model.get("margin") or 0)
        if d.get("framing", "as_given") == "keypoints":
            full = preparation.reframe_by_keypoints(full)
        split_path = workdir / "split.json"
        new_split = None
        if split_path.exists():
            train_ids, val_ids = preparation.load_split(split_path)
            train_idx = preparation.indices_for_rows(full, train_ids, split_path)
            val_idx = preparation.indices_for_rows(full, val_ids, split_path)
        else:
            groups = preparation.load_groups(d.groups_path, len(full)) if d.groups_path else None
            train_idx, val_idx = preparation.split_indices(len(full), d.val_fraction, data_seed,
                                                     groups=groups)
            train_idx = preparation.keep_fraction(train_idx, d.get("train_fraction", 1.0),
                                                  data_seed, groups)
            new_split = (full.row_ids[train_idx], full.row_ids[val_idx])
        train = full.subset(train_idx)
        if d.missing_pattern_path:
            train = preparation.impose_missing(train, preparation.load_label_pattern(d.missing_pattern_path),
                                         data_seed)
        train = preparation.apply_label_policy(train, d.label_policy)
        _check_learnable(train, full.subset(val_idx), d.train_path or "the synthetic faces",
                         d.label_policy)
    except BaseException:
        if new_synthetic is not None:
            shutil.rmtree(new_synthetic, ignore_errors=True)
        raise
    return RunData(train, full.subset(val_idx), path, new_synthetic, new_split)


def _check_learnable(train: kaggle.KeypointData, val: kaggle.KeypointData, source, policy: str):
    if not train.mask.any():
        raise UserError(f"{source}: no training row has a labelled keypoint (label policy "
                        f"{policy!r}); there is nothing to learn")
    if not val.mask.any():
        raise UserError(f"{source}: no validation row has a labelled keypoint; the run could "
                        "not be scored (use more rows or another --config.data.val_fraction)")


def save_run_data(run_data: RunData, config, workdir: Path) -> RunData:
    """Write what `read_run_data` found new (the synthetic set, split.json); returns the
    RunData pointing at the files in `workdir`."""
    if run_data.new_synthetic is not None:
        target = synthetic_dir(config, workdir)
        target.parent.mkdir(parents=True, exist_ok=True)
        for f in sorted(run_data.new_synthetic.iterdir()):
            files.write_bytes(target / f.name, f.read_bytes())
        shutil.rmtree(run_data.new_synthetic, ignore_errors=True)
        run_data.source, run_data.new_synthetic = target / "training.csv", None
    if run_data.new_split is not None:
        preparation.save_split(workdir / "split.json", *run_data.new_split)
        run_data.new_split = None
    return run_data


def copy_run_data(config, from_dir: Path, to_dir: Path) -> None:
    """Give `to_dir` the split.json and synthetic set of `from_dir` where it has none: members
    of one ensemble trained in one process share member 0's data (`config`: a member's)."""
    pairs = [(Path(from_dir) / "split.json", Path(to_dir) / "split.json")]
    source = synthetic_dir(config, Path(from_dir))
    if source.is_dir():
        target = synthetic_dir(config, Path(to_dir))
        pairs += [(f, target / f.name) for f in sorted(source.iterdir())]
    for src, dst in pairs:
        if src.exists() and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            files.write_bytes(dst, src.read_bytes())


def discard_run_data(run_data: RunData) -> None:
    """Remove the temporary synthetic folder of a run that stopped before saving it."""
    if run_data.new_synthetic is not None:
        shutil.rmtree(run_data.new_synthetic, ignore_errors=True)


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
    files.write_text(Path(workdir) / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records))


def append_metrics(workdir: Path, record: dict) -> None:
    files.append_line(Path(workdir) / "metrics.jsonl", json.dumps(record))
