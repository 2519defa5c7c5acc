"""From loaded rows to what a run trains on: groups, the label policy, missing labels, the
train/validation split, and crops re-framed on the keypoints.

Row ids are 0-based data rows of the source CSV (`KeypointData.row_ids`); a split is saved as
row ids so that a resumed run reads exactly the rows it started with.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from fkd_jax import files
from fkd_jax.data.kaggle import (
    _FIRST_DATA_ROW,
    IMAGE_COLUMN,
    KeypointData,
    _decode,
    _parse_integers,
    _parse_keypoints,
    _read_bytes,
    _read_table,
)
from fkd_jax.errors import DataError, UserError
from fkd_jax.geometry import keypoints
from fkd_jax.geometry.framing import _warp, framing_from_keypoints
from fkd_jax.geometry.keypoints import COLUMNS

LABEL_POLICIES: tuple[str, ...] = ("mask", "drop")


def load_groups(path, n_rows: int) -> np.ndarray:
    """Group ids (int64 (n_rows,)), one integer per line, e.g. person_ids.txt.

    Line k belongs to data row k - 1 of the training CSV (row_ids), so after a label policy
    the groups of the kept rows are `load_groups(...)[data.row_ids]`.
    """
    raw = _read_bytes(path)
    text = _decode(raw, path)
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataError(path, "holds no group ids (expected one integer per line)")
    groups = _parse_integers(pd.Series(lines, dtype=object), path, None, first_row=1)
    if len(groups) != n_rows:
        raise DataError(
            path,
            f"has {len(groups)} group ids but the training data has {n_rows} rows "
            "(expected one id per data row)",
        )
    return groups


def load_label_pattern(path) -> np.ndarray:
    """bool (M, 30): which coordinates each row of a Kaggle-format file has (`Image` optional).

    E.g. the 30 keypoint columns of Kaggle's training.csv, to impose its missing-label pattern
    on fully labelled data (`impose_missing`) and study the label policies honestly.
    """
    table, source = _read_table(path, "training.csv", COLUMNS, (IMAGE_COLUMN,))
    return _parse_keypoints(table, source)[1]


def impose_missing(data: KeypointData, pattern: np.ndarray, seed: int) -> KeypointData:
    """Each row keeps only the labels of a pattern row drawn at random (seeded, with
    replacement); labels it already lacked stay missing. The pattern covers Kaggle's 30
    columns; points a set adds after them (the square points) stay labelled."""
    draw = np.random.default_rng(seed).integers(0, len(pattern), size=len(data))
    keep = np.ones_like(data.mask)
    keep[:, :pattern.shape[1]] = pattern[draw]
    mask = data.mask & keep
    return dataclasses.replace(data, mask=mask,
                               keypoints=np.where(mask, data.keypoints, 0.0).astype(np.float32))


def apply_label_policy(data: KeypointData, policy: str) -> KeypointData:
    """'mask': keep every row (missing coordinates are masked); 'drop': complete rows only."""
    if policy == "mask":
        return data
    if policy == "drop":
        complete = data.mask.all(axis=1)
        if not complete.any():
            raise UserError(
                f"label_policy 'drop' keeps no rows: none of the {len(data)} rows has all "
                f"{data.keypoints.shape[1]} coordinates (use label_policy 'mask')"
            )
        return data.subset(np.flatnonzero(complete))
    raise UserError(f"unknown label_policy {policy!r}; expected one of {', '.join(LABEL_POLICIES)}")


def split_indices(
    n: int, val_fraction: float, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation split: sorted int64 index arrays (train, val) into range(n).

    Uses only `np.random.default_rng(seed)` (PCG64), so the split is the same on every run
    and machine. With `groups` (one id per row, aligned with the data being split) whole
    groups go to validation, so it holds people never seen in training; the number of groups
    is chosen to bring the validation rows closest to val_fraction * n.
    """
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    if n < 2:
        raise UserError(f"cannot split {n} row(s) into non-empty training and validation sets")
    rng = np.random.default_rng(seed)
    target = val_fraction * n
    if groups is None:
        order = rng.permutation(n)
        n_val = int(np.clip(round(target), 1, n - 1))
        return np.sort(order[n_val:]), np.sort(order[:n_val])
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise UserError(f"groups has shape {groups.shape}, expected ({n},): one id per row")
    ids, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if len(ids) < 2:
        raise UserError("a grouped split needs at least 2 distinct groups; all rows share one")
    order = rng.permutation(len(ids))
    taken = np.cumsum(counts[order])[:-1]  # rows in validation after 1, 2, ... groups
    k = int(np.argmin(np.abs(taken - target))) + 1
    in_val = np.zeros(len(ids), dtype=bool)
    in_val[order[:k]] = True
    is_val = in_val[inverse]
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def keep_fraction(train_idx: np.ndarray, fraction: float, seed: int,
                  groups: np.ndarray | None = None) -> np.ndarray:
    """The training indices of a seeded `fraction` of the training groups (rows without
    `groups`), sorted: for learning curves over the amount of real data.

    Groups are taken in one seeded order, so a smaller fraction's rows are a subset of a larger
    one's (10% within 30% within 100%); fraction 1 returns `train_idx` unchanged. At least one
    group is kept.
    """
    if fraction >= 1.0:
        return train_idx
    units = np.asarray(groups)[train_idx] if groups is not None else train_idx
    ids = np.unique(units)
    order = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,))).permutation(len(ids))
    kept = ids[order[:max(1, round(fraction * len(ids)))]]
    return np.sort(train_idx[np.isin(units, kept)])


