"""fkd_jax.data: loading, validation messages, label policies, splits and their persistence."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

from fkd_jax.data import kaggle, submission
from fkd_jax.data import preparation
from fkd_jax.errors import DataError, UserError
from fkd_jax.geometry.keypoints import SPARSE_SET, column_indices


# --- helpers: edit one cell of a fixture CSV -------------------------------------------------


def _edit(path, row: int, column: str, value: str, out_name: str | None = None):
    """Copy of the CSV at `path` with the cell at spreadsheet `row` / `column` replaced."""
    lines = path.read_text().split("\n")
    header = lines[0].split(",")
    cells = lines[row - 1].split(",")
    cells[header.index(column)] = value
    lines[row - 1] = ",".join(cells)
    out = path.with_name(out_name or path.name)
    out.write_text("\n".join(lines))
    return out


def _edit_pixel(path, row: int, k: int, value: str, out_name: str):
    """Copy with the k-th (1-based) value of the Image at spreadsheet `row` replaced."""
    image = path.read_text().split("\n")[row - 1].rsplit(",", 1)[1].split(" ")
    image[k - 1] = value
    return _edit(path, row, "Image", " ".join(image), out_name)


def _zip(zip_path, members: dict):
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, payload in members.items():
            zf.writestr(name, payload)
    return zip_path


def _error(loader, *args) -> str:
    with pytest.raises(DataError) as info:
        loader(*args)
    return str(info.value)


# --- valid files -------------------------------------------------------------------------------


def test_valid_training_csv_loads_pixels_keypoints_and_mask(training_csv, kaggle_rows):
    d = kaggle.load_training(training_csv)
    n = len(kaggle_rows.pixels)
    assert len(d) == n
    assert d.images.shape == (n, 96, 96, 1) and d.images.dtype == np.float32
    assert d.keypoints.shape == (n, 30) and d.keypoints.dtype == np.float32
    assert d.mask.dtype == bool and d.row_ids.dtype == np.int64
    assert d.images.min() == 0.0 and d.images.max() == 1.0
    np.testing.assert_array_equal(d.images[..., 0], kaggle_rows.pixels.astype(np.float32) / 255)
    np.testing.assert_array_equal(d.mask, kaggle_rows.mask)
    np.testing.assert_allclose(d.keypoints, kaggle_rows.keypoints, atol=1e-4)
    assert (d.keypoints[~d.mask] == 0.0).all()
    np.testing.assert_array_equal(d.row_ids, np.arange(n))


def test_zip_and_csv_give_identical_arrays(training_csv, tmp_path):
    csv_data = kaggle.load_training(training_csv)
    payload = training_csv.read_bytes()
    zips = [
        _zip(tmp_path / "training.zip", {"training.csv": payload}),
        _zip(tmp_path / "in_folder.zip", {"kaggle/training.csv": payload, "notes.txt": "x"}),
        _zip(tmp_path / "other_name.zip", {"faces.csv": payload}),
        _zip(tmp_path / "picks_expected.zip", {"training.csv": payload, "x.csv": "a\n1\n"}),
        # Kaggle's whole-competition download holds training.zip next to other CSVs
        _zip(
            tmp_path / "competition.zip",
            {
                "training.zip": (tmp_path / "training.zip").read_bytes(),
                "IdLookupTable.csv": "RowId\n",
                "SampleSubmission.csv": "RowId\n",
            },
        ),
    ]
    for z in zips:
        zip_data = kaggle.load_training(z)
        for field in ("images", "keypoints", "mask", "row_ids"):
            np.testing.assert_array_equal(getattr(zip_data, field), getattr(csv_data, field))


def test_crlf_and_bom_and_trailing_blank_lines_are_accepted(training_csv):
    expected = kaggle.load_training(training_csv)
    text = training_csv.read_text()
    variant = training_csv.with_name("variant.csv")
    variant.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode() + b"\r\n\r\n")
    got = kaggle.load_training(variant)
    np.testing.assert_array_equal(got.images, expected.images)
    np.testing.assert_array_equal(got.mask, expected.mask)


def test_valid_test_csv_and_lookup(test_csv, lookup_csv, kaggle_rows, tmp_path):
    ids, images = submission.load_test(test_csv)
    assert ids.dtype == np.int64 and ids.tolist() == [1, 2, 3]
    assert images.shape == (3, 96, 96, 1) and images.dtype == np.float32
    np.testing.assert_array_equal(images[..., 0], kaggle_rows.pixels[:3] / np.float32(255))
    zipped = submission.load_test(_zip(tmp_path / "test.zip", {"test.csv": test_csv.read_bytes()}))
    np.testing.assert_array_equal(zipped[1], images)

    lookup = submission.load_lookup(lookup_csv)
    assert list(lookup.columns) == ["RowId", "ImageId", "FeatureName"]
    assert lookup["RowId"].tolist() == [1, 2, 3, 4]
    assert lookup["ImageId"].tolist() == [1, 1, 2, 3]
    assert lookup["FeatureName"].tolist()[:2] == ["left_eye_center_x", "nose_tip_y"]
    submission.check_lookup_against_test(lookup, ids, lookup_csv)  # all ImageIds known: no error
    msg = _error(submission.check_lookup_against_test, lookup, np.array([1, 2]), lookup_csv)
    assert "IdLookupTable.csv, row 5, column ImageId: ImageId 3 is not in the test images" in msg


# --- malformed files: every message names the file, the row and the problem -------------------


def _malformed_training(tmp_path, training_csv):
    """(case id, path to load, substrings the message must hold)."""
    t = training_csv
    img = ".csv, row {}, column Image: "
    header = t.read_text().split("\n", 1)
    dup = tmp_path / "dup.csv"
    dup.write_text(header[0].replace("nose_tip_y", "nose_tip_x") + "\n" + header[1])
    extra = tmp_path / "extra.csv"
    extra.write_text(header[0] + ",comment\n" + header[1].replace("\n", ",x\n"))
    renamed = tmp_path / "renamed.csv"
    renamed.write_text(header[0].replace("nose_tip_y", "nose_y") + "\n" + header[1])
    missing = tmp_path / "missing.csv"
    lines = [line.split(",", 1)[1] for line in t.read_text().split("\n") if line]
    missing.write_text("\n".join(lines) + "\n")
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    header_only = tmp_path / "header_only.csv"
    header_only.write_text(header[0] + "\n")
    fields = tmp_path / "fields.csv"
    rows = t.read_text().split("\n")
    rows[3] = rows[3] + ",7"
    fields.write_text("\n".join(rows))
    blank = tmp_path / "blank.csv"
    rows = t.read_text().split("\n")
    blank.write_text("\n".join(rows[:3] + [""] + rows[3:]))
    utf8 = tmp_path / "utf8.csv"
    raw = t.read_bytes().split(b"\n")
    raw[2] = raw[2].replace(b" 7 ", b" \xff ", 1)
    utf8.write_bytes(b"\n".join(raw))
    return [
        ("missing file", tmp_path / "nope.csv", ["nope.csv", "file not found"]),
        ("directory", tmp_path, [str(tmp_path), "is a directory"]),
        ("empty file", empty, ["empty.csv", "empty (0 bytes)"]),
        ("header only", header_only, ["header_only.csv", "no data rows"]),
        ("missing column", missing, ["row 1", "missing column(s) 'left_eye_center_x'"]),
        ("extra column", extra, ["extra.csv, row 1", "unexpected column(s) 'comment'"]),
        ("renamed column", renamed,
         ["missing column(s) 'nose_tip_y'", "unexpected column(s) 'nose_y'"]),
        ("duplicated column", dup, ["dup.csv, row 1", "duplicated column(s) 'nose_tip_x'"]),
        ("too many fields", fields, ["fields.csv, row 4", "32 fields, expected 31"]),
        ("blank row", blank, ["blank.csv, row 4", "blank row"]),
        ("non-UTF-8", utf8, ["utf8.csv, row 3", "not valid UTF-8", "0xff", "byte offset"]),
        ("9215 values", _edit(t, 3, "Image", " ".join(["1"] * 9215), "short.csv"),
         ["short.csv, row 3, column Image", "Image has 9215 values, expected 9216"]),
        ("empty image", _edit(t, 4, "Image", "", "noimg.csv"),
         ["noimg.csv, row 4, column Image", "Image is empty"]),
        ("non-integer pixel", _edit_pixel(t, 5, 17, "1.5", "frac.csv"),
         [img.format(5), "Image value 17 ('1.5') is not an integer 0..255"]),
        ("pixel 256", _edit_pixel(t, 2, 9216, "256", "big.csv"),
         [img.format(2), "Image value 9216 is 256, outside 0..255"]),
        ("pixel -1", _edit_pixel(t, 7, 1, "-1", "minus.csv"),
         [img.format(7), "Image value 1 is -1, outside 0..255"]),
        ("non-numeric keypoint", _edit(t, 6, "nose_tip_x", "abc", "kp.csv"),
         ["kp.csv, row 6, column nose_tip_x", "keypoint 'abc' is not a number"]),
        ("keypoint > 96", _edit(t, 3, "left_eye_center_y", "96.5", "far.csv"),
         ["far.csv, row 3, column left_eye_center_y", "96.5 lies outside the image [0, 96]"]),
        ("keypoint < 0", _edit(t, 2, "mouth_left_corner_x", "-0.25", "neg.csv"),
         ["neg.csv, row 2, column mouth_left_corner_x", "-0.25 lies outside the image"]),
    ]


def test_each_malformed_training_file_raises_a_located_data_error(tmp_path, training_csv):
    cases = _malformed_training(tmp_path, training_csv)
    for case, path, expected in cases:
        msg = _error(kaggle.load_training, path)
        for part in expected:
            assert part in msg, f"{case}: {part!r} not in {msg!r}"
        assert "\n" not in msg, case


def test_first_offending_row_is_named_when_several_rows_are_bad(training_csv):
    path = _edit_pixel(training_csv, 6, 3, "300", "two_bad.csv")
    path = _edit_pixel(path, 4, 9, "x", "two_bad.csv")
    assert "row 4, column Image: Image value 9 ('x') is not an integer" in _error(
        kaggle.load_training, path
    )


def test_bad_zips(tmp_path, training_csv):
    payload = training_csv.read_bytes()
    good = _zip(tmp_path / "training.zip", {"training.csv": payload}).read_bytes()
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good[: len(good) // 2])
    corrupt = tmp_path / "corrupt.zip"  # intact directory, damaged compressed data
    bad = bytearray(good)
    bad[100:140] = bytes(40)
    corrupt.write_bytes(bytes(bad))
    no_csv = _zip(tmp_path / "no_csv.zip", {"readme.txt": "hello"})
    several = _zip(tmp_path / "several.zip", {"a.csv": payload, "b.csv": payload})
    bad_csv = _edit_pixel(training_csv, 3, 2, "999", "b.csv")
    inner_error = _zip(tmp_path / "inner.zip", {"training.csv": bad_csv.read_bytes()})
    assert "truncated.zip: not a readable zip archive (truncated or corrupt?)" in _error(
        kaggle.load_training, truncated
    )
    assert "corrupt.zip: not a readable zip archive" in _error(kaggle.load_training, corrupt)
    assert "no_csv.zip: zip holds no CSV file (expected training.csv)" in _error(
        kaggle.load_training, no_csv
    )
    assert "several.zip: zip holds no training.csv but several other CSVs: 'a.csv', 'b.csv'" in (
        _error(kaggle.load_training, several)
    )
    assert "inner.zip:training.csv, row 3, column Image: Image value 2 is 999" in _error(
        kaggle.load_training, inner_error
    )


def test_malformed_test_csv(test_csv):
    dup = _edit(test_csv, 4, "ImageId", "2", "dup_test.csv")
    assert "dup_test.csv, row 4, column ImageId: ImageId 2 appears again (first at row 3)" in (
        _error(submission.load_test, dup)
    )
    frac = _edit(test_csv, 3, "ImageId", "2.5", "frac_test.csv")
    assert "frac_test.csv, row 3, column ImageId: ImageId '2.5' is not an integer" in _error(
        submission.load_test, frac
    )
    short = _edit(test_csv, 2, "Image", "0 1 2", "short_test.csv")
    assert "row 2, column Image: Image has 3 values, expected 9216" in _error(submission.load_test, short)


def test_malformed_lookup(lookup_csv, tmp_path):
    text = lookup_csv.read_text()
    unknown = tmp_path / "unknown.csv"
    unknown.write_text(text.replace("nose_tip_y", "nose_tip_z"))
    assert "unknown.csv, row 3, column FeatureName: unknown FeatureName 'nose_tip_z'" in _error(
        submission.load_lookup, unknown
    )
    no_feature = tmp_path / "no_feature.csv"
    no_feature.write_text(text.replace("FeatureName", "Feature"))
    msg = _error(submission.load_lookup, no_feature)
    assert "no_feature.csv, row 1: missing column(s) 'FeatureName'" in msg
    bad_id = tmp_path / "bad_id.csv"
    bad_id.write_text(text.replace("\n4,3,", "\n4,three,"))
    assert "bad_id.csv, row 5, column ImageId: ImageId 'three' is not an integer" in _error(
        submission.load_lookup, bad_id
    )


def test_cli_wrapper_exits_2_with_one_line_and_no_traceback(tmp_path, training_csv):
    bad = _edit(training_csv, 3, "nose_tip_x", "abc", "bad.csv")
    script = textwrap.dedent(
        f"""
        from fkd_jax.data.kaggle import load_training
        from fkd_jax.errors import exit_on_user_error

        @exit_on_user_error
        def main():
            load_training({str(bad)!r})

        main()
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0] == f"error: {bad}, row 3, column nose_tip_x: keypoint 'abc' is not a number"


