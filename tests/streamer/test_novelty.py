"""Novelty: left k-nearest-neighbour distances of each entity's windows, and the score weight."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from models.scaling import RobustScaler
from streamer.config import EventSettings, ThresholdSettings
from streamer.novelty import (
    PERIOD_FIRST_ROWS,
    NoveltyMemory,
    _Entity,
    estimate_period,
    phase_tolerance,
)
from streamer.pipeline import Message, Pipeline


def brute_force(x: np.ndarray, w: int, k: int, exclusion: int, history: int) -> np.ndarray:
    """The definition, one window at a time: the k-th smallest distance from the window ending at
    row e to a window ending ``exclusion`` to ``history - 1`` rows before it."""
    windows = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), w, axis=0)
    windows = windows.reshape(len(windows), -1)
    out = np.full(len(x), np.nan)
    for e in range(w - 1, len(x)):
        i = e - w + 1
        earlier = [j for j in range(len(windows)) if i - history < j <= i - exclusion]
        if len(earlier) >= k:
            d = np.sort(np.sqrt(((windows[earlier] - windows[i]) ** 2).sum(axis=1)))
            out[e] = d[k - 1]
    return out


def distances(
    memory: NoveltyMemory, parts: list[np.ndarray], entities: list[str] | None = None
) -> np.ndarray:
    """The distances the memory works out for each row (before they become weights), batch after
    batch, in the order it folds them: entity by entity within a batch (one entity: row order)."""
    seen: list[np.ndarray] = []
    fold = memory._fold

    def capture(state, dist):  # type: ignore[no-untyped-def]
        seen.append(dist.copy())
        return fold(state, dist)

    memory._fold = capture  # type: ignore[method-assign]
    for part in parts:
        memory.weights(part, entities or ["a"] * len(part))
    return np.concatenate(seen)


@pytest.mark.parametrize("sizes", [[400], [1, 7, 40, 152, 3, 197], [33] * 12 + [4]])
def test_distances_follow_the_definition_across_batches_and_the_history_bound(
    sizes: list[int],
) -> None:
    rng = np.random.default_rng(0)
    x = (np.cumsum(rng.normal(size=(sum(sizes), 2)), axis=0) + 1e4).astype(np.float32)
    want = brute_force(x, w=8, k=3, exclusion=4, history=90)
    memory = NoveltyMemory(8, 2, history=90, k=3, exclusion=4, warmup=0)
    parts = np.split(x, np.cumsum(sizes)[:-1])
    got = distances(memory, parts)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    # the first whole window ends at row 7; the third earlier one for a window 4 rows on: row 13
    assert np.isnan(got[:13]).all() and np.isfinite(got[13:]).all()
    # float32 products, centred: close to float64 even 10,000 units from zero
    np.testing.assert_allclose(got[13:], want[13:], rtol=1e-3)
    assert len(memory._entities["a"].rows) == 90 + 8 - 1


def test_entities_are_kept_apart_and_the_least_recently_seen_forgotten() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 1)).astype(np.float32)
    entities = ["a", "b", "c"] * 100
    memory = NoveltyMemory(4, 1, history=50, k=1, exclusion=2, warmup=0, max_entities=2)
    got = distances(memory, [x], entities)  # folded entity by entity: a's rows, then b's, then c's
    for i, part in enumerate(np.split(got, 3)):
        want = brute_force(x[i::3], w=4, k=1, exclusion=2, history=50)
        np.testing.assert_allclose(part, want, rtol=1e-4)
    assert list(memory._entities) == ["b", "c"]  # 'a' was seen first in the batch, so it goes first


def test_weights_are_the_novelty_over_the_running_geometric_mean_before_it() -> None:
    """The closed forms (plain mean of logs, then an exponential one) against the recurrence."""
    rng = np.random.default_rng(2)
    d = np.exp(rng.normal(size=2_600))
    d[[5, 50, 1_500]] = np.nan  # undefined: weight 1, not folded in
    memory = NoveltyMemory(4, 1, history=50, warmup=20, alpha=0.001)
    state = _Entity(np.empty((0, 1), np.float32), 0, 0, 0.0)
    got = np.concatenate([memory._fold(state, d[:700]), memory._fold(state, d[700:])])
    want = np.ones(len(d))
    count, mean = 0, 0.0
    for i, v in enumerate(d):
        if not np.isfinite(v):
            continue
        if count >= 20:
            want[i] = v / math.exp(mean)
        count += 1
        mean += max(1.0 / count, 0.001) * (math.log(v) - mean)
    np.testing.assert_allclose(got, want, rtol=1e-9)
    assert state.count == count and state.mean_log == pytest.approx(mean, rel=1e-12)


def test_a_shape_already_seen_weighs_less_than_a_new_one() -> None:
    """A daily cycle: its peaks are unremarkable once seen k times; a new shape is not."""
    t = np.arange(3_000)
    x = np.sin(2 * np.pi * t / 100).astype(np.float32)
    x[2_500:2_520] += np.linspace(0.0, 1.5, 20, dtype=np.float32)  # a ramp never seen before
    memory = NoveltyMemory(16, 1, history=1_000)
    w = memory.weights(x[:, None], ["s"] * len(x))
    # warm-up: 50 values from the first row with 3 earlier windows (15 + 8 + 2 = 25): rows 0-74
    assert (w[:75] == 1.0).all() and w[75] != 1.0
    assert np.median(w[1_000:2_500]) < 2
    assert w[2_505:2_525].max() > 20 * np.median(w[1_000:2_500])


class OneFeature:
    """A windowed scorer of one feature whose score is the square of the window's last value."""

    kind = "conv"
    name = "last"
    version = "v1"
    features = ("v",)

    def __init__(self, window: int = 8) -> None:
        self.window = window
        self.train_scores = np.linspace(0.0, 4.0, 1_000)

    def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        last = x[:, -1, :] if x.ndim == 3 else x
        err = (last.astype(np.float64) ** 2).astype(np.float32)
        return err.sum(axis=1).astype(np.float64), err