def save_split(path, train_row_ids, val_row_ids) -> None:
    """Write the split's source-CSV row ids as JSON, atomically (temp file + rename)."""
    path = Path(path)
    payload = {
        "train_row_ids": [int(r) for r in np.asarray(train_row_ids).ravel()],
        "val_row_ids": [int(r) for r in np.asarray(val_row_ids).ravel()],
    }
    files.write_text(path, json.dumps(payload))


def load_split(path) -> tuple[np.ndarray, np.ndarray]:
    """(train_row_ids, val_row_ids) as int64 arrays from a `save_split` file."""
    text = _decode(_read_bytes(path), path)
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, f"not valid JSON (corrupted split file?): {e.msg}", row=e.lineno)
    keys = ("train_row_ids", "val_row_ids")
    if not isinstance(payload, dict) or any(k not in payload for k in keys):
        raise DataError(path, f"not a split file: expected a JSON object with {' and '.join(keys)}")
    out = []
    for key in keys:
        values = payload[key]
        if not isinstance(values, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values
        ):
            raise DataError(path, f"{key} must be a list of non-negative integers")
        out.append(np.array(values, dtype=np.int64))
    train, val = out
    for key, ids in zip(keys, out):
        if len(np.unique(ids)) != len(ids):
            raise DataError(path, f"{key} lists a row id twice")
    both = np.intersect1d(train, val)
    if len(both):
        raise DataError(path, f"row id {both[0]} is in both train_row_ids and val_row_ids")
    return train, val


def indices_for_rows(data: KeypointData, row_ids, split_path) -> np.ndarray:
    """Positions in `data` of the given source row ids (e.g. from `load_split`).

    Raises DataError naming `split_path` when a row id is not in `data`: the data file or
    the label policy changed since the split was saved.
    """
    row_ids = np.asarray(row_ids, dtype=np.int64)
    order = np.argsort(data.row_ids, kind="stable")
    sorted_ids = data.row_ids[order]
    pos = np.clip(np.searchsorted(sorted_ids, row_ids), 0, max(len(data) - 1, 0))
    found = (sorted_ids[pos] == row_ids) if len(data) else np.zeros(len(row_ids), bool)
    if not found.all():
        r = int(row_ids[np.flatnonzero(~found)[0]])
        raise DataError(
            split_path,
            f"row id {r} (CSV row {r + _FIRST_DATA_ROW}) is not in the loaded data; the data "
            "file or label policy changed since this split was saved",
        )
    return order[pos]


# ---------------------------------------------------------------------------------------------
# Reading files


def reframe_by_keypoints(data: KeypointData) -> KeypointData:
    """Every fully labelled row re-cropped to the square `framing_from_keypoints(...,
    rotate=True)` draws around its own true keypoints: the framing predict.py's passes 2, 3,
    ... reproduce from predicted keypoints. Rows with a missing keypoint keep their crop.

    Why: Kaggle's crops were framed on the 68-landmark box, which the 15 keypoints predict
    only to 5.5% in size (the jaw is not among them), so a model trained on them is framed
    differently on photos than in training. Trained on these crops, the framing the pipeline
    converges to is the training framing itself. The crop is resampled once (bilinear, edge
    replicated, as predict.py crops); a keypoint that leaves the image loses its label.
    """
    images = data.images.copy()
    kps = data.keypoints.copy()
    mask = data.mask.copy()
    size = data.image_size
    for i in np.flatnonzero(data.mask.all(axis=1)):
        framing = framing_from_keypoints(data.keypoints[i], rotate=True)
        images[i, :, :, 0] = _warp(np.ascontiguousarray(data.images[i, :, :, 0]), framing, size)
        moved = framing.to_crop(data.keypoints[i], size)
        pts = keypoints.as_points(moved)
        inside = np.repeat(np.all((pts >= 0) & (pts < size), axis=1), 2)
        kps[i] = np.where(inside, moved, 0.0)
        mask[i] = inside
    return replace(data, images=images, keypoints=kps, mask=mask)
