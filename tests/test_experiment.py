"""The run's data: split over all rows, label policy (and imposed missing labels) on training only."""

from __future__ import annotations

import numpy as np

from configs import default
from fkd_jax.data import kaggle
from fkd_jax.data import preparation
from fkd_jax.training import run_dir
from fkd_jax.data import synthetic


def _config(train_path, **data_overrides):
    c = default.get_config()
    c.data.train_path = str(train_path)
    c.data.val_fraction = 0.25
    for k, v in data_overrides.items():
        c.data[k] = v
    return c


def _full_file(tmp_path, n=40):
    return synthetic.write_kaggle_files(tmp_path / "full", n, seed=3)["training"]


def test_impose_missing_takes_pattern_rows_and_keeps_missing_missing(training_csv, kaggle_rows):
    pattern = preparation.load_label_pattern(training_csv)
    np.testing.assert_array_equal(pattern, kaggle_rows.mask)
    d = kaggle.load_training(training_csv)
    full_mask = d.mask.copy()
    out = preparation.impose_missing(d, np.ones_like(pattern[:1]), seed=0)  # an all-present pattern
    np.testing.assert_array_equal(out.mask, full_mask)  # never adds labels
    sparse = preparation.impose_missing(d, pattern[2:3], seed=0)  # one sparse row for everyone
    np.testing.assert_array_equal(sparse.mask, full_mask & pattern[2])
    assert (sparse.keypoints[~sparse.mask] == 0).all()
    a, b = (preparation.impose_missing(d, pattern, seed=s).mask for s in (1, 1))
    np.testing.assert_array_equal(a, b)


def test_policies_share_the_validation_rows_and_differ_only_in_training(tmp_path, training_csv):
    path = _full_file(tmp_path)
    runs = {}
    for policy in ("mask", "drop"):
        workdir = tmp_path / policy
        workdir.mkdir()
        cfg = _config(path, label_policy=policy, missing_pattern_path=str(training_csv))
        rd = run_dir.read_run_data(cfg, workdir)
        runs[policy] = rd.train, rd.val
    (mask_train, mask_val), (drop_train, drop_val) = runs["mask"], runs["drop"]
    np.testing.assert_array_equal(mask_val.row_ids, drop_val.row_ids)
    assert len(mask_val) == 10 and mask_val.mask.all()  # validation keeps its full labels
    assert len(mask_train) == 30 and not mask_train.mask.all()  # imposed: some labels missing
    complete = mask_train.mask.all(axis=1)
    np.testing.assert_array_equal(drop_train.row_ids, mask_train.row_ids[complete])
    assert drop_train.mask.all()


def test_split_is_saved_only_when_asked_and_then_reused(tmp_path):
    path = _full_file(tmp_path)
    cfg = _config(path)
    workdir = tmp_path / "run"
    workdir.mkdir()
    rd = run_dir.read_run_data(cfg, workdir)
    assert list(workdir.iterdir()) == []  # reading writes nothing
    run_dir.save_run_data(rd, cfg, workdir)
    assert (workdir / "split.json").exists()
    train, val = rd.train, rd.val
    cfg.seed = 99  # a resumed run keeps the saved split whatever the seed says
    rd2 = run_dir.read_run_data(cfg, workdir)
    train2, val2 = rd2.train, rd2.val
    np.testing.assert_array_equal(train.row_ids, train2.row_ids)
    np.testing.assert_array_equal(val.row_ids, val2.row_ids)
    assert set(train.row_ids) | set(val.row_ids) == set(range(40))


def test_synthetic_set_is_generated_outside_the_workdir_until_saved(tmp_path):
    cfg = default.get_config()
    cfg.data.synthetic_n = 20
    workdir = tmp_path / "run"
    workdir.mkdir()
    rd = run_dir.read_run_data(cfg, workdir)
    assert list(workdir.iterdir()) == [] and rd.new_synthetic.exists()
    temp = rd.new_synthetic
    run_dir.save_run_data(rd, cfg, workdir)
    assert not temp.exists()
    saved = run_dir.synthetic_dir(cfg, workdir) / "training.csv"
    assert rd.source == saved and saved.exists()
    again = run_dir.read_run_data(cfg, workdir)  # reuses the saved set and split
    assert again.new_synthetic is None and again.new_split is None
    np.testing.assert_array_equal(again.val.images, rd.val.images)


def test_a_file_with_no_labelled_keypoint_is_refused(tmp_path):
    import pytest

    from fkd_jax.errors import UserError

    path = _full_file(tmp_path)
    text = path.read_text().splitlines()
    header, rows = text[0], text[1:]
    n_kp = len(header.split(",")) - 1
    blank = [",".join([""] * n_kp + [r.split(",")[-1]]) for r in rows]
    path.write_text("\n".join([header] + blank) + "\n")
    workdir = tmp_path / "run"
    workdir.mkdir()
    with pytest.raises(UserError, match="no training row has a labelled keypoint"):
        run_dir.read_run_data(_config(path), workdir)
    assert list(workdir.iterdir()) == []


def test_keypoint_framing_reframes_training_and_validation_rows_alike(tmp_path):
    path = _full_file(tmp_path)
    given = run_dir.read_run_data(_config(path), tmp_path)
    framed = run_dir.read_run_data(_config(path, framing="keypoints"), tmp_path)
    for a, b in ((given.train, framed.train), (given.val, framed.val)):
        np.testing.assert_array_equal(a.row_ids, b.row_ids)  # the same split
        want = preparation.reframe_by_keypoints(a)
        np.testing.assert_array_equal(b.images, want.images)
        np.testing.assert_array_equal(b.keypoints, want.keypoints)
        assert not np.array_equal(a.keypoints, b.keypoints)


def test_train_fraction_keeps_nested_whole_groups_and_the_same_validation(tmp_path):
    path = _full_file(tmp_path, n=60)
    groups = tmp_path / "groups.txt"
    groups.write_text("".join(f"{i // 3}\n" for i in range(60)))  # 20 people, 3 rows each
    data = {}
    for frac in (1.0, 0.5, 0.25):
        workdir = tmp_path / f"f{frac}"
        workdir.mkdir()
        cfg = _config(path, groups_path=str(groups), train_fraction=frac)
        rd = run_dir.read_run_data(cfg, workdir)
        run_dir.save_run_data(rd, cfg, workdir)
        data[frac] = rd
        again = run_dir.read_run_data(cfg, workdir)  # a resume reads the kept rows back
        np.testing.assert_array_equal(again.train.row_ids, rd.train.row_ids)
    full, half, quarter = (set(data[f].train.row_ids) for f in (1.0, 0.5, 0.25))
    assert quarter < half < full
    people = lambda rows: {r // 3 for r in rows}  # noqa: E731
    assert len(people(full)) == 15 and len(people(half)) == 8 and len(people(quarter)) == 4
    assert all({3 * p, 3 * p + 1, 3 * p + 2} <= half for p in people(half))  # whole people
    for frac in (0.5, 0.25):
        np.testing.assert_array_equal(data[frac].val.row_ids, data[1.0].val.row_ids)