def pipeline(scorer: OneFeature, **events: object) -> Pipeline:
    return Pipeline(scorer, ThresholdSettings(q=0.99), EventSettings(**events))  # type: ignore[arg-type]


def batch(values: np.ndarray, start: int = 0, key: bytes = b"s") -> list[Message]:
    return [
        Message(orjson.dumps({"v": float(v)}), key, "in", 0, start + i, 1_000 * (start + i))
        for i, v in enumerate(values)
    ]


def test_auto_weighs_windowed_models_of_one_feature_and_seeds_on_the_same_scale() -> None:
    on = pipeline(OneFeature())
    assert on._novelty is not None
    # the threshold starts from the roots of the held-back scores, as scores are now roots x weight
    assert on.threshold.get() == pytest.approx(
        np.quantile(np.sqrt(np.linspace(0, 4, 1_000)), 0.99), rel=0.02
    )
    assert pipeline(OneFeature(), novelty=False)._novelty is None
    assert (
        pipeline(OneFeature(window=1))._novelty is None
    )  # a model of single rows: nothing to compare

    class Two(OneFeature):
        features = ("v", "w")

    assert pipeline(Two())._novelty is None  # auto: off where its cost grows with features
    assert pipeline(Two(), novelty=True)._novelty is not None

    values = np.sin(np.arange(400) / 5.0)
    result = on.process_messages(batch(values))
    base = np.sqrt(values**2)
    assert np.allclose(result.scores[:50], base[:50])  # warm-up: weight 1
    assert not np.allclose(result.scores[100:], base[100:])
    off = pipeline(OneFeature(), novelty=False).process_messages(batch(values))
    assert np.allclose(off.scores, values**2)


def test_a_swap_with_the_same_inputs_keeps_each_entitys_rows() -> None:
    p = pipeline(OneFeature())
    p.process_messages(batch(np.arange(100.0)))
    memory = p._novelty
    p.swap_model(OneFeature())
    assert p._novelty is memory and len(memory) == 1  # type: ignore[arg-type]
    p.swap_model(OneFeature(window=4))
    assert p._novelty is not memory and len(p._novelty) == 0  # type: ignore[arg-type]


def test_the_memory_cap_shares_window_memory_mb() -> None:
    p = pipeline(OneFeature(), novelty_history=1_000, window_memory_mb=1)
    assert p._novelty is not None
    assert p._novelty.max_entities == 2**20 // ((1_000 + 8 - 1) * 4)


