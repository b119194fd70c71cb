"""Tabular data for training and evaluation: CSV, JSONL, NumPy ``.npz`` and the NAB corpus.

Loading is strict and bounded: every feature value must be a finite number, every error names the
file, row (1-based, as an editor shows it) and column, ``max_rows`` caps how much is read, and
``.npz`` archives are opened with ``allow_pickle=False`` so a data file can never run code.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from streamer.errors import DataError
from streamer.nab import window_rows

__all__ = ["NabSeries", "Table", "load_nab_series", "load_table", "nab_files"]


@dataclass
class Table:
    """A feature matrix with optional per-row labels, entity keys and timestamps."""

    X: np.ndarray  # (N, F) float32
    features: list[str]
    labels: np.ndarray | None = None  # (N,) int8, 1 anomalous
    entities: np.ndarray | None = None  # (N,) str
    timestamps: np.ndarray | None = None  # (N,) datetime64[ms], or the numbers as given

    def __len__(self) -> int:
        return len(self.X)


@dataclass
class NabSeries:
    """One NAB data file with its labelled anomaly windows."""

    name: str  # relative path, the key of the windows JSON, e.g. "realKnownCause/nyc_taxi.csv"
    timestamps: np.ndarray  # (N,) datetime64[s]
    values: np.ndarray  # (N,) float32
    windows: list[tuple[np.datetime64, np.datetime64]]
    labels: np.ndarray  # (N,) int8, 1 inside any window

    def window_rows(self) -> list[tuple[int, int]]:
        """Windows as inclusive (first_row, last_row) pairs, the form :func:`nab_score` takes."""
        return window_rows(self.timestamps, self.windows)


# ------------------------------------------------------------------------------------ load_table


def load_table(
    path: str | Path,
    features: Sequence[str] | None = None,
    label_column: str | None = None,
    entity_column: str | None = None,
    time_column: str | None = None,
    split: str = "train",
    max_rows: int | None = None,
    parse_times: bool = True,
) -> Table:
    """Read a CSV (header row), JSONL (one object per line) or ``.npz`` file into a :class:`Table`.

    CSV/JSONL: ``features`` defaults to every column at least half of whose values among the first
    1,000 rows are numbers, except the label, entity and time columns. NPZ: arrays ``train``, optional ``test`` and
    ``label`` (labels of ``test``); ``split`` picks ``train`` or ``test``; features are named
    ``f0..f{F-1}`` unless given. ``parse_times=False``: the time column is only kept out of the
    features, its values not read (``streamer evaluate`` has no use for them).
    """
    path = Path(path)
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        if entity_column or time_column or label_column:
            raise DataError(f"{path}: .npz files have no named columns (arrays train/test/label)")
        return _load_npz(path, features, split, max_rows)
    if split != "train":
        raise DataError(f"{path}: split={split!r} applies to .npz files only")
    if suffix == ".csv":
        header, rows = _read_csv(path, max_rows)
    elif suffix in (".jsonl", ".ndjson"):
        header, rows = _read_jsonl(path, max_rows)
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r} (use .csv, .jsonl or .npz)")
    return _to_table(
        path, header, rows, features, label_column, entity_column, time_column, parse_times
    )


def _read_csv(path: Path, max_rows: int | None) -> tuple[list[str], list[dict[str, Any]]]:
    try:
        return _read_csv_text(path, max_rows)
    except UnicodeDecodeError as exc:  # decoded a block at a time: find the line
        raise DataError(f"{path} line {_first_bad_line(path)}: {exc}") from exc


def _read_csv_text(path: Path, max_rows: int | None) -> tuple[list[str], list[dict[str, Any]]]:
    with path.open(newline="", encoding="utf-8-sig") as fh:  # -sig: a byte-order mark is dropped
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}: empty file, expected a header row") from None
        except csv.Error as exc:
            raise DataError(f"{path} line 1: {exc}") from exc
        header = [h.strip() for h in header]
        if len(set(header)) != len(header):
            raise DataError(f"{path}: duplicate column names in header {header}")
        rows = []
        try:
            for line_no, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataError(
                        f"{path} line {line_no}: {len(row)} fields, header has {len(header)}"
                    )
                rows.append({"__line__": line_no, **dict(zip(header, row, strict=True))})
                if max_rows is not None and len(rows) >= max_rows:
                    break
        except csv.Error as exc:
            raise DataError(f"{path}: {exc}") from exc
    return header, rows


def _first_bad_line(path: Path) -> int:
    """The number of the first line of ``path`` that is not UTF-8."""
    with path.open("rb") as fh:
        for line_no, line in enumerate(fh, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return line_no
    return 1


def _read_jsonl(path: Path, max_rows: int | None) -> tuple[list[str], list[dict[str, Any]]]:
    header: list[str] = []
    rows = []
    with path.open("rb") as fh:
        for line_no, line in enumerate(fh, start=1):
            if line_no == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")  # a byte-order mark
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise DataError(f"{path} line {line_no}: invalid JSON ({exc})") from exc
            if not isinstance(obj, dict):
                raise DataError(
                    f"{path} line {line_no}: expected a JSON object, got {type(obj).__name__}"
                )
            if not header:
                header = list(obj)
            rows.append({"__line__": line_no, **obj})
            if max_rows is not None and len(rows) >= max_rows:
                break
    return header, rows


def number(value: Any) -> float | None:
    """The value as a float if it is a number (CSV text included), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


