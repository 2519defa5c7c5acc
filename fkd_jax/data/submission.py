"""Kaggle's test side: test.csv, IdLookupTable.csv, and the submission CSV they ask for.

Problems a user can fix are `DataError`s naming the file, row and column (as in
fkd_jax.data.kaggle, whose readers these share).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fkd_jax.data.kaggle import (
    _FIRST_DATA_ROW,
    IMAGE_COLUMN,
    _check_unique,
    _parse_images,
    _parse_integers,
    _read_table,
)
from fkd_jax.errors import DataError
from fkd_jax.geometry.keypoints import COLUMNS, IMAGE_SIZE

TEST_COLUMNS: tuple[str, ...] = ("ImageId", IMAGE_COLUMN)
LOOKUP_COLUMNS: tuple[str, ...] = ("RowId", "ImageId", "FeatureName")
LOOKUP_OPTIONAL: tuple[str, ...] = ("Location",)  # empty in Kaggle's file; ignored


def load_test(path) -> tuple[np.ndarray, np.ndarray]:
    """Kaggle test.csv (or test.zip): (image_ids int64 (N,), images float32 (N, 96, 96, 1))."""
    table, source = _read_table(path, "test.csv", TEST_COLUMNS)
    image_ids = _parse_integers(table["ImageId"], source, "ImageId")
    _check_unique(image_ids, source, "ImageId")
    return image_ids, _parse_images(table[IMAGE_COLUMN], source)


def load_lookup(path) -> pd.DataFrame:
    """Kaggle IdLookupTable.csv -> DataFrame with RowId, ImageId (int64), FeatureName (str).

    The index is the 0-based data row, so a row's spreadsheet row is index + 2.
    """
    table, source = _read_table(path, "IdLookupTable.csv", LOOKUP_COLUMNS, LOOKUP_OPTIONAL)
    row_id = _parse_integers(table["RowId"], source, "RowId")
    _check_unique(row_id, source, "RowId")
    image_id = _parse_integers(table["ImageId"], source, "ImageId")
    feature = table["FeatureName"].str.strip()
    _fail_at_first(~feature.isin(COLUMNS).to_numpy(), source, "FeatureName", lambda i: (
        f"unknown FeatureName {feature.iloc[i]!r} (expected a Kaggle keypoint column such as "
        f"{COLUMNS[0]!r})"))
    lookup = pd.DataFrame({"RowId": row_id, "ImageId": image_id, "FeatureName": feature})
    _fail_at_first(lookup.duplicated(["ImageId", "FeatureName"]).to_numpy(), source, None,
                   lambda i: f"ImageId {image_id[i]} asks for {feature.iloc[i]} a second time")
    return lookup


def check_lookup_against_test(lookup_df: pd.DataFrame, image_ids, lookup_path) -> None:
    """Raise DataError if the lookup table names an ImageId that test.csv does not hold."""
    ids = lookup_df["ImageId"]
    absent = ~np.isin(ids.to_numpy(), np.asarray(image_ids))
    _fail_at_first(absent, lookup_path, "ImageId", lambda i: (
        f"ImageId {ids.iloc[i]} is not in the test images ({len(np.unique(ids[absent]))} "
        "unknown ImageIds in all)"))


def _fail_at_first(bad: np.ndarray, source, column: str | None, message) -> None:
    """DataError at the first True of `bad` (one per data row), worded by message(index)."""
    where = np.flatnonzero(bad)
    if len(where):
        i = int(where[0])
        raise DataError(source, message(i), row=i + _FIRST_DATA_ROW, column=column)


def submission_csv(lookup_df: pd.DataFrame, image_ids, predictions_px: np.ndarray) -> str:
    """Kaggle's submission (`RowId,Location`) for the lookup table's rows, from predictions
    (N, 30) in pixels for the test images `image_ids` (N,), clipped to the image [0, 96]."""
    predictions_px = np.clip(predictions_px, 0.0, IMAGE_SIZE)
    row_of = {int(i): r for r, i in enumerate(image_ids)}
    col_of = {c: j for j, c in enumerate(COLUMNS)}
    rows = [row_of[int(i)] for i in lookup_df["ImageId"]]
    cols = [col_of[f] for f in lookup_df["FeatureName"]]
    locations = predictions_px[rows, cols]
    return "RowId,Location\n" + "".join(
        f"{int(r)},{v:.4f}\n" for r, v in zip(lookup_df["RowId"], locations))
