"""The adaptive alert threshold: an online estimate of the q-quantile of recent scores.

River's ``stats.RollingQuantile`` (exact over the last ``window`` scores; the service's default is
2,000), or ``stats.Quantile`` (P-square, over all history). The estimate starts from the model's
scores on held-back normal training data, so there is no blind warm-up. By default a score that
raises an alert enters the estimate clipped to the threshold it exceeded: an attack or an outage
cannot lift the bar that detects it, and yet the exceedance still counts, so the estimate does not
sink as it would if alerts were simply left out (leaving out the top 1-q of every window makes a
rolling quantile spiral down).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import numpy as np
from river import stats

# P-square needs a few observations before its estimate means anything.
_MIN_OBSERVATIONS = 5


class QuantileThreshold:
    """Online q-quantile of scores; ``decide`` compares each score with the estimate before it.

    >>> t = QuantileThreshold(q=0.9, initial_scores=np.arange(100.0))
    >>> thresholds, alerts = t.decide(np.array([1.0, 500.0, 2.0]))
    >>> alerts.tolist()
    [False, True, False]
    """

    def __init__(
        self,
        q: float,
        window: int | None = None,
        update_on_alert: bool = False,
        initial_scores: np.ndarray | None = None,
    ) -> None:
        if not 0.0 < q < 1.0:
            raise ValueError(f"q must be in (0, 1), got {q}")
        if window is not None and window < 2:
            raise ValueError(f"window must be at least 2, got {window}")
        self.q = q
        self.window = window
        self.update_on_alert = update_on_alert
        self._estimator: stats.Quantile | stats.RollingQuantile = (
            stats.RollingQuantile(q, window_size=window) if window else stats.Quantile(q)
        )
        self._update, self._estimate = _methods(self._estimator)
        self.n_seen = 0
        if initial_scores is not None and len(initial_scores):
            seed = np.asarray(initial_scores, dtype=np.float64)
            if window:
                seed = seed[-window:]
            for s in seed.tolist():
                self._update(s)
            self.n_seen = len(seed)

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        del state["_update"], state["_estimate"]  # bound methods of the estimator: rebuilt on load
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._update, self._estimate = _methods(self._estimator)

    def get(self) -> float:
        """The current threshold; +inf until enough scores have been seen."""
        if self.n_seen < _MIN_OBSERVATIONS:
            return float("inf")
        value = self._estimate()
        return float("inf") if value is None else float(value)

    def decide(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per score in order: the threshold it was compared with, and whether it exceeded it.

        Each score updates the estimate before the next is compared (unless it alerted and
        ``update_on_alert`` is off), exactly as if the events had arrived one by one.
        """
        values = np.asarray(scores, dtype=np.float64).tolist()
        thresholds: list[float] = []
        record = thresholds.append
        update, estimate = self._update, self._estimate
        clip = not self.update_on_alert
        n_seen = self.n_seen
        current = self.get()
        i = 0
        while i < len(values) and n_seen < _MIN_OBSERVATIONS:  # until the estimate means anything
            s = values[i]
            record(current)
            update(current if clip and s > current else s)
            n_seen += 1
            if n_seen >= _MIN_OBSERVATIONS:
                got = estimate()
                current = float("inf") if got is None else got
            i += 1
        rest = values[i:] if i else values
        estimate_now = cast(Callable[[], float], estimate)  # never None once warmed up
        # The hot loop: one comparison and two calls into River's core per score. An alerting score
        # enters as the threshold itself, not as the score (unless update_on_alert): the exceedance
        # is still counted (the estimate does not sink as the tail is cut off), yet it cannot lift
        # the bar.
        if clip:
            for s in rest:
                record(current)
                update(s if s <= current else current)
                current = estimate_now()
        else:
            for s in rest:
                record(current)
                update(s)
                current = estimate_now()
        self.n_seen = n_seen + len(rest)
        out = np.array(thresholds, dtype=np.float64)
        return out, np.asarray(scores, dtype=np.float64) > out


def _methods(
    estimator: stats.Quantile | stats.RollingQuantile,
) -> tuple[Callable[[float], None], Callable[[], float | None]]:
    """``update`` and ``get`` of the estimator, straight from River's Rust core when it has one.

    ``decide`` calls both once per event; the Python wrappers add only a call frame and an "updated
    yet" flag, which this class replaces with ``n_seen`` (the estimate is read only after updates).
    The public methods are the fallback should a River release rename the core.
    """
    core = getattr(estimator, "_quantile", None) or getattr(estimator, "_rolling_quantile", None)
    if (
        core is not None
        and callable(getattr(core, "update", None))
        and callable(getattr(core, "get", None))
    ):
        return core.update, core.get
    return estimator.update, estimator.get