def test_a_window_longer_than_the_history_still_finds_candidates() -> None:
    """A checkpoint may hold a window of 4,096; the exclusion is then half the history, not of W."""
    memory = NoveltyMemory(64, 1, history=40, k=1, warmup=0)
    assert memory.exclusion == 20
    x = np.random.default_rng(3).normal(size=(200, 1)).astype(np.float32)
    got = distances(memory, [x])
    np.testing.assert_allclose(got, brute_force(x, w=64, k=1, exclusion=20, history=40), rtol=1e-4)
    assert np.isfinite(got[63 + 20 :]).all()


@pytest.mark.parametrize("absurd", [1e30, np.inf, np.nan])
def test_one_absurd_row_does_not_blind_the_entity(absurd: float) -> None:
    """A value too large for float32's squares (or not finite) stays in the history for 2,000 rows;
    the other windows' distances must stay right (the ones holding it are undefined: weight 1)."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(600, 1)).astype(np.float32)
    x[100] = absurd
    memory = NoveltyMemory(8, 1, history=300, k=1, exclusion=4, warmup=0)
    got = distances(memory, [x[:250], x[250:]])
    clean = x.astype(np.float64).copy()
    want = brute_force(
        np.where(np.isfinite(clean), clean, 1e30), w=8, k=1, exclusion=4, history=300
    )
    holding = np.zeros(len(x), dtype=bool)
    holding[100:108] = True  # the windows that hold the absurd row
    ok = ~holding & np.isfinite(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-4)
    weights = NoveltyMemory(8, 1, history=300, k=1, exclusion=4, warmup=0).weights(x, ["a"] * 600)
    assert np.isfinite(weights).all()


class ScaledOneFeature(OneFeature):
    """As the real Scorer: inputs centred, scaled and clipped (to 50) before the model sees them."""

    scaler = RobustScaler(center=np.zeros(1, np.float32), scale=np.ones(1, np.float32))

    def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return super().score(self.scaler.transform(x))


def test_one_garbage_reading_does_not_blind_the_gate_to_the_next_incident() -> None:
    """Novelty sees the rows as the model does (clipped): a reading of 1e6 weighed by its raw
    distance scored 8.75e6, swelled the gate's long variance, and the real incident 1,000 rows
    later passed no alert (a reviewer's reproduction)."""
    rng = np.random.default_rng(1)
    values = rng.normal(size=4_000)
    values[2_500:2_540] += 6.0  # the incident
    values[1_500] = 1e6  # one garbage reading
    p = pipeline(ScaledOneFeature(window=32))
    published: list[int] = []
    scores = []
    for lo in range(0, len(values), 500):
        result = p.process_messages(batch(values[lo : lo + 500], start=lo))
        published += (result.valid[result.published] + lo).tolist()
        scores.append(result.scores)
    assert any(2_500 <= row < 2_600 for row in published), published
    assert np.concatenate(scores).max() < 1e4


def test_exact_repeats_weigh_least() -> None:
    """A window seen k times exactly (distance 0) weighs least, and below a merely close one: it
    was left out and weighed 1 (a quantised series repeats exactly all the time; a reviewer's
    integer sine had 1,682 such windows at weight 1 while its near repeats weighed 0.8)."""
    rng = np.random.default_rng(5)
    t = np.arange(3_000)
    x = np.round(3 * np.sin(2 * np.pi * t / 50)).astype(np.float32)
    x[:600] += rng.integers(0, 2, 600)  # a noisy start: the typical novelty forms
    x[2_000:2_003] += 1  # a small change, later
    w = NoveltyMemory(32, 1).weights(x[:, None], ["s"] * len(x))
    repeats = w[1_000:2_000]  # all exact repeats of the cycle
    assert repeats.max() < 1e-3
    assert w[2_000:2_035].max() > 1e4 * repeats.max()  # the change: close to the typical novelty
    # a series that never varied has no typical novelty: its repeats stay at 1, not 0 or NaN
    flat = NoveltyMemory(8, 1).weights(np.zeros((500, 1), np.float32), ["f"] * 500)
    assert (flat == 1.0).all()


def test_a_swap_to_a_model_that_scales_rows_differently_starts_the_history_again() -> None:
    """Kept rows are in the model's scaled units: a refitted scaler would compare windows in two units."""
    p = pipeline(ScaledOneFeature())
    p.process_messages(batch(np.arange(100.0)))
    memory = p._novelty
    p.swap_model(ScaledOneFeature())  # the same scaler: the rows carry over
    assert p._novelty is memory
    other = ScaledOneFeature()
    other.scaler = RobustScaler(center=np.zeros(1, np.float32), scale=np.full(1, 100.0, np.float32))
    p.swap_model(other)
    assert p._novelty is not memory and len(p._novelty) == 0  # type: ignore[arg-type]
    assert p._novelty.transform(np.array([[100.0]], np.float32))[0, 0] == 1.0  # type: ignore[union-attr,misc]


def test_auto_cooldown_follows_novelty() -> None:
    assert pipeline(OneFeature()).cooldown.cooldown_ms == 120_000
    assert pipeline(OneFeature(), novelty=False).cooldown.cooldown_ms == 300_000


# --- seasonal novelty: windows compared only with windows at the same phase of earlier cycles ---


def test_the_period_is_found_where_rows_repeat_and_nowhere_else() -> None:
    rng = np.random.default_rng(6)
    t = np.arange(600)
    assert estimate_period(np.sin(2 * np.pi * t / 50)[:, None]) == 50
    daily = np.where(t % 288 < 100, 1.0, 0.0) + 0.1 * rng.normal(size=600)  # two 5-minute days
    assert estimate_period(daily[:, None]) in (287, 288, 289)
    # no cycle: white noise, a random walk (its autocorrelation falls slowly, with ripples), a
    # constant, too few rows
    assert estimate_period(rng.normal(size=(600, 1))) is None
    assert estimate_period(np.cumsum(rng.normal(size=(600, 1)), axis=0)) is None
    assert estimate_period(np.zeros((600, 1))) is None
    assert estimate_period(np.sin(2 * np.pi * t[:9] / 4)[:, None]) is None
    # a cycle seen only once in the rows (period over half of them) is not a period
    assert estimate_period(np.sin(2 * np.pi * t / 400)[:, None]) is None
    # the shortest of a period's multiples; a constant feature and non-finite values ignored
    two = np.stack([np.sin(2 * np.pi * t / 30), np.ones(600)], axis=1)
    two[[10, 200], 0] = [np.inf, np.nan]
    assert estimate_period(two) == 30


def seasonal_brute_force(x: np.ndarray, w: int, k: int, exclusion: int, history: int) -> np.ndarray:
    """The seasonal definition, one window at a time: the period in force at row e is the last found
    of those estimated from the ``history + w - 1`` rows before each count of rows (600, then every
    ``history``) not after e; with one, only windows ending a whole number of periods (within the tolerance)
    before count, and where fewer than k do, every earlier window does."""
    windows = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), w, axis=0)
    windows = windows.reshape(len(windows), -1)
    keep = history + w - 1
    out = np.full(len(x), np.nan)
    for e in range(w - 1, len(x)):
        found = [
            estimate_period(x[max(0, c - keep) : c])
            for c in range(PERIOD_FIRST_ROWS, e + 1, history)
        ]
        period = next((p for p in reversed(found) if p is not None), None)
        i = e - w + 1
        earlier = [j for j in range(len(windows)) if i - history < j <= i - exclusion]
        if period is not None:
            tol = phase_tolerance(period)
            same = [
                j
                for j in earlier
                if i - j >= period - tol and min((i - j) % period, -(i - j) % period) <= tol
            ]
            earlier = same if len(same) >= k else earlier
        if len(earlier) >= k:
            d = np.sort(np.sqrt(((windows[earlier] - windows[i]) ** 2).sum(axis=1)))
            out[e] = d[k - 1]
    return out