# --- label policies ------------------------------------------------------------------------------


def test_label_policies_keep_all_rows_or_complete_rows(training_csv, kaggle_rows):
    d = kaggle.load_training(training_csv)
    assert preparation.apply_label_policy(d, "mask") is d
    dropped = preparation.apply_label_policy(d, "drop")
    complete = np.flatnonzero(kaggle_rows.mask.all(axis=1))
    assert len(complete) == 3 and dropped.row_ids.tolist() == complete.tolist()
    assert dropped.mask.all()
    np.testing.assert_array_equal(dropped.images, d.images[complete])
    sparse = column_indices(SPARSE_SET)
    assert d.mask[:, sparse].sum() == len(d) * len(sparse) - 2  # row 5 lacks the bottom lip
    with pytest.raises(UserError, match="unknown label_policy 'keep'"):
        preparation.apply_label_policy(d, "keep")
    with pytest.raises(UserError, match="keeps no rows"):
        preparation.apply_label_policy(d.subset(np.array([2, 3])), "drop")


# --- splits ------------------------------------------------------------------------------------


def test_split_is_seeded_disjoint_sorted_and_sized():
    train, val = preparation.split_indices(1000, 0.2, seed=3)
    again = preparation.split_indices(1000, 0.2, seed=3)
    other = preparation.split_indices(1000, 0.2, seed=4)
    np.testing.assert_array_equal(train, again[0])
    np.testing.assert_array_equal(val, again[1])
    assert not np.array_equal(val, other[1])
    assert len(val) == 200 and len(train) == 800
    assert np.intersect1d(train, val).size == 0
    np.testing.assert_array_equal(np.union1d(train, val), np.arange(1000))
    assert (np.diff(train) > 0).all() and (np.diff(val) > 0).all()
    tiny = preparation.split_indices(2, 0.01, seed=0)
    assert len(tiny[0]) == 1 and len(tiny[1]) == 1
    with pytest.raises(UserError, match="cannot split 1 row"):
        preparation.split_indices(1, 0.2, seed=0)
    with pytest.raises(UserError, match="val_fraction"):
        preparation.split_indices(10, 1.0, seed=0)


