"""Kaggle Facial Keypoints data: load and validate training.csv, test.csv, IdLookupTable.csv.

Every problem a user can fix in a data file is raised as `DataError(path, message, row=...,
column=...)` (a `UserError`: the CLIs print it as one line and exit 2), never as a traceback.

Row convention: rows are numbered 1-based as a spreadsheet shows them. The header is row 1,
so the first data row is row 2 and data row i (0-based, as in `KeypointData.row_ids`) is
row i + 2. Files without a header (`load_groups`) count their lines from 1. Rows equal lines
of the file because the Kaggle files hold no quoted multi-line fields.

Accepted inputs: the plain `.csv` or a `.zip` holding it, as Kaggle ships them (`training.zip`
holds `training.csv`). Inside a zip we take the member named as expected (in any folder),
else a nested `<stem>.zip` (Kaggle's whole-competition download), else the only CSV there is.

Parsing is vectorised so a 7049-row, ~240 MB training.csv loads in seconds: pandas' C parser
splits the fields, and the `Image` strings are checked with bytes.translate and parsed with
`np.fromstring` in chunks of rows. Only when a chunk fails a check do we walk its rows one by
one to name the first bad row and say exactly what is wrong with it.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from fkd_jax.errors import DataError, UserError
from fkd_jax.geometry.keypoints import (
    COLUMNS,
    IMAGE_SIZE,
    KAGGLE15,
    KAGGLE15_SQUARE,
    SQUARE_NAMES,
    KeypointSet,
    square_points_px,
)

IMAGE_COLUMN = "Image"
NUM_PIXELS = IMAGE_SIZE * IMAGE_SIZE  # 9216 values per Image
TRAINING_COLUMNS: tuple[str, ...] = (*COLUMNS, IMAGE_COLUMN)

_FIRST_DATA_ROW = 2  # spreadsheet row of the first data row (the header is row 1)
_MISSING_TEXT = frozenset({"", "nan", "na"})  # keypoint cells read as "not labelled"
_IMAGE_CHUNK_ROWS = 256  # rows of Image text parsed per np.fromstring call
_DIGITS = b"0123456789"
_TO_D = bytes.maketrans(_DIGITS, b"d" * 10)


@dataclasses.dataclass(frozen=True, eq=False)
class KeypointData:
    """Images with their keypoints; all arrays share the leading axis N.

    What the keypoints are (K names, flip partners, groups) travels with them as
    `keypoint_set`, and the image size is the images' own, so models, augmentation and
    metrics take both from the data rather than from constants.
    """

    images: np.ndarray  # float32 (N, S, S, 1), NHWC, pixel / 255 in [0, 1]; S = 96 for Kaggle
    keypoints: np.ndarray  # float32 (N, 2K) pixels, (x, y) interleaved; 0.0 where missing
    mask: np.ndarray  # bool (N, 2K): True where the coordinate is labelled
    row_ids: np.ndarray  # int64 (N,): 0-based data row in the source CSV (row_id + 2 = row)
    keypoint_set: KeypointSet = KAGGLE15

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def __post_init__(self):
        n, s, k2 = len(self.row_ids), self.images.shape[1], 2 * self.keypoint_set.num_keypoints
        shapes = {
            "images": (self.images.shape, (n, s, s, 1)),
            "keypoints": (self.keypoints.shape, (n, k2)),
            "mask": (self.mask.shape, (n, k2)),
        }
        for name, (got, want) in shapes.items():
            if got != want:
                raise ValueError(f"KeypointData.{name} has shape {got}, expected {want}")

    def subset(self, idx) -> "KeypointData":
        """The rows `idx` (indices or a boolean mask into this data), in that order."""
        return dataclasses.replace(self, images=self.images[idx], keypoints=self.keypoints[idx],
                                   mask=self.mask[idx], row_ids=self.row_ids[idx])

    def __len__(self) -> int:
        return len(self.row_ids)


# ---------------------------------------------------------------------------------------------
# Public loaders


def load_training(path, keypoint_set: KeypointSet = KAGGLE15,
                  keypoints_path=None, margin_px: float = 0.0) -> KeypointData:
    """Kaggle training.csv (or a .zip holding it): 30 keypoint columns + Image, validated.

    With `keypoints_path`, the keypoints come from that CSV instead (header: the set's columns,
    e.g. `p0_x, p0_y, ..., p67_y` for iBUG's 68), row for row with the training file, in the
    same image pixels; a coordinate more than `margin_px` outside the image counts as not
    labelled (as when augmentation moves a keypoint out of the frame). iBUG's chin lies below
    a Kaggle-framed crop in most faces: a model whose heatmaps reach `margin_px` past the crop
    (heatmap_unet's `margin`) learns it from those labels.
    """
    if keypoint_set == KAGGLE15_SQUARE:
        return with_square_points(load_training(path, KAGGLE15, keypoints_path))
    table, source = _read_table(path, "training.csv", TRAINING_COLUMNS)
    images = _parse_images(table[IMAGE_COLUMN], source)
    row_ids = np.arange(len(table), dtype=np.int64)
    if keypoints_path is None:
        if keypoint_set != KAGGLE15:
            raise UserError(f"{source}: holds Kaggle's 15 keypoints; the {keypoint_set.name} "
                            "set needs a keypoints file (--config.data.keypoints_path)")
        keypoints, mask = _parse_keypoints(table, source)
        return KeypointData(images, keypoints, mask, row_ids)
    del table
    kp_table, kp_source = _read_table(keypoints_path, Path(keypoints_path).name,
                                      keypoint_set.columns)
    if len(kp_table) != len(images):
        raise DataError(kp_source, f"has {len(kp_table)} rows but {source} has {len(images)} "
                        "(expected the keypoints of every training row, in order)")
    keypoints, mask = _parse_keypoints(kp_table, kp_source, keypoint_set.columns,
                                       outside_is_missing=True, margin_px=margin_px)
    return KeypointData(images, keypoints, mask, row_ids, keypoint_set)


def with_square_points(data: KeypointData) -> KeypointData:
    """Kaggle rows with the crop's four square points appended (`KAGGLE15_SQUARE`), labelled in
    every row: each crop is its own training square, so they sit at fixed pixels."""
    square = np.broadcast_to(square_points_px(data.image_size).astype(np.float32),
                             (len(data), len(SQUARE_NAMES) * 2))
    return dataclasses.replace(
        data, keypoints=np.concatenate([data.keypoints, square], axis=1),
        mask=np.concatenate([data.mask, np.ones(square.shape, bool)], axis=1),
        keypoint_set=KAGGLE15_SQUARE)


def _read_bytes(path) -> bytes:
    """The file's bytes, or DataError for a missing path, a directory or an empty file."""
    p = Path(path)
    if not p.exists():
        raise DataError(path, "file not found")
    if p.is_dir():
        raise DataError(path, "is a directory, expected a file")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise DataError(path, f"cannot read file: {e.strerror or e}") from None
    if not raw:
        raise DataError(path, "file is empty (0 bytes)")
    return raw


def _is_zip(path, raw: bytes) -> bool:
    return str(path).lower().endswith(".zip") or raw[:4] == b"PK\x03\x04"


def _table_bytes(path, expected: str) -> tuple[bytes, str]:
    """(CSV bytes, how to name the source in errors) for a CSV or a zip holding it."""
    raw = _read_bytes(path)
    if not _is_zip(path, raw):
        return raw, str(path)
    return _from_zip(raw, str(path), expected, nested_ok=True)


def _from_zip(raw: bytes, source: str, expected: str, nested_ok: bool) -> tuple[bytes, str]:
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            members = [
                m
                for m in zf.namelist()
                if not m.endswith("/") and not m.startswith("__MACOSX/")
            ]
            name = _pick_member(members, expected, source, nested_ok)
            data = zf.read(name)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError,
            RuntimeError) as e:  # RuntimeError: an encrypted member
        why = f"not a readable zip archive (truncated or corrupt?): {e}"
        raise DataError(source, why) from None
    inner = f"{source}:{name}"
    if name.lower().endswith(".zip"):
        return _from_zip(data, inner, expected, nested_ok=False)
    if not data:
        raise DataError(inner, "file is empty (0 bytes)")
    return data, inner


def _pick_member(members: list[str], expected: str, source: str, nested_ok: bool) -> str:
    base = {m: m.rsplit("/", 1)[-1] for m in members}
    for wanted in [expected] + ([Path(expected).stem + ".zip"] if nested_ok else []):
        hits = [m for m in members if base[m].lower() == wanted.lower()]
        if len(hits) > 1:
            raise DataError(source, f"zip holds several files named {wanted}: {', '.join(hits)}")
        if hits:
            return hits[0]
    csvs = [m for m in members if m.lower().endswith(".csv")]
    if len(csvs) == 1:
        return csvs[0]
    if not csvs:
        raise DataError(source, f"zip holds no CSV file (expected {expected})")
    raise DataError(source, f"zip holds no {expected} but several other CSVs: {_names(csvs)}")


def _decode(raw: bytes, source) -> str:
    """Text of UTF-8 bytes (a BOM is dropped); DataError naming the row of a bad byte."""
    if raw.isascii():
        return raw.decode("ascii")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(
            source,
            f"not valid UTF-8 text: byte 0x{raw[e.start]:02x} at byte offset {e.start}",
            row=raw.count(b"\n", 0, e.start) + 1,
        ) from None


def _read_table(
    path, expected: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> tuple[pd.DataFrame, str]:
    """All cells as str (object columns, '' where empty), header checked, blank rows handled."""
    raw, source = _table_bytes(path, expected)
    if not raw.isascii():
        _decode(raw, source)  # raises on bad UTF-8, naming the row
    end = raw.find(b"\n")
    first_line = raw[: end if end >= 0 else len(raw)].decode("utf-8-sig").rstrip("\r")
    header = next(csv.reader([first_line]), [])
    if not any(h.strip() for h in header):
        raise DataError(source, "has no header line (the first line is blank)", row=1)
    _check_columns(header, required, optional, source)
    try:
        table = pd.read_csv(
            io.BytesIO(raw),
            encoding="utf-8-sig",
            dtype=object,
            na_filter=False,  # keep '' as '': we decide what counts as missing
            skip_blank_lines=False,  # so data row i stays spreadsheet row i + 2
            low_memory=False,
        )
    except pd.errors.ParserError as e:
        m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(e))
        if m:
            raise DataError(
                source, f"has {m[3]} fields, expected {m[1]}", row=int(m[2])
            ) from None
        raise DataError(source, f"not a readable CSV file: {e}") from None
    del raw
    blank = (table == "").all(axis=1).to_numpy()
    n = len(table) - (np.argmin(blank[::-1]) if not blank.all() else len(table))
    table = table.iloc[:n]  # trailing blank lines are harmless
    if n == 0:
        raise DataError(source, "has no data rows (only a header)")
    if blank[:n].any():
        raise DataError(source, "blank row", row=int(np.argmax(blank[:n])) + _FIRST_DATA_ROW)
    return table, source


def _check_columns(header: list[str], required, optional, source: str) -> None:
    twice = [h for h, k in collections.Counter(header).items() if k > 1]
    seen = set(header)
    if twice:
        raise DataError(source, f"duplicated column(s) {_names(twice)} in the header", row=1)
    missing = [c for c in required if c not in seen]
    extra = [h for h in header if h not in required and h not in optional]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing column(s) {_names(missing)}")
        if extra:
            parts.append(f"unexpected column(s) {_names(extra)}")
        raise DataError(source, "; ".join(parts), row=1)


def _names(names, most: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


# ---------------------------------------------------------------------------------------------
# Parsing cells


def _parse_keypoints(table: pd.DataFrame, source: str, columns: tuple[str, ...] = COLUMNS,
                     outside_is_missing: bool = False, margin_px: float = 0.0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(keypoints float32 (N, 2K) pixels with 0.0 where missing, mask bool (N, 2K)).

    A value outside the image [0, 96] is an error, or with `outside_is_missing` makes its
    keypoint (both coordinates) unlabelled when it lies outside [-margin_px, 96 + margin_px].
    """
    text = table[list(columns)]
    stripped = text.apply(lambda c: c.str.strip())
    missing = stripped.apply(lambda c: c.str.lower().isin(_MISSING_TEXT)).to_numpy()
    values = stripped.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    not_number = ~missing & np.isnan(values)
    outside = ~missing & ~not_number & ~((values >= 0) & (values <= IMAGE_SIZE))
    if outside_is_missing:
        beyond = outside & ~((values >= -margin_px) & (values <= IMAGE_SIZE + margin_px))
        missing = missing | np.repeat(beyond.reshape(len(values), -1, 2).any(-1), 2, axis=1)
        outside = np.zeros_like(outside)
    bad = not_number | outside
    if bad.any():
        i, j = np.argwhere(bad)[0]
        cell = text.iat[i, j]
        what = (
            f"keypoint {cell!r} is not a number"
            if not_number[i, j]
            else f"keypoint {cell.strip()} lies outside the image [0, {IMAGE_SIZE}] pixels"
        )
        raise DataError(source, what, row=int(i) + _FIRST_DATA_ROW, column=columns[j])
    keypoints = np.where(missing, 0.0, values).astype(np.float32)
    return keypoints, ~missing


def _parse_images(column: pd.Series, source: str) -> np.ndarray:
    """Image strings (9216 ints 0..255) -> float32 (N, 96, 96, 1) in [0, 1]."""
    rows = column.tolist()
    out = np.empty((len(rows), NUM_PIXELS), dtype=np.float32)
    for start in range(0, len(rows), _IMAGE_CHUNK_ROWS):
        chunk = rows[start : start + _IMAGE_CHUNK_ROWS]
        pixels = _pixels_or_none(chunk)
        if pixels is None:  # find and describe the first bad row of the chunk
            for k, text in enumerate(chunk):
                if _pixels_or_none([text]) is None:
                    raise DataError(
                        source,
                        _image_problem(text),
                        row=start + k + _FIRST_DATA_ROW,
                        column=IMAGE_COLUMN,
                    )
            raise AssertionError("a chunk failed the image checks but none of its rows did")
        np.divide(pixels, np.float32(255), out=out[start : start + len(chunk)], dtype=np.float32)
    return out.reshape(len(rows), IMAGE_SIZE, IMAGE_SIZE, 1)


def _pixels_or_none(rows: list[str]) -> np.ndarray | None:
    """int16 (len(rows), 9216) if every row is 9216 space-separated ints 0..255, else None."""
    for text in rows:
        if _count_values(text) != NUM_PIXELS:
            return None
    try:
        joined = " ".join(rows).encode("ascii")
    except UnicodeEncodeError:
        return None
    if joined.translate(None, _DIGITS + b" ") or b"dddd" in joined.translate(_TO_D):
        return None  # a character other than digits and spaces, or a value of 4+ digits
    pixels = np.fromstring(joined, dtype=np.int16, sep=" ")  # only digits and spaces here
    if pixels.size != len(rows) * NUM_PIXELS or pixels.max() > 255:
        return None
    return pixels.reshape(len(rows), NUM_PIXELS)


def _count_values(text: str) -> int:
    """Number of space-separated values in one Image cell.

    The fast answer for a well-formed cell, spaces + 1, is only an upper bound (a double
    space makes it too high); `_pixels_or_none` confirms it by the total np.fromstring parses.
    """
    n = text.count(" ") + 1
    if n == NUM_PIXELS and text[:1] != " " and text[-1:] != " ":
        return n
    return sum(1 for t in text.split(" ") if t)


def _image_problem(text: str) -> str:
    """Plain words for what is wrong with one Image cell."""
    tokens = [t for t in text.split(" ") if t]
    if not tokens:
        return "Image is empty or missing"
    for k, tok in enumerate(tokens, start=1):
        if re.fullmatch(r"[0-9]+", tok):
            if int(tok) > 255:
                return f"Image value {k} is {tok}, outside 0..255"
            if len(tok) > 3:
                return f"Image value {k} ({tok!r}) has more than 3 digits"
        elif re.fullmatch(r"-[0-9]+", tok):
            return f"Image value {k} is {tok}, outside 0..255"
        else:
            return f"Image value {k} ({tok!r}) is not an integer 0..255"
    if len(tokens) != NUM_PIXELS:
        return (
            f"Image has {len(tokens)} values, expected {NUM_PIXELS} "
            f"({IMAGE_SIZE}x{IMAGE_SIZE} pixels)"
        )
    return "Image could not be parsed"


def _parse_integers(values: pd.Series, source, column: str | None, first_row: int = 2):
    """int64 array of integer cells; DataError at the first cell that is not an integer."""
    stripped = values.str.strip()
    ok = stripped.str.fullmatch(r"[+-]?[0-9]{1,18}").to_numpy(dtype=bool)
    if not ok.all():
        i = int(np.argmin(ok))
        what = column or "value"
        raise DataError(
            source,
            f"{what} {values.iloc[i]!r} is not an integer",
            row=i + first_row,
            column=column,
        )
    return stripped.astype(np.int64).to_numpy()


def _check_unique(ids: np.ndarray, source: str, column: str) -> None:
    dup = pd.Series(ids).duplicated().to_numpy()
    if dup.any():
        i = int(np.argmax(dup))
        earlier = int(np.argmax(ids == ids[i]))
        raise DataError(
            source,
            f"{column} {ids[i]} appears again (first at row {earlier + _FIRST_DATA_ROW})",
            row=i + _FIRST_DATA_ROW,
            column=column,
        )
