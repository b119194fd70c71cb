"""NAB score against hand-worked cases (standard profile: A_TP 1, A_FP 0.11, A_FN 1)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from streamer.data import load_nab_series, nab_files
from streamer.nab import NabScore, aggregate, nab_score, probation_rows, scaled_sigmoid, window_rows

N = 100  # probation = floor(0.15 * 100) = 15 rows
WINDOW = (40, 49)  # width 10
MAX_TP = 2 / (1 + math.exp(-5)) - 1  # sigma(-1) = 0.98661


def alerts_at(*rows: int, n: int = N) -> np.ndarray:
    a = np.zeros(n, dtype=np.int8)
    a[list(rows)] = 1
    return a


def sigma(y: float) -> float:
    return 2 / (1 + math.exp(5 * y)) - 1


def test_scaled_sigmoid_reference_points() -> None:
    assert scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert scaled_sigmoid(-0.5) == pytest.approx(0.84828, abs=1e-5)
    assert scaled_sigmoid(0.0) == 0.0
    assert scaled_sigmoid(1.0) == pytest.approx(-0.98661, abs=1e-5)
    assert scaled_sigmoid(3.5) == -1.0


def test_probation_rows() -> None:
    assert probation_rows(100) == 15
    assert probation_rows(101) == 15  # floor(15.15)
    assert probation_rows(10_000) == 750  # capped at 0.15 * 5000
    assert probation_rows(100, 0.0) == 0


def test_perfect_detector_scores_100() -> None:
    s = nab_score(None, alerts_at(40), [WINDOW])
    assert s == NabScore(
        raw=pytest.approx(1.0), null=-1.0, perfect=1.0, normalized=pytest.approx(100.0)
    )


def test_null_detector_scores_0() -> None:
    s = nab_score(None, np.zeros(N), [WINDOW])
    assert (s.raw, s.null, s.perfect, s.normalized) == (-1.0, -1.0, 1.0, 0.0)


def test_only_first_detection_in_window_counts() -> None:
    assert nab_score(None, alerts_at(40, 41, 45, 49), [WINDOW]).raw == pytest.approx(1.0)


def test_detection_at_window_end() -> None:
    # y = -(49 - 49 + 1) / 10 = -0.1
    expected = sigma(-0.1) / MAX_TP  # 0.24824
    s = nab_score(None, alerts_at(49), [WINDOW])
    assert s.raw == pytest.approx(expected)
    assert s.raw == pytest.approx(0.24824, abs=1e-5)
    assert s.normalized == pytest.approx(100 * (expected + 1) / 2)


def test_detection_mid_window() -> None:
    # row 45: y = -(49 - 45 + 1) / 10 = -0.5
    assert nab_score(None, alerts_at(45), [WINDOW]).raw == pytest.approx(sigma(-0.5) / MAX_TP)


def test_false_positive_with_no_preceding_window() -> None:
    s = nab_score(None, alerts_at(20, 40), [WINDOW])
    assert s.raw == pytest.approx(1.0 - 0.11)
    assert s.normalized == pytest.approx(100 * (0.89 + 1) / 2)


def test_false_positive_right_after_window_is_cheap() -> None:
    # row 50: y = (50 - 49) / (10 - 1) = 1/9 -> 0.11 * sigma(1/9) = -0.029794
    s = nab_score(None, alerts_at(40, 50), [WINDOW])
    assert s.raw == pytest.approx(1.0 + 0.11 * sigma(1 / 9))
    assert 0.11 * sigma(1 / 9) == pytest.approx(-0.029794, abs=1e-6)


def test_false_positive_far_after_window_costs_full_weight() -> None:
    # row 90: y = 41 / 9 > 3 -> sigma = -1
    assert nab_score(None, alerts_at(40, 90), [WINDOW]).raw == pytest.approx(1.0 - 0.11)
    # row 67: y = 18 / 9 = 2 -> 0.11 * sigma(2)
    assert nab_score(None, alerts_at(40, 67), [WINDOW]).raw == pytest.approx(
        1.0 + 0.11 * sigma(2.0)
    )


def test_false_positive_uses_closest_preceding_window() -> None:
    windows = [(20, 29), (60, 64)]  # widths 10 and 5
    # row 66 follows window 2 (end 64, width 5): y = 2 / 4
    s = nab_score(None, alerts_at(20, 60, 66), windows)
    assert s.raw == pytest.approx(2.0 + 0.11 * sigma(0.5))
    # row 35 follows window 1 (end 29, width 10): y = 6 / 9
    s = nab_score(None, alerts_at(20, 60, 35), windows)
    assert s.raw == pytest.approx(2.0 + 0.11 * sigma(6 / 9))
    assert (s.null, s.perfect) == (-2.0, 2.0)


def test_probationary_detections_ignored() -> None:
    # a false positive at row 10 (< 15) costs nothing
    assert nab_score(None, alerts_at(10, 40), [WINDOW]).raw == pytest.approx(1.0)
    # a window straddling the probation end: the alert at row 12 is ignored,
    # the one at row 16 counts with y = -(19 - 16 + 1) / 10
    s = nab_score(None, alerts_at(12, 16), [(10, 19)])
    assert s.raw == pytest.approx(sigma(-0.4) / MAX_TP)
    assert nab_score(None, alerts_at(12), [(10, 19)]).raw == -1.0


def test_window_inside_probation_is_neither_found_nor_missed() -> None:
    # NAB scores no row of it; perfect still counts every labelled window (runner.normalize)
    s = nab_score(None, alerts_at(5), [(3, 8)])
    assert (s.raw, s.null, s.perfect) == (0.0, 0.0, 1.0)
    # but it still precedes later false positives: row 20, y = 12 / 5 = 2.4
    s = nab_score(None, alerts_at(20), [(3, 8)])
    assert s.raw == pytest.approx(0.11 * sigma(12 / 5))


def test_series_without_windows() -> None:
    s = nab_score(None, alerts_at(50), [])
    assert (s.raw, s.null, s.perfect) == (pytest.approx(-0.11), 0.0, 0.0)
    assert math.isnan(s.normalized)


def test_profiles() -> None:
    a = alerts_at(20)
    assert nab_score(None, a, [WINDOW], profile="reward_low_FP_rate").raw == pytest.approx(
        -0.22 - 1.0
    )
    s = nab_score(None, a, [WINDOW], profile="reward_low_FN_rate")
    assert (s.raw, s.null) == (pytest.approx(-0.11 - 2.0), -2.0)
    with pytest.raises(ValueError, match="profile"):
        nab_score(None, a, [WINDOW], profile="lenient")


def test_aggregate_sums_before_normalising() -> None:
    perfect = nab_score(None, alerts_at(40), [WINDOW])  # raw 1, null -1, perfect 1
    null = nab_score(None, np.zeros(N), [(30, 39), WINDOW])  # raw -2, null -2, perfect 2
    # corpus: raw -1, null -3, perfect 3 -> 100 * 2 / 6, not the mean of 100 and 0
    assert aggregate([perfect, null]) == pytest.approx(100 * 2 / 6)
    with pytest.raises(ValueError):
        aggregate([])


def test_timestamp_windows_map_to_rows() -> None:
    ts = np.datetime64("2024-01-01T00:00") + np.arange(N) * np.timedelta64(5, "m")
    window = (ts[40], ts[49])
    assert window_rows(ts, [window]) == [WINDOW]
    # NAB's Window takes rows with start <= t <= end, so limits between rows round inwards
    assert window_rows(
        ts, [(ts[40] - np.timedelta64(1, "m"), ts[49] + np.timedelta64(1, "m"))]
    ) == [WINDOW]
    s = nab_score(ts, alerts_at(40), [window])
    assert s.normalized == pytest.approx(100.0)


def test_invalid_windows_raise() -> None:
    with pytest.raises(ValueError, match="overlap"):
        nab_score(None, np.zeros(N), [(40, 49), (45, 60)])
    with pytest.raises(ValueError, match="inside"):
        nab_score(None, np.zeros(N), [(90, 100)])
    with pytest.raises(ValueError, match="rows"):
        nab_score(np.arange(N - 1), np.zeros(N), [WINDOW])


SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.mark.data
@pytest.mark.skipif(
    not (SHARED_DATA / "nab").is_dir(), reason=f"shared NAB data absent at {SHARED_DATA}"
)
def test_real_corpus_perfect_and_null_detectors() -> None:
    nab = SHARED_DATA / "nab"
    windows = json.loads((nab / "labels" / "combined_windows.json").read_text())
    perfect, null = [], []
    for path in nab_files(nab):
        series = load_nab_series(path, windows)
        rows = series.window_rows()
        first_rows = np.zeros(len(series.values), dtype=np.int8)
        first_rows[[s for s, _ in rows]] = 1
        perfect.append(nab_score(series.timestamps, first_rows, series.windows))
        null.append(nab_score(series.timestamps, np.zeros_like(first_rows), series.windows))
    assert sum(s.perfect for s in perfect) == 116  # windows in combined_windows.json
    assert aggregate(perfect) == pytest.approx(100.0)
    assert aggregate(null) == pytest.approx(0.0)