@pytest.mark.parametrize("sizes", [[1_400], [1, 7, 599, 1, 300, 492], [33] * 42 + [14]])
def test_seasonal_distances_follow_the_definition_across_batches_and_new_periods(
    sizes: list[int],
) -> None:
    """A cycle of 50 rows, then of 40 from row 900: estimated at rows 600 (50), 900 (still 50: the
    rows before it) and 1,200 (40); a batch that crosses those counts changes nothing."""
    rng = np.random.default_rng(7)
    t = np.arange(1_400)
    x = np.where(t < 900, np.sin(2 * np.pi * t / 50), np.sin(2 * np.pi * t / 40))
    x = (x + 0.2 * rng.normal(size=len(t)))[:, None].astype(np.float32)
    memory = NoveltyMemory(8, 1, history=300, k=3, exclusion=4, warmup=0, seasonal=True)
    got = distances(memory, np.split(x, np.cumsum(sizes)[:-1]))
    want = seasonal_brute_force(x, w=8, k=3, exclusion=4, history=300)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = np.isfinite(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-4)
    assert memory._entities["a"].period == 40
    # and the seasonal restriction did change distances (it is not the plain definition)
    plain = brute_force(x, w=8, k=3, exclusion=4, history=300)
    assert (want[650:] > plain[650:] * 1.01).mean() > 0.3