# Rows looked at to tell the numeric columns: one blank or "NA" in the first row must not drop one.
_SAMPLE_ROWS = 1_000


def _numeric_column(rows: list[dict[str, Any]], column: str) -> bool:
    """Whether at least half the column's values among the first rows are numbers (the rest then fail,
    naming their line, when the table is built; a column mostly blank is no feature)."""
    values = [row.get(column) for row in rows[:_SAMPLE_ROWS]]
    numbers = sum(number(v) is not None for v in values)
    return numbers > 0 and 2 * numbers >= len(values)


def _to_table(
    path: Path,
    header: list[str],
    rows: list[dict[str, Any]],
    features: Sequence[str] | None,
    label_column: str | None,
    entity_column: str | None,
    time_column: str | None,
    parse_times: bool = True,
) -> Table:
    if not rows:
        raise DataError(f"{path}: no data rows")
    for role, col in (("label", label_column), ("entity", entity_column), ("time", time_column)):
        if col is not None and col not in header:
            raise DataError(f"{path}: {role} column {col!r} not found; columns: {header}")
    if features is None:
        reserved = {label_column, entity_column, time_column}
        features = [c for c in header if c not in reserved and _numeric_column(rows, c)]
        if not features:
            raise DataError(f"{path}: no numeric feature columns in {header}")
    else:
        features = list(features)
        missing = [c for c in features if c not in header]
        if missing:
            raise DataError(f"{path}: feature column(s) {missing} not found; columns: {header}")
        # The label as a feature would hand the test labels to the model (F1 1.000 for pca). An
        # entity column may be a feature too, as the detector's key field may.
        roles = {label_column: "label", time_column: "time"}
        clash = [f"{c!r} is the {roles[c]} column" for c in features if c in roles]
        if clash:
            raise DataError(f"{path}: {'; '.join(clash)}, so it cannot be a feature")
    x = np.empty((len(rows), len(features)), dtype=np.float32)
    labels = np.empty(len(rows), dtype=np.int8) if label_column else None
    entities: list[str] = []
    times: list[Any] = []
    for i, row in enumerate(rows):
        line = row["__line__"]
        for j, col in enumerate(features):
            if col not in row:
                raise DataError(f"{path} line {line}: column {col!r} missing")
            v = number(row[col])
            if v is None or not math.isfinite(v):
                raise DataError(
                    f"{path} line {line}, column {col!r}: {row[col]!r} is not a finite number"
                )
            x[i, j] = v
        if label_column is not None and labels is not None:
            v = number(row.get(label_column))
            if v not in (0.0, 1.0):
                raise DataError(
                    f"{path} line {line}, column {label_column!r}: label {row.get(label_column)!r} is not 0 or 1"
                )
            labels[i] = int(v)  # v is 0.0 or 1.0 here
        if entity_column is not None:
            if row.get(entity_column) in (None, ""):
                raise DataError(f"{path} line {line}, column {entity_column!r}: empty entity")
            entities.append(str(row[entity_column]))
        if time_column is not None and parse_times:
            times.append(row.get(time_column))
    if not np.isfinite(x).all():  # finite float64 values can overflow float32
        bad = np.argwhere(~np.isfinite(x))[0]
        raise DataError(
            f"{path} line {rows[bad[0]]['__line__']}, column {features[bad[1]]!r}: overflows float32"
        )
    return Table(
        X=x,
        features=list(features),
        labels=labels,
        entities=np.array(entities) if entity_column else None,
        timestamps=_timestamps(path, time_column, times, rows)
        if time_column and parse_times
        else None,
    )


def _timestamps(
    path: Path, column: str | None, values: list[Any], rows: list[dict[str, Any]]
) -> np.ndarray:
    """Numbers stay numbers (epoch or row time); strings are parsed as ISO-8601 to datetime64[ms]."""
    numbers = [number(v) for v in values]
    if all(n is not None for n in numbers):
        return np.array(numbers)
    out = np.empty(len(values), dtype="datetime64[ms]")
    for i, v in enumerate(values):
        try:
            out[i] = _datetime(v)
        except (ValueError, TypeError) as exc:
            raise DataError(
                f"{path} line {rows[i]['__line__']}, column {column!r}: {v!r} is not a timestamp"
            ) from exc
    return out


def _datetime(value: Any) -> np.datetime64:
    if not isinstance(value, str) or not value:
        raise ValueError("not a string")
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1]
    elif len(text) > 6 and text[-6] in "+-" and text[-3] == ":":
        # An offset: the time in UTC, as numpy reads a window's bounds with one (with a warning).
        utc = datetime.fromisoformat(text).astimezone(UTC).replace(tzinfo=None)
        return np.datetime64(utc.isoformat(), "ms")
    return np.datetime64(text, "ms")