def test_grouped_split_keeps_each_group_on_one_side():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 60, size=900)
    train, val = preparation.split_indices(900, 0.25, seed=1, groups=groups)
    assert np.intersect1d(groups[train], groups[val]).size == 0
    assert abs(len(val) / 900 - 0.25) < 0.03
    np.testing.assert_array_equal(np.union1d(train, val), np.arange(900))
    same = preparation.split_indices(900, 0.25, seed=1, groups=groups)
    np.testing.assert_array_equal(val, same[1])
    with pytest.raises(UserError, match="at least 2 distinct groups"):
        preparation.split_indices(5, 0.2, seed=0, groups=np.zeros(5, int))


def test_load_groups(tmp_path):
    ok = tmp_path / "person_ids.txt"
    ok.write_text("3\n3\n7\n12\n\n")
    assert preparation.load_groups(ok, 4).tolist() == [3, 3, 7, 12]
    assert "person_ids.txt: has 4 group ids but the training data has 5 rows" in _error(
        preparation.load_groups, ok, 5
    )
    bad = tmp_path / "bad_ids.txt"
    bad.write_text("3\nthree\n7\n")
    assert "bad_ids.txt, row 2: value 'three' is not an integer" in _error(preparation.load_groups, bad, 3)


def test_split_round_trip_and_corruption(tmp_path):
    path = tmp_path / "work" / "split.json"
    preparation.save_split(path, np.array([4, 0, 2]), np.array([1, 3]))
    train, val = preparation.load_split(path)
    assert train.dtype == np.int64 and train.tolist() == [4, 0, 2] and val.tolist() == [1, 3]
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]  # no temp file left

    path.write_text(path.read_text()[:-5])  # cut short, as by a crash
    msg = _error(preparation.load_split, path)
    assert f"{path}, row 1: not valid JSON (corrupted split file?)" in msg
    path.write_text(json.dumps({"train_row_ids": [1, 2], "val_row_ids": [2]}))
    assert "row id 2 is in both" in _error(preparation.load_split, path)
    path.write_text(json.dumps({"train_row_ids": [1, "x"], "val_row_ids": [2]}))
    assert "train_row_ids must be a list of non-negative integers" in _error(preparation.load_split, path)
    assert "file not found" in _error(preparation.load_split, tmp_path / "absent.json")


def test_indices_for_rows_maps_saved_row_ids_back(training_csv):
    d = preparation.apply_label_policy(kaggle.load_training(training_csv), "drop")  # rows 0, 1, 4
    np.testing.assert_array_equal(preparation.indices_for_rows(d, [4, 0], "split.json"), [2, 0])
    assert "split.json: row id 3 (CSV row 5) is not in the loaded data" in _error(
        preparation.indices_for_rows, d, [0, 3], "split.json"
    )
