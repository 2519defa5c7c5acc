"""The run's data: split over all rows, label policy (and imposed missing labels) on training only."""

from __future__ import annotations

import numpy as np

from configs import base
from fkd_jax import data, experiment, synthetic


def _config(train_path, **data_overrides):
    c = base.get_config()
    c.data.train_path = str(train_path)
    c.data.val_fraction = 0.25
    for k, v in data_overrides.items():
        c.data[k] = v
    return c


def _full_file(tmp_path, n=40):
    return synthetic.write_kaggle_files(tmp_path / "full", n, seed=3)["training"]


def test_impose_missing_takes_pattern_rows_and_keeps_missing_missing(training_csv, kaggle_rows):
    pattern = data.load_label_pattern(training_csv)
    np.testing.assert_array_equal(pattern, kaggle_rows.mask)
    d = data.load_training(training_csv)
    full_mask = d.mask.copy()
    out = data.impose_missing(d, np.ones_like(pattern[:1]), seed=0)  # an all-present pattern
    np.testing.assert_array_equal(out.mask, full_mask)  # never adds labels
    sparse = data.impose_missing(d, pattern[2:3], seed=0)  # one sparse row for everyone
    np.testing.assert_array_equal(sparse.mask, full_mask & pattern[2])
    assert (sparse.keypoints[~sparse.mask] == 0).all()
    a, b = (data.impose_missing(d, pattern, seed=s).mask for s in (1, 1))
    np.testing.assert_array_equal(a, b)


def test_policies_share_the_validation_rows_and_differ_only_in_training(tmp_path, training_csv):
    path = _full_file(tmp_path)
    runs = {}
    for policy in ("mask", "drop"):
        workdir = tmp_path / policy
        workdir.mkdir()
        cfg = _config(path, label_policy=policy, missing_pattern_path=str(training_csv))
        runs[policy] = experiment.load_run_data(cfg, workdir)
    (mask_train, mask_val), (drop_train, drop_val) = runs["mask"], runs["drop"]
    np.testing.assert_array_equal(mask_val.row_ids, drop_val.row_ids)
    assert len(mask_val) == 10 and mask_val.mask.all()  # validation keeps its full labels
    assert len(mask_train) == 30 and not mask_train.mask.all()  # imposed: some labels missing
    complete = mask_train.mask.all(axis=1)
    np.testing.assert_array_equal(drop_train.row_ids, mask_train.row_ids[complete])
    assert drop_train.mask.all()


def test_split_is_saved_and_reused(tmp_path):
    path = _full_file(tmp_path)
    cfg = _config(path)
    train, val = experiment.load_run_data(cfg, tmp_path)
    cfg.seed = 99  # a resumed run keeps the saved split whatever the seed says
    train2, val2 = experiment.load_run_data(cfg, tmp_path)
    np.testing.assert_array_equal(train.row_ids, train2.row_ids)
    np.testing.assert_array_equal(val.row_ids, val2.row_ids)
    assert set(train.row_ids) | set(val.row_ids) == set(range(40))
