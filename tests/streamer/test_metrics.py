"""Detection metrics against tiny hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamer.metrics import (
    auprc,
    detection_report,
    false_alarms_per_1k,
    mean_delay,
    point_scores,
    range_recall,
    roc_auc,
    windows_from_labels,
)

# rows:    0  1  2  3  4  5  6  7  8  9
LABELS = [0, 1, 1, 1, 0, 0, 1, 1, 0, 0]  # windows (1, 3) and (6, 7)
ALERTS = [1, 0, 1, 1, 0, 0, 0, 0, 0, 1]  # TP rows 2, 3; FP rows 0, 9; FN rows 1, 6, 7
SCORES = [0.9, 0.8, 0.7, 0.6, 0.1, 0.2, 0.5, 0.4, 0.3, 0.05]


def arr(values: list[float]) -> np.ndarray:
    return np.asarray(values)


def test_point_scores_hand_computed() -> None:
    p, r, f1 = point_scores(arr(LABELS), arr(ALERTS))
    assert p == pytest.approx(2 / 4)
    assert r == pytest.approx(2 / 5)
    assert f1 == pytest.approx(2 * 2 / (2 * 2 + 2 + 3))  # 4/9, equals 2PR/(P+R)
    assert f1 == pytest.approx(2 * p * r / (p + r))


def test_windows_from_labels() -> None:
    assert windows_from_labels(arr(LABELS)) == [(1, 3), (6, 7)]
    assert windows_from_labels(arr([1, 1, 0, 1])) == [(0, 1), (3, 3)]
    assert windows_from_labels(arr([0, 0])) == []
    assert windows_from_labels(arr([])) == []


def test_range_metrics_hand_computed() -> None:
    assert range_recall(arr(LABELS), arr(ALERTS)) == pytest.approx(0.5)  # (1,3) found, (6,7) missed
    assert false_alarms_per_1k(arr(LABELS), arr(ALERTS)) == pytest.approx(2 / 10 * 1000)
    assert mean_delay(arr(LABELS), arr(ALERTS)) == pytest.approx(1.0)  # first alert row 2 - start 1
    # two found windows: delays 0 and 1
    assert mean_delay(arr([1, 1, 0, 1, 1]), arr([1, 0, 0, 0, 1])) == pytest.approx(0.5)


def test_auprc_and_roc_auc_hand_computed() -> None:
    # ranking by score: rows 0(n) 1(p) 2(p) 3(p) 6(p) 7(p) 8(n) 5(n) 4(n) 9(n)
    # AP = mean precision at each positive: 1/2, 2/3, 3/4, 4/5, 5/6
    expected_ap = (1 / 2 + 2 / 3 + 3 / 4 + 4 / 5 + 5 / 6) / 5
    assert auprc(arr(LABELS), arr(SCORES)) == pytest.approx(expected_ap)
    # pairs (pos, neg) ranked right: each positive beats 4 of the 5 negatives -> 20/25
    assert roc_auc(arr(LABELS), arr(SCORES)) == pytest.approx(20 / 25)


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1]])
def test_ranking_metrics_nan_with_one_class(labels: list[int]) -> None:
    assert math.isnan(auprc(arr(labels), arr([0.1, 0.2, 0.3])))
    assert math.isnan(roc_auc(arr(labels), arr([0.1, 0.2, 0.3])))


def test_report_keys_and_values() -> None:
    r = detection_report(arr(LABELS), arr(SCORES), arr(ALERTS))
    assert set(r) == {
        "precision",
        "recall",
        "f1",
        "auprc",
        "roc_auc",
        "range_recall",
        "false_alarms_per_1k",
        "mean_delay",
        "n_events",
        "n_alerts",
        "n_windows",
    }
    assert (r["n_events"], r["n_alerts"], r["n_windows"]) == (10, 4, 2)
    assert r["precision"] == pytest.approx(0.5)
    assert r["roc_auc"] == pytest.approx(0.8)


def test_report_without_alerts() -> None:
    r = detection_report(arr(LABELS), arr(SCORES), np.zeros(10))
    assert math.isnan(r["precision"])  # no alert: precision undefined
    assert r["recall"] == 0.0
    assert r["f1"] == 0.0
    assert r["range_recall"] == 0.0
    assert r["false_alarms_per_1k"] == 0.0
    assert math.isnan(r["mean_delay"])
    assert r["n_alerts"] == 0


def test_report_without_labels() -> None:
    alerts = arr([0, 1, 0, 0])
    r = detection_report(np.zeros(4), arr([0.1, 0.9, 0.2, 0.3]), alerts)
    assert r["precision"] == 0.0
    assert math.isnan(r["recall"])
    assert r["f1"] == 0.0  # 2*0 / (0 + 1 + 0)
    assert math.isnan(r["auprc"]) and math.isnan(r["roc_auc"])
    assert math.isnan(r["range_recall"]) and math.isnan(r["mean_delay"])
    assert r["false_alarms_per_1k"] == pytest.approx(250.0)
    assert r["n_windows"] == 0


def test_report_nothing_at_all() -> None:
    r = detection_report(np.zeros(3), None, np.zeros(3))
    assert math.isnan(r["precision"]) and math.isnan(r["recall"]) and math.isnan(r["f1"])
    assert math.isnan(r["auprc"])
    assert r["false_alarms_per_1k"] == 0.0


def test_report_empty_stream() -> None:
    r = detection_report(arr([]), arr([]), arr([]))
    assert r["n_events"] == 0
    assert math.isnan(r["false_alarms_per_1k"])


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="length"):
        point_scores(arr([0, 1]), arr([0, 1, 1]))
    with pytest.raises(ValueError, match="0 and 1"):
        point_scores(arr([0, 2]), arr([0, 1]))
    with pytest.raises(ValueError, match="finite"):
        auprc(arr([0, 1]), arr([0.1, math.nan]))


def test_groups_keep_interleaved_windows_whole() -> None:
    # two entities interleaved: a's rows 0,2,4,6,8 and b's rows 1,3,5,7,9
    groups = np.array(["a", "b"] * 5)
    labels = arr([0, 0, 1, 0, 1, 1, 1, 1, 0, 0])  # a: 0 1 1 1 0 -> one window; b: 0 0 1 1 0 -> one
    alerts = arr([0, 0, 0, 0, 0, 0, 1, 0, 0, 0])  # a's 4th row (row 6): delay 2 in a's own rows
    assert len(windows_from_labels(labels)) == 2  # ungrouped: (2, 2) and (4, 7)
    assert range_recall(labels, alerts, groups) == pytest.approx(0.5)
    assert mean_delay(labels, alerts, groups) == pytest.approx(2.0)
    r = detection_report(labels, None, alerts, groups=groups)
    assert (r["n_windows"], r["range_recall"], r["mean_delay"]) == (2, 0.5, 2.0)
    # ungrouped, row 6 lies in window (4, 7): delay 2 rows of the stream
    assert mean_delay(labels, alerts) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="groups"):
        range_recall(labels, alerts, groups[:3])
