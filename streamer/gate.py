"""The rise gate: an alert is published only while its key's recent scores stand out from the key's own
history.

A quantile threshold flags about ``1 - q`` of every key's events, whatever happens in them: a noisy but
healthy sensor alerts as often as a failing one. The gate asks a second question of each exceedance,
the one behind Numenta's anomaly likelihood: are this key's last few scores, taken together, unusually
high for this key? Per key it keeps exponentially weighted averages of every score's square root (the
error's magnitude, whose tail is lighter than the squared error's): a short one (span ``short``, about
the last 10 events) and the mean and variance of a long one (span ``long``, about the last 3,000). An
exceedance passes while

    (short mean - long mean) / long standard deviation >= z

with the long statistics taken before the event, so a spike does not raise its own bar. A lone
outlier in a noisy key moves the short mean little; a key whose scores rise together opens the gate.

Like the cooldown, the gate acts on what is published, after the threshold has seen every score: it
changes neither the threshold nor the point-wise decisions. Every key starts from the prior, taken from
the model's scores on held-back normal data, so a new key needs no warm-up. The state is three numbers per
key, bounded to ``max_keys`` keys (the least recently seen forgotten first).

All of it is vectorised over the batch: events are grouped by key with one stable sort, and each
average runs as one linear filter (``scipy.signal.lfilter``) over all the keys' events laid end to end.
Each key's own starting point is then put in by a correction: at a key's ``k``-th event, the filter's
output carries ``c ** (k + 1)`` times whatever the filter held when the key's events began (``c`` the
decay), so adding ``c ** (k + 1)`` times (the key's state minus that value) gives exactly the key's own
average (each key's values scaled to its own magnitude, so that no key's scale leaks into another's
precision). Python code runs once per new or forgotten key, not once per event.

>>> g = AlertGate(z=2.0, prior=(1.0, 0.1))
>>> z = g.zscores(np.array([1.0, 1.1, 9.0, 9.0, 9.0]), ["a", "a", "a", "a", "b"])
>>> (z >= 2.0).tolist()
[False, False, True, True, True]
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from itertools import repeat
from typing import Literal

import numpy as np

from streamer.args import auto_or_number

DEFAULT_GATE_Z = 2.0
DEFAULT_SHORT = 10
# The long span: 3,000 events of a key's history (ten days of five-minute data) make its normal
# variability steadier than 1,000 did: NAB 65.6 -> 66.6 alone, and with the gated threshold's cap of 1.5
# (streamer.config.GATED_ALERT_CAP) 67.5 at 2,000 and 68.2 at 3,000 (README, detection quality).
DEFAULT_LONG = 3_000
_MAX_SCORE = 1e100  # scores are clipped here, so that squares stay finite
# A key's state, a column of three: the short mean, then the long mean and long mean of squares,
# which are filtered together (rows 1:).
_SHORT, _LONG = 0, slice(1, 3)


def gate_z_arg(text: str) -> float | Literal["auto"]:
    """A command-line value of ``events.alert_gate_z``: ``auto`` or a number from 0 to 1000."""
    return auto_or_number(text, 0.0, 1e3)


def _root(scores: np.ndarray) -> np.ndarray:
    """What the gate averages: each score's square root (its sign kept; NaN as 0, the rest clipped).

    Scores are squared errors, whose tail is heavy: one large score would swell a key's long variance
    for about ``long`` events and hide whatever rise came next. The root (an error's magnitude) keeps
    that tail light. On NAB it took the corpus score from 51.1 to 56.1 (48.0 -> 52.4 and 50.4 -> 54.3
    with two other training seeds).
    """
    x = np.clip(scores, -_MAX_SCORE, _MAX_SCORE)
    x[np.isnan(x)] = 0.0
    return np.copysign(np.sqrt(np.abs(x)), x)


def _alpha(span: int) -> float:
    """Weight of the newest value in an exponentially weighted average of span ``span`` (pandas'
    convention: the centre of mass of the weights is (span - 1) / 2 events back)."""
    return 2.0 / (span + 1.0)


class AlertGate:
    """Per key, whether its recent scores stand out from its history (see the module docstring)."""

    def __init__(
        self,
        z: float,
        prior: tuple[float, float],
        short: int = DEFAULT_SHORT,
        long: int = DEFAULT_LONG,
        max_keys: int = 100_000,
    ) -> None:
        """``prior``: (mean, standard deviation) of the square roots of normal scores, every new key's
        starting point."""
        if not z > 0:
            raise ValueError(f"z must be > 0, got {z}")
        if not 1 <= short < long:
            raise ValueError(f"need 1 <= short < long, got short={short}, long={long}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be positive, got {max_keys}")
        mean, sd = (float(v) for v in prior)
        if not (np.isfinite(mean) and np.isfinite(sd) and sd >= 0):
            raise ValueError(f"prior must be a finite mean and sd >= 0, got {prior}")
        self.z = z
        self.short = short
        self.long = long
        self.max_keys = max_keys
        self._prior = np.array([mean, mean, sd * sd + mean * mean])
        # A key's standard deviation never counts as less than this: a key whose scores have been
        # constant would otherwise open the gate on any rise at all.
        self._sd_floor = max(1e-6 * sd, 1e-12 * abs(mean), 1e-30)
        # Each key has a slot: a column of `_values` (short mean, long mean, long mean of squares)
        # and the batch in which it was last seen (`_seen`), so that a batch reads and writes every
        # key's state with one gather and one scatter. Slots of forgotten keys are reused.
        self._slot: dict[Hashable, int] = {}
        self._key_of: list[Hashable] = []
        self._free: list[int] = []
        self._values = np.empty((3, 0))
        self._seen = np.empty(0, dtype=np.int64)
        self._batch = 0
        # SciPy is imported here, when a gate is made, not when the CLI starts nor at the first batch.
        from scipy.signal import lfilter

        self._lfilter = lfilter

    @classmethod
    def from_scores(cls, z: float, scores: np.ndarray, **kwargs: int) -> AlertGate:
        """A gate whose prior is the mean and sd of the roots of ``scores`` (normal scores; none: 0
        and 1)."""
        s = np.asarray(scores, dtype=np.float64)
        s = _root(s[np.isfinite(s)])
        prior = (float(s.mean()), float(s.std())) if len(s) else (0.0, 1.0)
        return cls(z, prior, **kwargs)

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._slot

    def _slots(self, keys: Sequence[Hashable]) -> np.ndarray:
        """Each event's slot; new keys get one, starting from the prior."""
        slot_of, n = self._slot, len(keys)
        slots = np.fromiter(map(slot_of.get, keys, repeat(-1, n)), dtype=np.intp, count=n)
        new_rows = np.flatnonzero(slots < 0)
        if len(new_rows):
            new_keys = list(dict.fromkeys([keys[i] for i in new_rows.tolist()]))
            short = len(new_keys) - len(self._free)
            if short > 0:  # grow: at least double, so that growing costs O(1) per key
                grow = max(short, len(self._key_of))
                self._values = np.concatenate([self._values, np.empty((3, grow))], axis=1)
                self._seen = np.concatenate([self._seen, np.zeros(grow, dtype=np.int64)])
                top = len(self._key_of)
                self._free.extend(range(top + grow - 1, top - 1, -1))
                self._key_of.extend([None] * grow)
            for key in new_keys:
                slot = self._free.pop()
                slot_of[key] = slot
                self._key_of[slot] = key
                self._values[:, slot] = self._prior
            slots[new_rows] = np.fromiter(
                map(slot_of.__getitem__, [keys[i] for i in new_rows.tolist()]),
                dtype=np.intp,
                count=len(new_rows),
            )
        return slots

    def _forget_oldest(self) -> None:
        """Down to ``max_keys`` keys, the least recently seen forgotten first."""
        excess = len(self._slot) - self.max_keys
        if excess <= 0:
            return
        # forget a little more than needed (1 % of the cap), so the O(keys) sort below runs once
        # per ~1,000 new keys rather than once per batch
        excess = min(len(self._slot) - 1, excess + self.max_keys // 100)
        used = np.fromiter(self._slot.values(), dtype=np.intp, count=len(self._slot))
        oldest = used[np.argsort(self._seen[used], kind="stable")[:excess]]
        for slot in oldest.tolist():
            del self._slot[self._key_of[slot]]
            self._key_of[slot] = None
            self._free.append(slot)

    def zscores(self, scores: np.ndarray, keys: Sequence[Hashable]) -> np.ndarray:
        """Scores in arrival order and each one's key -> each event's rise (short mean minus long mean,
        in long standard deviations, the long ones as they stood before the event); state updated."""
        n = len(scores)
        if len(keys) != n:
            raise ValueError(f"{len(keys)} keys for {n} scores")
        if n == 0:
            return np.empty(0, dtype=np.float64)
        x = _root(np.asarray(scores, dtype=np.float64))
        slots = self._slots(keys)
        # small integers sort by radix, in linear time
        order = np.argsort(
            slots.astype(np.uint16) if len(self._key_of) <= 1 << 16 else slots, kind="stable"
        )  # events grouped by key, arrival order within
        grouped = slots[order]
        begins = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])  # each key's first event
        present = grouped[begins]  # the batch's keys (slots)
        counts = np.diff(np.r_[begins, n])
        key_index = np.repeat(np.arange(len(begins)), counts)  # each grouped event's key, 0..G-1
        rank = np.arange(n) - begins[key_index]  # its position among its key's events
        xs = x[order]
        start = self._values[:, present]  # (3, G)
        lfilter = self._lfilter
        short = _ewm(lfilter, xs, start[_SHORT], begins, key_index, rank, _alpha(self.short))
        long = _ewm(
            lfilter,
            np.stack([xs, xs * xs]),
            start[_LONG],
            begins,
            key_index,
            rank,
            _alpha(self.long),
        )
        before = np.empty_like(long)  # the long averages as they stood before each event
        before[:, 1:] = long[:, :-1]
        before[:, begins] = start[_LONG]
        last = begins + counts - 1
        self._batch += 1
        self._values[_SHORT, present] = short[last]
        self._values[_LONG, present] = long[:, last]
        self._seen[present] = self._batch
        self._forget_oldest()
        mean, square = before
        sd = np.sqrt(np.maximum(square - mean * mean, 0.0))
        out = np.empty(n)
        out[order] = (short - mean) / np.maximum(sd, self._sd_floor)
        return out