def _load_npz(
    path: Path, features: Sequence[str] | None, split: str, max_rows: int | None
) -> Table:
    if split not in ("train", "test"):
        raise DataError(f"{path}: split must be 'train' or 'test', got {split!r}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: not a readable .npz archive ({exc})") from exc
    if not hasattr(archive, "files"):  # np.load read a single .npy array
        raise DataError(f"{path}: expected an .npz archive, found a single array")
    with archive:
        if split not in archive.files:
            raise DataError(f"{path}: array {split!r} not found; arrays: {archive.files}")
        try:
            x = archive[split]
            label = archive["label"] if split == "test" and "label" in archive.files else None
        except ValueError as exc:  # object arrays need pickle, which is refused
            raise DataError(f"{path}: array cannot be loaded without pickle ({exc})") from exc
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.dtype.kind not in "fiu":
        raise DataError(f"{path}: array {split!r} must be 2-D numeric, got {x.dtype} {x.shape}")
    if len(x) == 0:
        raise DataError(f"{path}: array {split!r} is empty")
    if max_rows is not None:
        x = x[:max_rows]
        label = label[:max_rows] if label is not None else None
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        row, col = np.argwhere(~np.isfinite(x))[0]
        raise DataError(f"{path}: array {split!r} row {row}, column {col}: non-finite value")
    names = list(features) if features is not None else [f"f{i}" for i in range(x.shape[1])]
    if len(names) != x.shape[1]:
        raise DataError(f"{path}: {len(names)} feature names for {x.shape[1]} columns")
    labels = None
    if label is not None:
        label = label.reshape(-1)
        if len(label) != len(x):
            raise DataError(f"{path}: 'label' has {len(label)} rows, {split!r} has {len(x)}")
        if not np.isin(label, (0, 1)).all():
            raise DataError(f"{path}: 'label' must hold only 0 and 1")
        labels = label.astype(np.int8)
    return Table(X=x, features=names, labels=labels)


# ------------------------------------------------------------------------------------------- NAB


def nab_files(data_dir: str | Path) -> list[Path]:
    """Every series CSV of a NAB checkout (``<data_dir>/data/<category>/<name>.csv``), sorted."""
    root = Path(data_dir) / "data"
    if not root.is_dir():
        raise DataError(f"{data_dir}: no NAB 'data' folder")
    files = sorted(p for p in root.glob("*/*.csv") if p.is_file())
    if not files:
        raise DataError(f"{root}: no series CSV files")
    return files


def _nab_time(value: str) -> np.datetime64:
    return _datetime(value.strip().replace(" ", "T")).astype("datetime64[s]")


def load_nab_series(
    csv_path: str | Path, windows_json: str | Path | Mapping[str, Any]
) -> NabSeries:
    """Load one NAB series and its windows (``labels/combined_windows.json`` or its parsed dict).

    The windows key is the file's path relative to the data folder (``category/name.csv``).
    Rows keep file order, as NAB does: a few NAB files repeat timestamps or step back an hour.
    """
    csv_path = Path(csv_path)
    name = f"{csv_path.parent.name}/{csv_path.name}"
    if isinstance(windows_json, Mapping):
        all_windows = windows_json
    else:
        try:
            all_windows = json.loads(Path(windows_json).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{windows_json}: cannot read windows JSON ({exc})") from exc
    if not isinstance(all_windows, Mapping):
        raise DataError(
            f"{windows_json}: expected a JSON object of windows per series, as NAB's "
            "combined_windows.json (labels per row go in a text file, one 0 or 1 a line)"
        )
    if name not in all_windows:
        # A series copied out of NAB's folder layout is found by its file name, when that is unique.
        matches = [k for k in all_windows if k.rsplit("/", 1)[-1] == csv_path.name]
        if len(matches) != 1:
            raise DataError(f"{windows_json}: no (unique) windows for {name!r}")
        name = matches[0]
    table = load_table(csv_path, features=["value"], time_column="timestamp")
    ts = table.timestamps
    if ts is None or ts.dtype.kind != "M":
        raise DataError(f"{csv_path}: column 'timestamp' must hold date-times")
    ts = ts.astype("datetime64[s]")
    windows: list[tuple[np.datetime64, np.datetime64]] = []
    labels = np.zeros(len(ts), dtype=np.int8)
    series_windows = all_windows[name]
    if not isinstance(series_windows, list):
        raise DataError(f"{windows_json}: the windows of {name!r} are not a list of pairs")
    for k, pair in enumerate(series_windows):
        try:
            if not (isinstance(pair, list) and all(isinstance(t, str) for t in pair)):
                raise TypeError("not a list of strings")
            start, end = (_nab_time(t) for t in pair)
        except (ValueError, TypeError) as exc:
            raise DataError(
                f"{windows_json}: window {k} of {name!r} is not a timestamp pair"
            ) from exc
        if end < start:
            raise DataError(f"{windows_json}: window {k} of {name!r} ends before it starts")
        windows.append((start, end))
        labels[(ts >= start) & (ts <= end)] = 1
    return NabSeries(name=name, timestamps=ts, values=table.X[:, 0], windows=windows, labels=labels)
