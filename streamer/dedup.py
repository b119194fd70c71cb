"""Alert de-duplication per key: after an alert, the same entity publishes none for ``cooldown_s``,
unless the new alert is much worse than the one published.

An incident lasts many events; an operator wants to hear of it once, not once per event. The cooldown
acts on the alert decisions only, after the threshold has seen every score, so it changes what is
published and never what the threshold learns. It is measured in event time (the Kafka message
timestamp; the processing time when a message has none), so it needs the key, time and score of the
alerting events only: nothing per event on the hot path.

Escalation: within the quiet period, an alert whose score is at least ``escalation`` times the score of
the entity's last published alert is published anyway, and the quiet period starts again from it. A
sensor that has been mildly noisy does not hide a real failure behind its cooldown. Anomaly scores are
non-negative; after an alert scored 0 or less nothing escalates.

>>> c = AlertCooldown(2.0, escalation=4.0)
>>> c.apply(["a", "a", "b", "a", "a"], [0, 1_000, 1_500, 1_800, 2_500], [1.0, 3.0, 1.0, 5.0, 6.0])
[True, False, True, True, False]
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence

# Chosen on the evaluation suites (see the README's quality section), where one row is one second.
# NAB's score weighs found incidents against false alarms as an operator would. With the all-history
# threshold: a 50 s cooldown gave -55 (worse than silence), 300 s 25.0, 600 s or more less again, as
# quiet periods started by false alarms swallowed real incidents; escalation at 8x then recovered most
# of those (NAB 31.5, windows found 0.75 -> 0.87; 4x gave 28.5, 2x 22.6). With the default threshold
# (the last 2,000 scores) the two give 26.9. With the rise gate (streamer.gate, on for windowed models)
# 300 s is still NAB's best (0 / 50 / 120 / 200 / 300 / 600 s: -50.3 / 53.6 / 55.8 / 53.9 / 56.1 / 54.2);
# without the gate (dense, vae) 120 s nearly doubles the false alarms of SMAP and MSL against 300 s
# (3.2 and 5.6 per 1,000 events against 1.8 and 3.0). None of them changes the point-wise F1 of SMAP,
# MSL or ASD. With novelty (streamer.novelty, on for windowed models of one feature) NAB's best moved
# to 120 s (at b978f03, history 5,000: 62.9 at 120 s, 61.3 at 200 s, 59.0 at 300 s), so `auto` gives
# 120 s where novelty is on.
DEFAULT_COOLDOWN_S = 300.0
NOVELTY_COOLDOWN_S = 120.0
DEFAULT_ESCALATION = 8.0
# An entity's event time further back than this (or than one cooldown, if longer) from its last
# published alert is a clock set back: a device reset to 1970 would otherwise keep it quiet for 56
# years. Within it, times out of order are repeats of that alert (two producers' clocks apart).
CLOCK_JUMP_MS = 3_600_000.0


class AlertCooldown:
    """Per key, the time before which no further alert is published (and the score of the last one
    published); bounded to ``max_keys`` keys, the least recently alerted forgotten first."""

    def __init__(self, cooldown_s: float, escalation: float = 0.0, max_keys: int = 100_000) -> None:
        """``escalation``: 0 = off, else >= 1 (see the module docstring)."""
        if not cooldown_s >= 0:
            raise ValueError(f"cooldown_s must be >= 0, got {cooldown_s}")
        if not (escalation == 0 or escalation >= 1):
            raise ValueError(f"escalation must be 0 (off) or >= 1, got {escalation}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be positive, got {max_keys}")
        self.escalation = escalation
        self.max_keys = max_keys
        self.set_period(cooldown_s)
        # key -> (quiet until (ms), score of its last published alert); most recently alerted last
        self._last: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def set_period(self, cooldown_s: float) -> None:
        """A new quiet period for alerts from now on (keys already quiet stay so until their time)."""
        if not cooldown_s >= 0:
            raise ValueError(f"cooldown_s must be >= 0, got {cooldown_s}")
        self.cooldown_ms = cooldown_s * 1000.0
        self._jump_ms = max(CLOCK_JUMP_MS, self.cooldown_ms)

    def apply(
        self,
        keys: Sequence[Hashable],
        times_ms: Sequence[float],
        scores: Sequence[float] | None = None,
    ) -> list[bool]:
        """Alerting events in arrival order (their keys, event times in ms and, for escalation, their
        scores) -> whether each is published. A suppressed alert does not extend the quiet period."""
        if len(keys) != len(times_ms):
            raise ValueError(f"{len(keys)} keys for {len(times_ms)} times")
        if self.cooldown_ms == 0:
            return [True] * len(keys)
        if scores is None:
            if self.escalation:
                raise ValueError("escalation needs the alerts' scores")
            scores = [0.0] * len(keys)
        elif len(scores) != len(keys):
            raise ValueError(f"{len(keys)} keys for {len(scores)} scores")
        last, factor = self._last, self.escalation
        out = []
        for key, t, score in zip(keys, times_ms, scores, strict=True):
            previous = last.get(key)
            if (
                previous is not None
                # an event time more than CLOCK_JUMP_MS (or a cooldown) before the last published
                # alert is a clock set back, not a repeat of that alert; closer than that (two
                # producers' clocks a few minutes apart, a partition catching up) it is a repeat
                and previous[0] - self.cooldown_ms - self._jump_ms <= t < previous[0]
                and not (factor and previous[1] > 0 and score >= factor * previous[1])
            ):
                out.append(False)
                continue
            out.append(True)
            last.pop(key, None)
            last[key] = (t + self.cooldown_ms, score)
        while len(last) > self.max_keys:
            last.popitem(last=False)
        return out