def _ewm(
    lfilter: Callable[..., np.ndarray],
    values: np.ndarray,
    initial: np.ndarray,
    first: np.ndarray,
    grouped: np.ndarray,
    rank: np.ndarray,
    alpha: float,
) -> np.ndarray:
    """Per key, y[k] = (1 - alpha) * y[k - 1] + alpha * values[k] from y[-1] = the key's ``initial``,
    along the last axis of ``values``: the events of every key laid end to end (key ``grouped[k]``,
    its ``rank[k]``-th event; key ``j``'s events begin at ``first[j]``); ``lfilter`` is SciPy's."""
    # Each key's values and state are divided by the key's own largest magnitude first: what one key
    # leaves in the filter is then of the order of 1 for the next key too, whatever their scales, so
    # taking it out again costs no precision (a key scoring 1e12 next to one scoring 1e-3).
    size = np.maximum(np.maximum.reduceat(np.abs(values), first, axis=-1), np.abs(initial))
    size[size == 0] = 1.0
    per_event = size[..., grouped]
    c = 1.0 - alpha
    y = lfilter([alpha], [1.0, -c], values / per_event, axis=-1)  # from zero
    # what the one filter held when each key's events began (0 before the first key)
    carried = np.zeros(initial.shape)
    inner = first > 0
    carried[..., inner] = y[..., first[inner] - 1]
    y += (initial / size - carried)[..., grouped] * c ** (rank + 1.0)
    return np.asarray(y * per_event)
