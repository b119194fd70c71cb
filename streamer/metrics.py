"""Detection metrics of 0/1 alerts and raw scores against 0/1 point labels.

Undefined ratios are NaN rather than 0 or an exception, so a report over a stream that happens to
hold no anomaly (or no alert) says so instead of pretending: precision is NaN without alerts,
recall and range recall without labelled points, AUPRC and ROC-AUC when the labels are all one
class, mean delay when no window was found.

Streams that interleave entities (the simulator, Kafka partitions) should pass ``groups`` (the
entity key of each row): windows and delays are then taken within each entity's own sequence of
rows, since one entity's anomaly is otherwise cut into many one-row "windows" by its neighbours.

>>> import numpy as np
>>> r = detection_report(np.array([0, 1, 1, 0]), None, np.array([0, 0, 1, 1]))
>>> r["precision"], r["recall"], r["range_recall"], r["mean_delay"]
(0.5, 0.5, 1.0, 1.0)
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

__all__ = [
    "auprc",
    "detection_report",
    "false_alarms_per_1k",
    "mean_delay",
    "point_scores",
    "range_recall",
    "roc_auc",
    "windows_from_labels",
]


def _binary(name: str, values: np.ndarray) -> np.ndarray:
    arr = np.asarray(values).reshape(-1)
    if arr.dtype != bool and not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0 and 1")
    return arr.astype(bool)


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def point_scores(labels: np.ndarray, alerts: np.ndarray) -> tuple[float, float, float]:
    """Point-wise precision, recall and F1 (``2TP / (2TP + FP + FN)``) of 0/1 alerts."""
    y, a = _binary("labels", labels), _binary("alerts", alerts)
    _same_length(y, a)
    tp = float(np.sum(y & a))
    fp = float(np.sum(~y & a))
    fn = float(np.sum(y & ~a))
    return _ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(2 * tp, 2 * tp + fp + fn)


def _scores(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    y = _binary("labels", labels)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    _same_length(y, s)
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    if y.all() or not y.any():
        return None  # one class only: ranking metrics are undefined
    return y, s


def auprc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of raw scores (higher = more anomalous); NaN with one class only."""
    pair = _scores(labels, scores)
    return math.nan if pair is None else float(average_precision_score(*pair))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC-AUC of raw scores; NaN with one class only."""
    pair = _scores(labels, scores)
    return math.nan if pair is None else float(roc_auc_score(*pair))


def windows_from_labels(labels: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous runs of 1 as inclusive (first_row, last_row) pairs."""
    y = _binary("labels", labels).astype(np.int8)
    edges = np.diff(np.concatenate(([0], y, [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1) - 1
    return [(int(s), int(e)) for s, e in zip(starts, ends, strict=True)]


def _first_alerts(windows: list[tuple[int, int]], alerts: np.ndarray) -> list[int | None]:
    out: list[int | None] = []
    for s, e in windows:
        hits = np.flatnonzero(alerts[s : e + 1])
        out.append(s + int(hits[0]) if len(hits) else None)
    return out


def _group_rows(n: int, groups: np.ndarray | None) -> list[np.ndarray]:
    """Row indices of each group, in stream order (one group of all rows when None)."""
    if groups is None:
        return [np.arange(n)]
    g = np.asarray(groups).reshape(-1)
    if len(g) != n:
        raise ValueError(f"length mismatch: {n} labels vs {len(g)} groups")
    _, inverse = np.unique(g, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    return np.split(order, bounds)


def _window_hits(
    labels: np.ndarray, alerts: np.ndarray, groups: np.ndarray | None
) -> list[tuple[int, int | None]]:
    """Per window (within its group): its start and the group-local delay of its first alert."""
    y, a = _binary("labels", labels), _binary("alerts", alerts)
    _same_length(y, a)
    out: list[tuple[int, int | None]] = []
    for rows in _group_rows(len(y), groups):
        wins = windows_from_labels(y[rows])
        for (s, _), f in zip(wins, _first_alerts(wins, a[rows]), strict=True):
            out.append((int(rows[s]), None if f is None else f - s))
    return out


def range_recall(labels: np.ndarray, alerts: np.ndarray, groups: np.ndarray | None = None) -> float:
    """Fraction of labelled windows with at least one alert inside; NaN without windows."""
    hits = _window_hits(labels, alerts, groups)
    return _ratio(sum(d is not None for _, d in hits), len(hits))


def false_alarms_per_1k(labels: np.ndarray, alerts: np.ndarray) -> float:
    """Alerts outside every labelled window per 1,000 events; NaN for an empty stream."""
    y, a = _binary("labels", labels), _binary("alerts", alerts)
    _same_length(y, a)
    return _ratio(1000.0 * float(np.sum(a & ~y)), len(y))


def mean_delay(labels: np.ndarray, alerts: np.ndarray, groups: np.ndarray | None = None) -> float:
    """Mean rows (of the window's group) from a window's start to its first alert, over found
    windows; NaN if none was found."""
    delays = [d for _, d in _window_hits(labels, alerts, groups) if d is not None]
    return float(np.mean(delays)) if delays else math.nan


def detection_report(
    labels: np.ndarray,
    scores: np.ndarray | None,
    alerts: np.ndarray,
    groups: np.ndarray | None = None,
) -> dict[str, float]:
    """Every metric of this module in one dict (``scores`` None: AUPRC and ROC-AUC are NaN).

    ``groups`` (entity key per row) makes windows per entity; see the module docstring.

    Keys: precision, recall, f1, auprc, roc_auc, range_recall, false_alarms_per_1k, mean_delay,
    n_events, n_alerts, n_windows.
    """
    y, a = _binary("labels", labels), _binary("alerts", alerts)
    _same_length(y, a)
    precision, recall, f1 = point_scores(y, a)
    hits = _window_hits(y, a, groups)
    delays = [d for _, d in hits if d is not None]
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "auprc": math.nan if scores is None else auprc(y, scores),
        "roc_auc": math.nan if scores is None else roc_auc(y, scores),
        "range_recall": _ratio(len(delays), len(hits)),
        "false_alarms_per_1k": false_alarms_per_1k(y, a),
        "mean_delay": float(np.mean(delays)) if delays else math.nan,
        "n_events": float(len(y)),
        "n_alerts": float(a.sum()),
        "n_windows": float(len(hits)),
    }


def _same_length(a: np.ndarray, b: np.ndarray) -> None:
    if len(a) != len(b):
        raise ValueError(f"length mismatch: {len(a)} labels vs {len(b)}")
