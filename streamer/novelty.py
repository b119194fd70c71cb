"""Novelty: how unlike anything its entity showed recently an event's window is.

A reconstruction error says how badly the model, trained once, redraws a window. It cannot say whether
the series has already shown that shape since: a daily peak the model never learnt keeps scoring high
every day. Novelty is the other half. For every event of a windowed model, ``NoveltyMemory`` keeps
the entity's last ``history`` rows, and measures the distance from the event's window (its last
``window`` rows) to the ``k``-th nearest window among those that end ``exclusion`` to ``history``
rows earlier (the ``k``-th, not the nearest, so that an incident seen once is still new the second
time, and overlapping windows do not match themselves). This is the left ``k``-nearest-neighbour
distance of discord discovery, computed on the entity's own recent past.

The pipeline weighs the model's score by it: ``sqrt(error) * novelty / typical novelty``, where the
typical novelty is the entity's running geometric mean (a plain mean of logs over its first
``1 / alpha`` windows, then an exponential one), so that each entity's weight is about 1 when nothing
is new, whatever its noise level. Rows are compared as the model sees them (its scaler's centred,
scaled and clipped values), so one absurd reading moves a distance no more than it moves the model's
input; an exact repeat (distance 0) weighs least and does not enter the typical novelty.
Until an entity has ``warmup`` novelty values (its first 99 rows at W = 32: 49 before the first
distance), or while fewer than ``k`` earlier windows exist, the weight is 1. On NAB this took conv's
corpus score from 54.2 to 61.5 with a 120-row cooldown (README, detection quality).

Seasonal novelty (``seasonal=True``, the pipeline's default: ``events.novelty_seasonal``): where an
entity's rows repeat with a period (``estimate_period``, from its kept rows at 600 rows and then every
``history`` rows; a period found stands until another is found), a window is compared only with the
windows ending a whole number of periods before it, within ``phase_tolerance`` rows, and with every
window while fewer than ``k`` such exist. A usual shape at an unusual time, or a usual time without its
shape, is then new: with every window as candidates, it was not.

Cost: one ``(rows, history) x (window * features)`` product per entity and batch, so about
``history * window * features`` multiply-adds per event, plus a fixed cost per entity and batch
(~150-250 us) that dominates where keys have one or two events per batch; on by default (``auto``)
only for windowed models of one feature. Memory: ``history + window - 1`` float32 rows per entity,
entities capped by ``events.window_memory_mb`` (a budget of their own beside the windows'; the
least recently seen go first).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import structlog
import torch
from numpy.lib.stride_tricks import as_strided, sliding_window_view

log = structlog.get_logger(__name__)

# Distinct keys in one batch from which novelty's fixed cost per key and batch (~150-250 us) is
# logged as the likely bottleneck (novelty_many_keys, at most every _MANY_KEYS_EVERY_S seconds).
_MANY_KEYS = 1_000
_MANY_KEYS_EVERY_S = 600.0
# Query windows compared at a time, at most (fewer with a long history: see _CHUNK_ELEMENTS).
_QUERY_CHUNK = 1_024
# The exponential mean's weights are applied in closed form over at most this many values at a time
# (1 / (1 - alpha) ** n stays far inside float64 for alpha 0.001).
_EWMA_CHUNK = 20_000
# Centred values up to this size keep every float32 sum of squares finite (W x F up to 10^7 terms);
# below _FLOAT32_TINY their squares would flush to zero.
_FLOAT32_SAFE = 1e15
_FLOAT32_TINY = 1e-15
# A distance below this fraction of the entity's typical novelty is an exact repeat (0, or float
# noise around it): it weighs this much, the least, and does not enter the typical novelty.
_REPEAT = 1e-6
# A (queries, candidates) block holds at most about this many numbers (~16 MB of float32; at the
# default history of 2,000 rows, 1,024 queries at a time).
_CHUNK_ELEMENTS = 4_000_000
# Up to this many query windows of a key in a batch, each is compared with its candidates directly
# in float64 (_few_exact) rather than through the float32 product and top-k.
_FEW_QUERIES = 6
# Candidates picked on float32 distances beyond the k needed, whose distances are then taken exactly:
# room for float32's rounding to misorder near ties.
_SPARE = 4
# Seasonal novelty: an entity's period is first estimated once it has this many rows (so periods up
# to half of it: a day of 5-minute data), then again every `history` rows, from the rows kept.
PERIOD_FIRST_ROWS = 600
# A lag is the period where the rows' autocorrelation peaks there at PERIOD_MIN_ACF or more, at least
# PERIOD_MIN_DEPTH above its lowest value at any shorter lag (a cycle goes down and comes back; a
# smooth series' slowly falling autocorrelation does not), and among such peaks within
# PERIOD_TIE of the highest it is the shortest (a period's multiples peak about as high).
PERIOD_MIN_ACF = 0.5
PERIOD_MIN_DEPTH = 0.5
PERIOD_TIE = 0.05
PERIOD_MIN = 4
# Windows "at the same phase": within a 24th of the period (an hour of a daily cycle) of it.
PHASE_FRACTION = 24


def phase_tolerance(period: int) -> int:
    """Rows either side of a whole number of periods that still count as the same phase."""
    return max(1, round(period / PHASE_FRACTION))


def estimate_period(rows: np.ndarray) -> int | None:
    """The rows' period (rows per cycle), or None where they do not repeat (see PERIOD_MIN_ACF).

    The autocorrelation at each lag (unbiased: each lag's sum over its own number of pairs), summed
    over the features that vary; non-finite values count as their feature's mean. Lags from
    PERIOD_MIN to half the rows, so that a period is seen at least twice.
    """
    x = np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)
    n = len(x)
    if n < 2 * PERIOD_MIN + 2:
        return None
    finite = np.isfinite(x)
    x = np.where(finite, x, 0.0)
    counts = finite.sum(axis=0)
    means = np.divide(x.sum(axis=0), counts, out=np.zeros(x.shape[1]), where=counts > 0)
    x = np.where(finite, x - means, 0.0)
    x = x[:, x.std(axis=0) > 0]
    if not x.shape[1]:
        return None
    spectrum = np.fft.rfft(x, 2 * n, axis=0)  # zero-padded: linear, not circular, correlation
    acov = np.fft.irfft(spectrum * np.conj(spectrum), axis=0)[: n // 2 + 1].sum(axis=1)
    acov /= np.arange(n, n - len(acov), -1)
    if not acov[0] > 0:
        return None
    acf = acov / acov[0]
    lags = np.arange(PERIOD_MIN, len(acf) - 1)
    peak = (acf[lags] > acf[lags - 1]) & (acf[lags] >= acf[lags + 1])
    lowest = np.minimum.accumulate(acf)  # lowest[k]: min over lags 0..k
    good = peak & (acf[lags] >= PERIOD_MIN_ACF) & (acf[lags] - lowest[lags - 1] >= PERIOD_MIN_DEPTH)
    if not good.any():
        return None
    found = lags[good]
    top = acf[found].max()
    return int(found[acf[found] >= top - PERIOD_TIE].min())


@dataclass(slots=True)
class _Entity:
    rows: np.ndarray  # (r, F) float32, the last history + window - 1 rows
    seen: int  # rows ever seen (complete windows exist from row window - 1 on)
    count: int  # novelty values folded into the running mean
    mean_log: float  # the running mean of log novelty
    period: int | None = None  # rows per cycle, where the entity's rows repeat (seasonal only)


class NoveltyMemory:
    """Per-entity left k-nearest-neighbour distances of windows, and the weight they give a score."""

    def __init__(
        self,
        window: int,
        n_features: int,
        *,
        history: int = 2_000,
        k: int = 3,
        exclusion: int | None = None,
        warmup: int = 50,
        alpha: float = 0.001,
        max_entities: int = 100_000,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
        seasonal: bool = False,
    ) -> None:
        if window < 2:
            raise ValueError(f"window must be at least 2, got {window}")
        if n_features < 1:
            raise ValueError(f"n_features must be positive, got {n_features}")
        # (half the history at most: a window longer than the history still has candidates)
        exclusion = max(1, min(window, history) // 2) if exclusion is None else exclusion
        if not 1 <= exclusion < history:
            raise ValueError(
                f"exclusion must be in [1, history), got {exclusion} (history {history})"
            )
        if k < 1 or warmup < 0 or not 0.0 < alpha <= 1.0 or max_entities < 1:
            raise ValueError("k and max_entities must be positive, warmup >= 0, alpha in (0, 1]")
        self.window, self.n_features = window, n_features
        self.history, self.k, self.exclusion = history, k, exclusion
        self.warmup, self.alpha, self.max_entities = warmup, alpha, max_entities
        # Rows go through this before distances are taken: the model's scaler (centred, scaled and
        # clipped as the model sees them), so that no feature outweighs the others by its unit
        # alone, and one absurd reading moves a distance no further than it moves the model's input.
        self.transform = transform
        # Where an entity's rows repeat with a period (estimate_period), a window is compared only
        # with windows at the same phase of earlier cycles: see the module docstring.
        self.seasonal = seasonal
        # Queries compared at a time: their (queries, candidates) block stays near _CHUNK_ELEMENTS.
        self.query_chunk = max(1, min(_QUERY_CHUNK, _CHUNK_ELEMENTS // (history + _QUERY_CHUNK)))
        # The exponential mean's closed form over at most this many values: (1 - alpha)^-n stays
        # below e^600, inside float64.
        self.ewma_chunk = (
            max(1, min(_EWMA_CHUNK, int(600.0 / -math.log1p(-alpha)))) if alpha < 1 else 1
        )
        self._entities: OrderedDict[Hashable, _Entity] = OrderedDict()
        self._many_keys_logged_at = -math.inf

    def __len__(self) -> int:
        return len(self._entities)

    @staticmethod
    def bytes_per_entity(window: int, n_features: int, history: int) -> int:
        return (history + window - 1) * n_features * 4

    def weigh(self, scores: np.ndarray, x: np.ndarray, entities: Sequence[Hashable]) -> np.ndarray:
        """``sqrt(scores) * weight`` for the rows ``x`` (B, F) in arrival order, and remember them."""
        return np.sqrt(np.maximum(np.asarray(scores, dtype=np.float64), 0.0)) * self.weights(
            x, entities
        )

    def weights(self, x: np.ndarray, entities: Sequence[Hashable]) -> np.ndarray:
        """Each row's novelty over its entity's typical novelty (1 while unknown); rows are then kept."""
        n = len(x)
        if len(entities) != n:
            raise ValueError(f"{len(entities)} entities for {n} rows")
        out = np.ones(n, dtype=np.float64)
        if n == 0:
            return out
        rows = np.asarray(x, dtype=np.float32).reshape(n, self.n_features)
        if self.transform is not None:
            with np.errstate(over="ignore", invalid="ignore"):
                rows = np.asarray(self.transform(rows), dtype=np.float32)
        if np.isnan(rows).any():  # the decoder passes none; kept apart from every window as inf
            rows = np.where(np.isnan(rows), np.float32(np.inf), rows)
        code_of = {entity: i for i, entity in enumerate(dict.fromkeys(entities))}
        if len(code_of) >= _MANY_KEYS and (
            time.monotonic() - self._many_keys_logged_at >= _MANY_KEYS_EVERY_S
        ):
            self._many_keys_logged_at = time.monotonic()
            log.warning(
                "novelty_many_keys",
                keys=len(code_of),
                events=n,
                hint="novelty costs ~150-250 us per key and batch; where it limits throughput, "
                "larger batches or events.novelty = false give it back",
            )
        codes = np.fromiter(map(code_of.__getitem__, entities), dtype=np.intp, count=n)
        order = np.argsort(codes, kind="stable")
        bounds = np.cumsum(np.bincount(codes, minlength=len(code_of)))
        start = 0
        for entity, stop in zip(code_of, bounds.tolist(), strict=True):
            idx = order[start:stop]
            out[idx] = self._entity_weights(entity, rows[idx])
            start = stop
        while len(self._entities) > self.max_entities:
            self._entities.popitem(last=False)
        return out

    def _entity_weights(self, entity: Hashable, new: np.ndarray) -> np.ndarray:
        state = self._entities.pop(entity, None)
        if state is None:
            state = _Entity(np.empty((0, self.n_features), np.float32), 0, 0, 0.0)
        if not self.seasonal:
            weights = self._part_weights(state, new)
        else:
            # The period is estimated again at fixed counts of the entity's rows, from the rows kept
            # before that one: which rows a batch holds does not change any weight.
            parts, i = [], 0
            while i < len(new):
                step = self._next_estimate(state.seen) - state.seen
                if step == 0:
                    # a period found stands until another is found: over longer spans a cycle's
                    # jitter (a daily job starting a few minutes early or late) blurs the peak
                    found = estimate_period(state.rows)
                    state.period = state.period if found is None else found
                    step = self._next_estimate(state.seen + 1) - state.seen
                parts.append(self._part_weights(state, new[i : i + step]))
                i += step
            weights = np.concatenate(parts) if parts else np.ones(0)
        self._entities[entity] = state
        return weights

    def _next_estimate(self, seen: int) -> int:
        """The first count of rows, at least ``seen``, at which the period is estimated: at
        ``PERIOD_FIRST_ROWS`` rows, then every ``history`` rows."""
        if seen <= PERIOD_FIRST_ROWS:
            return PERIOD_FIRST_ROWS
        return PERIOD_FIRST_ROWS + -(-(seen - PERIOD_FIRST_ROWS) // self.history) * self.history

    def _part_weights(self, state: _Entity, new: np.ndarray) -> np.ndarray:
        """The weights of an entity's next rows, which are then kept (``state`` updated in place)."""
        w, n = self.window, len(new)
        seq = np.concatenate([state.rows, new])
        p = len(state.rows)
        first_complete = max(0, w - 1 - (state.seen - p))  # in seq: windows ending here or later
        dist = np.full(n, np.nan)
        if len(seq) >= w:
            f = self.n_features  # each window of W rows as one vector: a view of the rows
            flat = as_strided(
                seq,
                shape=(len(seq) - w + 1, w * f),
                strides=(f * seq.itemsize, seq.itemsize),
                writeable=False,
            )
            for lo in range(0, n, self.query_chunk):
                hi = min(n, lo + self.query_chunk)
                d = self._kth_distances(flat, p + lo, p + hi, first_complete, state.period)
                if state.period is not None and not np.isfinite(d).all():
                    # fewer than k windows at the same phase yet (or a window holding a value
                    # that is not finite: inf either way): compared with every window
                    plain = self._kth_distances(flat, p + lo, p + hi, first_complete)
                    d = np.where(np.isfinite(d), d, plain)
                dist[lo:hi] = d
        weights = self._fold(state, dist)
        keep = self.history + w - 1
        state.rows = seq[-keep:].copy() if len(seq) > keep else seq
        state.seen += n
        return weights

    def _kth_distances(
        self,
        flat: np.ndarray,
        q_lo: int,
        q_hi: int,
        first_complete: int,
        period: int | None = None,
    ) -> np.ndarray:
        """For the windows ending at seq rows [q_lo, q_hi): the k-th smallest distance to a complete
        window ending ``exclusion`` to ``history - 1`` rows before it (NaN with fewer than k).

        The nearest few are picked on float32 products (centred on the candidates' median, so that
        ``|a|^2 + |b|^2 - 2ab`` does not cancel on a series far from zero; float64 where values are
        too large for float32's squares), then their distances taken again exactly in float64: the
        result does not depend on how rows were batched, save where more than ``_SPARE`` windows tie
        with the k-th nearest within float32's rounding (a clean cycle compared with its own repeats:
        then by about 1e-8 relative, test_evaluate's lead-in test). With a ``period``, only windows at the same
        phase of an earlier cycle count (``_allowed``); inf where fewer than k of them exist.
        """
        w = self.window
        out = np.full(q_hi - q_lo, np.nan)
        ends = np.arange(q_lo, q_hi)  # the seq row each query window ends at
        ok_query = ends >= max(w - 1, first_complete)
        c_lo = max(first_complete, w - 1, q_lo - self.history + 1)
        c_hi = q_hi - self.exclusion  # exclusive
        if not ok_query.any() or c_hi - c_lo < self.k:
            return out
        qs = ends[ok_query]
        n_allowed = (
            np.minimum(qs - self.exclusion, c_hi - 1) - np.maximum(qs - self.history + 1, c_lo) + 1
        )
        enough = n_allowed >= self.k
        if not enough.any():
            return out
        cand = flat[c_lo - (w - 1) : c_hi - (w - 1)]  # window index = its end row - (w - 1)
        query = flat[qs - (w - 1)]
        if len(qs) <= _FEW_QUERIES:
            out[ok_query] = np.where(enough, self._few_exact(cand, query, qs, c_lo, period), np.nan)
            return out
        # the median of 32-odd rows spread over the candidates: one absurd row cannot move it
        spread = cand[:: max(1, len(cand) // 32)]
        centre = np.sort(spread, axis=0)[len(spread) // 2]  # a median (np.median costs 10x more)
        c, q = cand - centre, query - centre
        top = max(np.abs(c).max(), np.abs(q).max())
        if not _FLOAT32_TINY < top < _FLOAT32_SAFE:
            # squares that float32 cannot hold, or that it flushes to zero (or values that are not
            # finite: the model's error dead-letters those events, but their rows stay in history)
            c, q = c.astype(np.float64), q.astype(np.float64)
        c, q = torch.from_numpy(np.ascontiguousarray(c)), torch.from_numpy(np.ascontiguousarray(q))
        d2 = torch.addmm((c * c).sum(1)[None, :], q, c.T, alpha=-2.0)  # |c|^2 - 2qc: |q|^2 aside
        allowed = self._allowed(np.arange(c_lo, c_hi), qs, period)
        d2.masked_fill_(torch.from_numpy(~allowed), math.inf)
        pick = min(self.k + _SPARE, d2.shape[1])
        nearest = d2.topk(pick, dim=1, largest=False).indices.numpy()  # (n, pick) candidate rows
        diff = cand[nearest].astype(np.float64) - query.astype(np.float64)[:, None, :]
        exact = np.einsum("npj,npj->np", diff, diff)
        exact[np.take_along_axis(d2.numpy(), nearest, axis=1) == math.inf] = math.inf
        kth = np.sort(exact, axis=1)[:, self.k - 1]
        out[ok_query] = np.where(enough, np.sqrt(kth), np.nan)
        return out

    def _allowed(
        self, c_ends: np.ndarray, q_ends: np.ndarray, period: int | None = None
    ) -> np.ndarray:
        """(queries, candidates): whether the candidate window, ending at seq row ``c_ends[j]``, ends
        ``exclusion`` to ``history - 1`` rows before the query window ending at ``q_ends[i]``; with
        a ``period``, also within ``phase_tolerance(period)`` rows of a whole number of periods
        (at least one) before it."""
        q, c = len(q_ends), len(c_ends)
        if q <= _FEW_QUERIES:  # a key's event or two (the usual case with many keys): directly
            return self._gap_allowed(q_ends[:, None] - c_ends[None, :], period)
        # From a table of the gaps that occur: comparisons (and a modulo) once per gap, not per pair
        lo = int(q_ends.min()) - int(c_ends.max())
        table = self._gap_allowed(np.arange(lo, int(q_ends.max()) - int(c_ends.min()) + 1), period)
        if q_ends[-1] - q_ends[0] == q - 1 and c_ends[-1] - c_ends[0] == c - 1:
            # both runs of consecutive rows (as they always are here): row i of the answer is the
            # table read backwards from gap q_ends[i] - c_ends[0], so each row is a window of the
            # reversed table, one copy in all
            back = np.ascontiguousarray(table[::-1])
            first = len(table) - 1 - (int(q_ends[0]) - int(c_ends[0]) - lo)
            return sliding_window_view(back, c)[first - np.arange(q)]
        return table[q_ends[:, None] - c_ends[None, :] - lo]

    def _gap_allowed(self, gap: np.ndarray, period: int | None) -> np.ndarray:
        """Whether a candidate window ending ``gap`` rows before a query window may be its neighbour."""
        ok = (gap >= self.exclusion) & (gap < self.history)
        if period is not None:
            tol, phase = phase_tolerance(period), gap % period
            ok &= (gap >= period - tol) & ((phase <= tol) | (phase >= period - tol))
        return ok

    def _few_exact(
        self,
        cand: np.ndarray,
        query: np.ndarray,
        qs: np.ndarray,
        c_lo: int,
        period: int | None = None,
    ) -> np.ndarray:
        """The k-th distances of a few queries against their allowed candidates, by direct
        differences (no cancellation; sums in float64): cheaper than the product path where a key
        has only an event or two in the batch, the usual case with many keys."""
        lo = max(0, int(qs[0]) - self.history + 1 - c_lo)  # the union of the queries' candidates
        hi = int(qs[-1]) - self.exclusion - c_lo + 1
        diff = cand[None, lo:hi] - query[:, None, :]  # (n, C, D) float32
        d2 = np.einsum("ncj,ncj->nc", diff, diff, dtype=np.float64)
        d2[~self._allowed(c_lo + lo + np.arange(hi - lo), qs, period)] = math.inf
        kth = np.partition(d2, self.k - 1, axis=1)[:, self.k - 1]
        with np.errstate(invalid="ignore"):
            return np.sqrt(kth)

    def _fold(self, state: _Entity, dist: np.ndarray) -> np.ndarray:
        """Weights from the running mean before each value, then the values folded into it."""
        weights = np.ones(len(dist), dtype=np.float64)
        finite = np.isfinite(dist)
        # an exact repeat (distance 0, or float noise around it): the least weight, and not folded
        # in, since a log of 0 would drag the typical novelty down without end
        repeat = finite & (dist <= _REPEAT * math.exp(state.mean_log) if state.count else dist <= 0)
        valid = np.flatnonzero(finite & ~repeat)
        # a repeat weighs least once its entity is out of warm-up (counted in values folded before it)
        folded_before = state.count + np.cumsum(finite & ~repeat) - (finite & ~repeat)
        weights[repeat & (folded_before >= max(self.warmup, 1))] = _REPEAT
        if not len(valid):
            return weights
        logs = np.log(dist[valid])
        before = np.empty(len(logs))
        count, mean = state.count, state.mean_log
        i = 0
        # Phase 1: a plain mean of the logs while 1 / count > alpha.
        plain = max(0, min(len(logs), int(np.ceil(1.0 / self.alpha)) - count))
        if plain:
            sums = count * mean + np.concatenate([[0.0], np.cumsum(logs[:plain])])
            counts = count + np.arange(plain + 1)
            means = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
            before[:plain] = means[:plain]
            count, mean, i = count + plain, float(means[plain]), plain
        # Phase 2: an exponential mean, m_j = (1 - a) m_{j-1} + a l_j, in closed form per chunk.
        r = 1.0 - self.alpha
        while i < len(logs):
            chunk = logs[i : i + self.ewma_chunk]
            j = np.arange(1, len(chunk) + 1)
            acc = np.cumsum(self.alpha * chunk * r ** (-j))
            after = r**j * (mean + acc)
            before[i : i + len(chunk)] = np.concatenate([[mean], after[:-1]])
            count, mean, i = count + len(chunk), float(after[-1]), i + len(chunk)
        counts_before = state.count + np.arange(len(logs))
        ready = counts_before >= max(self.warmup, 1)
        weights[valid] = np.where(ready, np.exp(logs - before), 1.0)
        state.count, state.mean_log = count, mean
        return weights
