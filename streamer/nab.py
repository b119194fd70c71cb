"""The NAB score (Numenta Anomaly Benchmark v1.1) of 0/1 detections against labelled windows.

Follows ``nab/sweeper.py`` (``calcSweepScore`` + ``calcScoreByThreshold``) and ``nab/runner.py``
(``normalize``) of numenta/NAB:

1. The first ``min(floor(0.15 * n), 0.15 * 5000)`` rows are probationary: detections there count
   for nothing, and a window whose rows all lie there is neither found nor missed.
2. A detection at row ``i`` inside window ``[s, e]`` (width ``w = e - s + 1``) sits at relative
   position ``y = -(e - i + 1) / w`` (-1 at the window's first row) and earns
   ``A_TP * sigma(y) / sigma(-1)`` with ``sigma(y) = 2 / (1 + exp(5 y)) - 1``; so a detection on
   the first row earns exactly ``A_TP``. Each window scores only its best (earliest) detection,
   and a window without one costs ``A_FN``.
3. A detection outside every window costs ``A_FP`` when no window precedes it, else
   ``A_FP * sigma((i - e_prev) / (w_prev - 1))`` with the closest preceding window: just after a
   window this is almost free, three window-widths later it costs the full ``A_FP``
   (``sigma(y) = -1`` for ``y > 3``).
4. Per file, ``null`` is the score of a detector that never fires (``-A_FN`` per scored window) and
   ``perfect`` is ``A_TP`` per labelled window; the benchmark sums raw, null and perfect over all
   files, then reports ``100 * (raw - null) / (perfect - null)``.

The one departure: a detection after a one-row window would make NAB divide by zero; here it is
placed at ``y = 2`` as NAB's older ``scorer.py`` did.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "PROFILES",
    "CostMatrix",
    "NabScore",
    "aggregate",
    "nab_score",
    "probation_rows",
    "scaled_sigmoid",
    "window_rows",
]


@dataclass(frozen=True)
class CostMatrix:
    """NAB application profile weights (magnitudes: FP and FN are subtracted)."""

    tp: float
    fp: float
    fn: float


# config/profiles.json of NAB v1.1
PROFILES: dict[str, CostMatrix] = {
    "standard": CostMatrix(tp=1.0, fp=0.11, fn=1.0),
    "reward_low_FP_rate": CostMatrix(tp=1.0, fp=0.22, fn=1.0),
    "reward_low_FN_rate": CostMatrix(tp=1.0, fp=0.11, fn=2.0),
}


@dataclass(frozen=True)
class NabScore:
    """Raw score of one series with the null and perfect scores that normalise it."""

    raw: float
    null: float
    perfect: float
    normalized: float  # 100 * (raw - null) / (perfect - null); NaN for a series without windows


def scaled_sigmoid(y: float) -> float:
    """NAB's reward for relative position ``y``: 0.987 at -1, 0 at 0, -0.987 at 1, -1 beyond 3."""
    if y > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def probation_rows(n: int, fraction: float = 0.15) -> int:
    """Number of leading rows NAB leaves unscored: ``min(floor(fraction * n), fraction * 5000)``."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"probation fraction must be in [0, 1), got {fraction}")
    return math.ceil(min(math.floor(fraction * n), fraction * 5000))


def window_rows(
    timestamps: np.ndarray, windows: Sequence[tuple[Any, Any]]
) -> list[tuple[int, int]]:
    """Map (start, end) timestamp windows to inclusive row ranges, as NAB's ``Window`` does.

    The range runs from the first to the last row with ``start <= t <= end`` in file order (a few
    NAB files repeat timestamps or step back, so ``timestamps`` need not be sorted).
    """
    ts = np.asarray(timestamps)
    out = []
    for start, end in windows:
        rows = np.flatnonzero(
            (ts >= np.asarray(start, dtype=ts.dtype)) & (ts <= np.asarray(end, dtype=ts.dtype))
        )
        if len(rows) == 0:
            raise ValueError(f"window ({start}, {end}) holds no row of the series")
        out.append((int(rows[0]), int(rows[-1])))
    return out


def _check_windows(windows: Sequence[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    rows = [(int(s), int(e)) for s, e in windows]
    prev_end = -1
    for s, e in rows:
        if not 0 <= s <= e < n:
            raise ValueError(f"window ({s}, {e}) is not an inclusive row range inside [0, {n})")
        if s <= prev_end:
            raise ValueError("windows must be sorted and must not overlap")
        prev_end = e
    return rows


def nab_score(
    index: np.ndarray | None,
    alerts: np.ndarray,
    windows: Sequence[tuple[Any, Any]],
    probation_fraction: float = 0.15,
    profile: str = "standard",
) -> NabScore:
    """Score the 0/1 ``alerts`` of one series against its labelled ``windows``.

    ``windows`` are inclusive ``(first_row, last_row)`` pairs, or ``(start, end)`` datetime64
    pairs that ``index`` (the series' sorted timestamps) maps to rows. ``index`` may be None for
    row windows; otherwise its length must match ``alerts``.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known: {sorted(PROFILES)}")
    cost = PROFILES[profile]
    alert = np.asarray(alerts).reshape(-1).astype(bool)
    n = len(alert)
    if index is not None and len(index) != n:
        raise ValueError(f"index has {len(index)} rows, alerts {n}")
    if windows and isinstance(windows[0][0], np.datetime64):
        if index is None:
            raise ValueError("timestamp windows need the series' timestamps as index")
        windows = window_rows(np.asarray(index), windows)
    rows = _check_windows(windows, n)
    probation = probation_rows(n, probation_fraction)
    max_tp = scaled_sigmoid(-1.0)

    raw = 0.0
    scored_windows = 0
    inside = np.zeros(n, dtype=bool)
    for s, e in rows:
        inside[s : e + 1] = True
        if e < probation:
            continue  # wholly probationary: not counted as found or missed
        scored_windows += 1
        width = e - s + 1
        hits = np.flatnonzero(alert[max(s, probation) : e + 1])
        part = -cost.fn
        if len(hits):
            first = max(s, probation) + int(hits[0])
            part = max(part, scaled_sigmoid(-(e - first + 1) / width) * cost.tp / max_tp)
        raw += part

    ends = np.array([e for _, e in rows], dtype=np.int64)
    widths = np.array([e - s + 1 for s, e in rows], dtype=np.int64)
    for i in np.flatnonzero(alert & ~inside):
        if i < probation:
            continue
        k = int(np.searchsorted(ends, i, side="left")) - 1  # last window ending before row i
        if k < 0:
            raw += -1.0 * cost.fp
            continue
        y = 2.0 if widths[k] <= 1 else (i - ends[k]) / float(widths[k] - 1)
        raw += scaled_sigmoid(y) * cost.fp

    null = -cost.fn * scored_windows
    perfect = cost.tp * len(rows)
    return NabScore(raw=raw, null=null, perfect=perfect, normalized=_normalize(raw, null, perfect))


def _normalize(raw: float, null: float, perfect: float) -> float:
    if perfect == null:
        return math.nan
    return 100.0 * (raw - null) / (perfect - null)


def aggregate(scores: Sequence[NabScore]) -> float:
    """The benchmark's normalised score of a corpus: raw, null and perfect summed over files first."""
    if not scores:
        raise ValueError("aggregate needs at least one NabScore")
    raw = sum(s.raw for s in scores)
    null = sum(s.null for s in scores)
    perfect = sum(s.perfect for s in scores)
    return _normalize(raw, null, perfect)
