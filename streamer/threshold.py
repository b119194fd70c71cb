"""The adaptive alert threshold: an online estimate of the q-quantile of recent scores.

River's ``stats.RollingQuantile`` (exact over the last ``window`` scores; the service's default is
2,000), or ``stats.Quantile`` (P-square, over all history). The estimate starts from the model's
scores on held-back normal training data, so there is no blind warm-up.

By default a score that raises an alert enters the estimate capped a little above the threshold it
exceeded, at ``min(score, threshold + (alert_cap - 1) * |threshold|)`` (``alert_cap`` 1.05; the
service's ``auto`` gives 1.5 where the rise gate chooses what is published, streamer.config), while
alerts come at about their expected rate; once the last ``max(window, 2000)`` scores hold more than 1.5
times the expected number of exceedances (30 of 2,000 at q = 0.99), further ones enter as the
threshold itself:

- the exceedance still counts above the threshold, so the estimate does not sink as it would if
  alerts were left out (leaving out the top 1-q of every window makes a rolling quantile spiral down);
- the small headroom keeps the estimate unbiased. Capped exactly at the threshold (``alert_cap`` 1), no
  stored score is ever above an earlier threshold, so a rolling quantile can only fall: on stationary
  scores at q = 0.99 its alert rate crept from 1.3 % to 2 % over 200,000 events. With the headroom it
  stays at 1.06-1.15 %;
- an attack or an outage cannot lift the bar that detects it above where it started: its
  exceedances soon run above the expected rate and are clipped. The threshold is shared by every key,
  so a bar lifted by one key's outage would blind the detector to every other key: capped at 1.05
  without the clipping, a sustained attack on 10 % of events lifted the threshold from 4.6 to 1,410
  and the other events' alerts stopped altogether; with it, the threshold ended at 5.4 and every
  attack event alerted;
- but a burst that outlasts the span is no longer held below the q-quantile of the starting scores
  (the floor): after a quiet spell the bar has followed the quiet scores down, and the normal scores
  that come back exceed it in a burst that never ends; held, 73 % of them alerted for good. So a long
  (or a repeated) attack while the scores run below their training level can lift the bar back up to
  where it started, never above.

A lasting rise of the normal scores is held off the same way (an alert rate of ~18 % after the scores
tripled, where 1 % is expected): that is a model to retrain, or ``update_on_alert`` for a threshold
that follows every score.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import cast

import numpy as np
from river import stats

from streamer.config import DEFAULT_ALERT_CAP

# P-square needs a few observations before its estimate means anything.
_MIN_OBSERVATIONS = 5
# Exceedances enter clipped to the threshold once the last max(window, _GUARD_SPAN) scores hold more
# than _EXCESS times the (1 - q) * span expected. Counted over at least 2,000 scores: over a short
# window (q = 0.99, window 50) fewer than one exceedance is expected, and every one would be clipped.
_GUARD_SPAN = 2_000
_EXCESS = 1.5


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
        alert_cap: float = DEFAULT_ALERT_CAP,
    ) -> None:
        if not 0.0 < q < 1.0:
            raise ValueError(f"q must be in (0, 1), got {q}")
        if not 1.0 <= alert_cap < float("inf"):
            raise ValueError(f"alert_cap must be at least 1, got {alert_cap}")
        if window is not None and window < 2:
            raise ValueError(f"window must be at least 2, got {window}")
        self.q = q
        self.window = window
        self.update_on_alert = update_on_alert
        self.alert_cap = alert_cap
        # The event numbers of the exceedances among the last `_span` scores, oldest first.
        self._span = max(window or 0, _GUARD_SPAN)
        self._allowed = _EXCESS * (1.0 - q) * self._span
        self._recent: deque[int] = deque()
        self._estimator: stats.Quantile | stats.RollingQuantile = (
            stats.RollingQuantile(q, window_size=window) if window else stats.Quantile(q)
        )
        self._update, self._estimate = _methods(self._estimator)
        self.n_seen = 0
        # A burst that outlasts the guard's span is no burst: from then on it is not held below the
        # seed's q-quantile (normal scores after a quiet spell), though still not lifted above it.
        self._floor = -float("inf")
        self._burst_since: int | None = None  # the event that began the current burst
        if initial_scores is not None and len(initial_scores):
            seed = np.asarray(initial_scores, dtype=np.float64)
            if window:
                seed = seed[-window:]
            for s in seed.tolist():
                self._update(s)
            self.n_seen = len(seed)
            self._floor = float(np.quantile(seed, q))

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

    def _entered(self, score: float, threshold: float, event: int) -> float:
        """What ``score``, the ``event``-th and over ``threshold``, enters the estimate as."""
        recent = self._recent
        recent.append(event)
        oldest = event - self._span
        while recent[0] <= oldest:
            recent.popleft()
        if len(recent) > self._allowed:
            if self._burst_since is None:
                self._burst_since = event
            if event - self._burst_since < self._span:
                return threshold
            return min(score, max(threshold, self._floor))
        self._burst_since = None
        return min(score, threshold + (self.alert_cap - 1.0) * abs(threshold))

    def decide(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per score in order: the threshold it was compared with, and whether it exceeded it.

        Each score updates the estimate before the next is compared (unless it alerted and
        ``update_on_alert`` is off), exactly as if the events had arrived one by one.
        """
        array = np.asarray(scores, dtype=np.float64)
        if not np.isfinite(array).all():  # River's core panics on NaN; Pipeline drops them first
            raise ValueError("scores must be finite")
        values = array.tolist()
        thresholds: list[float] = []
        record = thresholds.append
        update, estimate = self._update, self._estimate
        clip = not self.update_on_alert
        entered = self._entered
        n_seen = self.n_seen
        current = self.get()
        i = 0
        while i < len(values) and n_seen < _MIN_OBSERVATIONS:  # until the estimate means anything
            s = values[i]
            record(current)
            update(entered(s, current, n_seen) if clip and s > current else s)
            n_seen += 1
            if n_seen >= _MIN_OBSERVATIONS:
                got = estimate()
                current = float("inf") if got is None else got
            i += 1
        rest = values[i:] if i else values
        estimate_now = cast(Callable[[], float], estimate)  # never None once warmed up
        # The hot loop: one comparison and two calls into River's core per score. An alerting score
        # enters capped just above the threshold, or at it when alerts run above their expected rate
        # (unless update_on_alert): the exceedance still counts, yet it lifts the bar slowly, and not
        # at all in a burst.
        if clip:
            first = self.n_seen - 1  # + len(thresholds): the number of the event just recorded
            for s in rest:
                record(current)
                update(entered(s, current, first + len(thresholds)) if s > current else s)
                current = estimate_now()
        else:
            for s in rest:
                record(current)
                update(s)
                current = estimate_now()
        self.n_seen = n_seen + len(rest)
        out = np.array(thresholds, dtype=np.float64)
        return out, array > out


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
