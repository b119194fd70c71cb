"""``streamer evaluate --plot``: the test series, each detector's score and threshold, its alerts, and the
labelled anomaly windows shaded, in one PNG.

Drawn on an Agg canvas of its own, so pyplot's global state is never touched (safe in tests and threads).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from streamer.metrics import windows_from_labels

if TYPE_CHECKING:
    from streamer.evaluate import Decisions, Series

_MAX_FEATURES = 6  # more lines than this in the series panel are unreadable


def plot_series(
    path: str | Path, series: Series, detectors: Sequence[tuple[str, Decisions]]
) -> None:
    """Write the PNG: the series on top, then one panel per detector (score, threshold, alerts)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_panels = 1 + len(detectors)
    fig = Figure(figsize=(14, 2.2 * n_panels + 0.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_panels, 1, sharex=True, squeeze=False)[:, 0]
    x = np.arange(len(series.test))
    windows = windows_from_labels(series.labels)

    ax = axes[0]
    shown = series.test[:, :_MAX_FEATURES]
    for j in range(shown.shape[1]):
        ax.plot(x, shown[:, j], linewidth=0.7, label=series.features[j])
    more = len(series.features) - shown.shape[1]
    title = f"{series.name}: test part, labelled anomalies shaded"
    ax.set_title(
        title + (f" (first {_MAX_FEATURES} of {len(series.features)} features)" if more > 0 else "")
    )
    if shown.shape[1] <= _MAX_FEATURES and len(series.features) > 1:
        ax.legend(loc="upper left", fontsize="x-small", ncol=shown.shape[1])

    for ax, (kind, d) in zip(axes[1:], detectors, strict=True):
        scores = np.where(np.isfinite(d.scores), d.scores, np.nan)
        positive = scores[np.isfinite(scores) & (scores > 0)]
        ax.plot(x, scores, linewidth=0.6, color="tab:blue", label="score")
        thr = np.where(np.isfinite(d.thresholds), d.thresholds, np.nan)
        ax.plot(x, thr, linewidth=0.9, color="tab:orange", label="threshold")
        hits = np.flatnonzero(d.alerts)
        ax.scatter(
            hits, scores[hits], s=8, color="tab:red", zorder=3, label=f"alerts ({len(hits)})"
        )
        # Reconstruction errors span decades; a log axis keeps normal scores visible beside spikes.
        if len(positive) and positive.max() / max(positive.min(), 1e-300) > 1e3:
            ax.set_yscale("log")
        ax.set_ylabel(kind)
        ax.legend(loc="upper left", fontsize="x-small", ncol=3)

    pad = max(0.5, len(x) / 1000)  # a one-row window must stay visible on a long series
    for ax in axes:
        for s, e in windows:
            ax.axvspan(s - pad, e + pad, color="tab:red", alpha=0.15, linewidth=0)
    axes[-1].set_xlabel("test row")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