def test_a_usual_shape_at_an_unusual_time_is_new_only_to_seasonal_novelty() -> None:
    """A bump at the same time of every 100-row 'day'; late on, one comes 50 rows early, and one day
    goes without it. Plain novelty has seen both windows many times (a bump, a flat stretch); the
    seasonal one compares them with the same time of earlier days, where they never occurred."""
    rng = np.random.default_rng(8)
    t = np.arange(3_000)
    bump = np.exp(-0.5 * ((np.arange(100) - 20) / 3.0) ** 2)
    x = np.tile(bump, 30) + 0.02 * rng.normal(size=len(t))
    x[2_570:2_600] += bump[5:35]  # the day's bump, early (phase 70)
    x[2_705:2_735] -= bump[5:35]  # the next day's bump, missing (phase 20)
    rows = x[:, None].astype(np.float32)
    seasonal = NoveltyMemory(16, 1, history=1_000, seasonal=True).weights(rows, ["s"] * len(t))
    plain = NoveltyMemory(16, 1, history=1_000).weights(rows, ["s"] * len(t))
    usual = slice(1_000, 2_500)
    for w in (seasonal, plain):  # the regular days weigh about 1 either way
        assert 0.5 < np.median(w[usual]) < 2
    early, missing = slice(2_570, 2_610), slice(2_705, 2_745)
    assert seasonal[early].max() > 5 * plain[early].max()
    assert seasonal[missing].max() > 5 * plain[missing].max()
    assert seasonal[early].max() > 10 * np.median(seasonal[usual])
    assert seasonal[missing].max() > 10 * np.median(seasonal[usual])


def test_the_pipeline_uses_seasonal_novelty_unless_switched_off() -> None:
    assert pipeline(OneFeature())._novelty.seasonal  # type: ignore[union-attr]
    assert not pipeline(OneFeature(), novelty_seasonal=False)._novelty.seasonal  # type: ignore[union-attr]


def test_a_period_found_stands_until_another_is_found() -> None:
    """Estimated at rows 600 and 900 from a cycle of 50, at 1,200 from noise: no period there, so
    the one found stands (a cycle's jitter over a longer span blurs its peak)."""
    rng = np.random.default_rng(9)
    t = np.arange(1_300)
    x = np.where(t < 880, np.sin(2 * np.pi * t / 50), 0.0) + 0.1 * rng.normal(size=len(t))
    memory = NoveltyMemory(8, 1, history=300, seasonal=True)
    memory.weights(x[:1_199, None].astype(np.float32), ["a"] * 1_199)
    assert memory._entities["a"].period == 50
    assert estimate_period(memory._entities["a"].rows[-307:]) is None  # what row 1,200 sees
    memory.weights(x[1_199:, None].astype(np.float32), ["a"] * 101)
    assert memory._entities["a"].period == 50


@pytest.mark.parametrize("period", [None, 5, 24, 50, 288])
def test_the_allowed_pairs_follow_their_gaps_whatever_the_shapes(period: int | None) -> None:
    """The pair mask, built directly for a few queries and from a table of gaps for more (read as
    windows of it where both runs are consecutive), against the rule applied to every pair."""
    memory = NoveltyMemory(8, 1, history=300, exclusion=4, seasonal=True)
    for q0, q1, c0, c1 in [
        (100, 150, 0, 146),
        (10, 12, 0, 7),
        (400, 700, 100, 696),
        (3, 4, 0, 300),
    ]:
        q, c = np.arange(q0, q1), np.arange(c0, c1)
        gap = q[:, None] - c[None, :]
        want = (gap >= 4) & (gap < 300)
        if period is not None:
            tol, phase = phase_tolerance(period), gap % period
            want &= (gap >= period - tol) & ((phase <= tol) | (phase >= period - tol))
        assert np.array_equal(memory._allowed(c, q, period), want)
        assert np.array_equal(memory._allowed(c[::3], q, period), want[:, ::3])  # not consecutive
