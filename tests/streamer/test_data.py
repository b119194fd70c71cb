"""Table loaders (CSV, JSONL, npz) and the NAB loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import pytest

from streamer.data import load_nab_series, load_table, nab_files
from streamer.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_round_trip(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "d.csv",
        "ts,sensor,a,b,label\n2024-01-01T00:00:00Z,s1,1.5,2,0\n2024-01-01T00:05:00Z,s2,-3,4e-1,1\n",
    )
    t = load_table(path, label_column="label", entity_column="sensor", time_column="ts")
    assert t.features == ["a", "b"]  # numeric columns minus the label
    assert t.X.dtype == np.float32 and t.X.shape == (2, 2)
    np.testing.assert_allclose(t.X, [[1.5, 2.0], [-3.0, 0.4]], rtol=1e-6)
    assert t.labels is not None and t.labels.dtype == np.int8 and t.labels.tolist() == [0, 1]
    assert t.entities is not None and t.entities.tolist() == ["s1", "s2"]
    assert t.timestamps is not None
    assert t.timestamps[1] - t.timestamps[0] == np.timedelta64(5, "m")


def test_csv_explicit_features_and_order(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", "a,b,c\n1,2,3\n4,5,6\n")
    t = load_table(path, features=["c", "a"])
    assert t.features == ["c", "a"]
    assert t.X.tolist() == [[3, 1], [6, 4]]
    assert t.labels is None and t.entities is None and t.timestamps is None
    assert len(load_table(path, max_rows=1)) == 1


def test_csv_numeric_time_column_stays_numeric(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", "t,a\n1000,1\n2000,2\n")
    t = load_table(path, time_column="t")
    assert t.features == ["a"]
    assert t.timestamps is not None and t.timestamps.tolist() == [1000.0, 2000.0]


def test_jsonl_round_trip(tmp_path: Path) -> None:
    rows = [
        {"sensor_id": "a", "ts": 1, "x": 1.0, "y": 2, "flag": True, "note": "ok", "label": 0},
        {"sensor_id": "b", "ts": 2, "x": 3.5, "y": -1, "flag": False, "note": "hm", "label": 1},
    ]
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows) + b"\n")
    t = load_table(path, label_column="label", entity_column="sensor_id", time_column="ts")
    assert t.features == ["x", "y"]  # booleans and strings are not features
    assert t.X.tolist() == [[1.0, 2.0], [3.5, -1.0]]
    assert t.labels is not None and t.labels.tolist() == [0, 1]
    assert t.entities is not None and t.entities.tolist() == ["a", "b"]


def test_npz_train_and_test_splits(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    train = np.arange(12, dtype=np.float64).reshape(4, 3)
    test = np.ones((2, 3))
    np.savez(path, train=train, test=test, label=np.array([0, 1], dtype=np.uint8))
    t = load_table(path)
    assert t.features == ["f0", "f1", "f2"] and t.labels is None
    np.testing.assert_array_equal(t.X, train.astype(np.float32))
    t = load_table(path, split="test", features=["a", "b", "c"])
    assert t.features == ["a", "b", "c"]
    assert t.labels is not None and t.labels.tolist() == [0, 1]
    with pytest.raises(DataError, match="3 columns"):
        load_table(path, features=["a"])


def test_npz_refuses_pickled_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    np.savez(path, train=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="pickle"):
        load_table(path)


def test_npz_missing_split_and_bad_values(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, train=np.array([[1.0, np.nan]]))
    with pytest.raises(DataError, match="'test' not found"):
        load_table(path, split="test")
    with pytest.raises(DataError, match="row 0, column 1"):
        load_table(path)


@pytest.mark.parametrize(
    ("text", "kwargs", "match"),
    [
        ("a,b\n1,2\n3,x\n", {}, r"line 3, column 'b'"),
        ("a,b\n1,2\n3,nan\n", {}, r"line 3, column 'b'.*finite"),
        ("a,b\n1,2\n3,inf\n", {}, r"line 3, column 'b'"),
        ("a,b\n1,2\n3,\n", {}, r"line 3, column 'b'"),
        ("a,b\n1,2\n3\n", {}, r"line 3: 1 fields"),
        ("a,b\n1,2\n", {"features": ["a", "zz"]}, r"\['zz'\] not found"),
        ("a,b\n1,2\n", {"label_column": "label"}, r"label column 'label' not found"),
        ("a,label\n1,0\n2,7\n", {"label_column": "label"}, r"line 3, column 'label'.*0 or 1"),
        ("a,b\n", {}, r"no data rows"),
        ("", {}, r"empty file"),
        ("a,b\nx,y\n", {}, r"no numeric feature columns"),
        ("a,a\n1,2\n", {}, r"duplicate"),
        ("t,a\nnot-a-time,1\n", {"time_column": "t"}, r"line 2, column 't'.*timestamp"),
    ],
)
def test_csv_errors_name_row_and_column(
    tmp_path: Path, text: str, kwargs: dict, match: str
) -> None:
    path = write_csv(tmp_path / "bad.csv", text)
    with pytest.raises(DataError, match=match) as info:
        load_table(path, **kwargs)
    assert "bad.csv" in str(info.value)


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        ([b'{"a": 1}', b'{"a": 1'], r"line 2: invalid JSON"),
        ([b'{"a": 1}', b"[1]"], r"line 2: expected a JSON object"),
        ([b'{"a": 1, "b": 2}', b'{"a": 1}'], r"line 2: column 'b' missing"),
        ([b'{"a": 1}', b'{"a": "1x"}'], r"line 2, column 'a'"),
        ([b'{"a": 1}', b'{"a": null}'], r"line 2, column 'a'"),
        ([b'{"a": 1}', b'{"a": 1e999}'], r"line 2: invalid JSON"),
    ],
)
def test_jsonl_errors_name_line_and_column(tmp_path: Path, lines: list[bytes], match: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError, match=match):
        load_table(path)


def test_unknown_suffix_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_table(tmp_path / "nope.csv")
    path = write_csv(tmp_path / "d.parquet", "x")
    with pytest.raises(DataError, match="unsupported"):
        load_table(path)


# ------------------------------------------------------------------------------------------ NAB


def nab_fixture(root: Path) -> tuple[Path, Path]:
    series = root / "data" / "realTest" / "tiny.csv"
    series.parent.mkdir(parents=True)
    start = np.datetime64("2014-04-01T00:00:00")
    lines = ["timestamp,value"] + [
        f"{str(start + np.timedelta64(5 * i, 'm')).replace('T', ' ')},{float(i % 7)}"
        for i in range(20)
    ]
    series.write_text("\n".join(lines) + "\n")
    windows = root / "labels" / "combined_windows.json"
    windows.parent.mkdir()
    windows.write_text(
        json.dumps(
            {
                "realTest/tiny.csv": [
                    ["2014-04-01 00:20:00.000000", "2014-04-01 00:35:00.000000"],
                    ["2014-04-01 01:20:00.000000", "2014-04-01 01:30:00.000000"],
                ],
                "realTest/other.csv": [],
            }
        )
    )
    return series, windows


def test_nab_loader_on_fixture(tmp_path: Path) -> None:
    series_path, windows_path = nab_fixture(tmp_path)
    assert nab_files(tmp_path) == [series_path]
    s = load_nab_series(series_path, windows_path)
    assert s.name == "realTest/tiny.csv"
    assert s.timestamps.dtype == np.dtype("datetime64[s]") and len(s.timestamps) == 20
    assert s.values.dtype == np.float32 and s.values[8] == 1.0
    assert s.windows[0] == (
        np.datetime64("2014-04-01T00:20:00"),
        np.datetime64("2014-04-01T00:35:00"),
    )
    # rows 4..7 and 16..18 are inside the windows
    assert np.flatnonzero(s.labels).tolist() == [4, 5, 6, 7, 16, 17, 18]
    assert s.window_rows() == [(4, 7), (16, 18)]
    # the parsed JSON dict works too
    again = load_nab_series(series_path, json.loads(windows_path.read_text()))
    assert again.labels.tolist() == s.labels.tolist()


def test_nab_loader_unknown_file(tmp_path: Path) -> None:
    series_path, _ = nab_fixture(tmp_path)
    with pytest.raises(DataError, match=r"no \(unique\) windows for 'realTest/tiny\.csv'"):
        load_nab_series(series_path, {"realTest/other.csv": []})
    with pytest.raises(DataError, match="no \\(unique\\) windows"):
        load_nab_series(series_path, {"a/tiny.csv": [], "b/tiny.csv": []})


def test_nab_loader_finds_a_copied_series_by_its_unique_file_name(tmp_path: Path) -> None:
    series_path, windows = nab_fixture(tmp_path)
    moved = {
        f"elsewhere/{Path(k).name}": v for k, v in orjson.loads(Path(windows).read_bytes()).items()
    }
    series = load_nab_series(series_path, moved)
    assert series.name == "elsewhere/tiny.csv" and series.windows


@pytest.mark.data
@pytest.mark.skipif(
    not (SHARED_DATA / "nab").is_dir(), reason=f"shared NAB data absent at {SHARED_DATA}"
)
def test_real_nab_series_windows_within_span() -> None:
    nab = SHARED_DATA / "nab"
    files = nab_files(nab)
    assert len(files) == 58
    path = nab / "data" / "realKnownCause" / "machine_temperature_system_failure.csv"
    s = load_nab_series(path, nab / "labels" / "combined_windows.json")
    assert len(s.windows) == 4
    assert len(s.timestamps) == len(s.values) == len(s.labels) == 22_695
    for start, end in s.windows:
        assert s.timestamps[0] <= start <= end <= s.timestamps[-1]
    rows = s.window_rows()
    assert all(s.labels[a : b + 1].all() for a, b in rows)
    assert s.labels.sum() == sum(b - a + 1 for a, b in rows)


def test_a_byte_order_mark_is_not_part_of_the_first_column_name(tmp_path: Path) -> None:
    """Excel saves CSV with a BOM: the first feature was named '\\ufefftemperature', and every live
    event (with 'temperature') was then dead-lettered for a missing feature."""
    csv_path = tmp_path / "bom.csv"
    csv_path.write_text("temperature,pressure\n1,2\n3,4\n", encoding="utf-8-sig")
    assert load_table(csv_path).features == ["temperature", "pressure"]
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(b'\xef\xbb\xbf{"temperature": 1, "pressure": 2}\n')
    assert load_table(jsonl).features == ["temperature", "pressure"]


@pytest.mark.parametrize("first", ["", "NA"])
def test_one_odd_value_in_the_first_row_does_not_drop_a_column(tmp_path: Path, first: str) -> None:
    """Feature columns were chosen from the first row alone: a blank there dropped the column
    silently. Now the column stays, and its bad value is named."""
    rows = [f"0.1,{first},0.3"] + [f"{i},{i + 1},{i + 2}" for i in range(49)]
    path = write_csv(tmp_path / "f.csv", "temperature,pressure,rpm\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"line 2, column 'pressure'"):
        load_table(path)
    text = write_csv(tmp_path / "t.csv", "id,v\nx1,1\n7,2\nx3,3\n")
    assert load_table(text).features == ["v"]  # a text column with a stray number is no feature
    sparse = write_csv(tmp_path / "s.csv", "v,note\n1,5\n" + "2,\n" * 20)
    assert load_table(sparse).features == ["v"]  # a column mostly blank is no feature


def test_windows_json_of_the_wrong_shape_is_a_clear_error(tmp_path: Path) -> None:
    series_path, _ = nab_fixture(tmp_path)
    for bad in (
        [0, 1, 1],
        {"realTest/tiny.csv": 5},
        {"realTest/tiny.csv": [[1, 2]]},
        {"realTest/tiny.csv": [[None, None]]},
    ):
        with pytest.raises(DataError):
            load_nab_series(series_path, bad if isinstance(bad, dict) else _as_file(tmp_path, bad))


def _as_file(tmp_path: Path, value: object) -> Path:
    path = tmp_path / "w.json"
    path.write_text(json.dumps(value))
    return path


def test_a_single_array_named_npz_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "single.npz"
    with path.open("wb") as fh:
        np.save(fh, np.zeros((3, 2)))
    with pytest.raises(DataError, match="single array"):
        load_table(path)


def test_timestamps_with_a_utc_offset_are_read_as_utc_in_series_and_windows(tmp_path: Path) -> None:
    """The series kept wall time while the windows went to UTC: labels shifted by the offset."""
    series = tmp_path / "data" / "cat" / "s.csv"
    series.parent.mkdir(parents=True)
    start = np.datetime64("2020-01-01T00:00:00")
    series.write_text(
        "timestamp,value\n"
        + "".join(f"{start + np.timedelta64(i, 'h')}+02:00,{i}\n" for i in range(300))
    )
    windows = {
        "cat/s.csv": [
            [
                f"{start + np.timedelta64(150, 'h')}+02:00",
                f"{start + np.timedelta64(160, 'h')}+02:00",
            ]
        ]
    }
    s = load_nab_series(series, windows)
    assert np.flatnonzero(s.labels).tolist() == list(range(150, 161))
    assert s.timestamps[0] == np.datetime64("2019-12-31T22:00:00")


def test_invalid_utf8_is_reported_on_its_own_line(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes(b"a,b\n1,2\n3,caf\xe9\n")
    with pytest.raises(DataError, match="line 3"):
        load_table(path)
