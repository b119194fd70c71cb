"""The fast paths of the hot loop agree exactly with the plain code they replace.

Each fast path (batch decoding with C-level ``map``, the threshold through River's Rust core, vectorised
entity windows, the offsets of a batch read from its end) is checked against a straightforward reference
on the same input, including the inputs that send it back to its slow path.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view
from river import stats

from streamer.batching import MicroBatcher
from streamer.decode import Decoder
from streamer.features import EntityWindows
from streamer.threshold import QuantileThreshold

FEATURES = ("a", "b")
BAD = [
    None,
    b"",
    b"{not json",
    b"[1, 2]",
    b'{"a": 1}',
    b'{"a": "1.5", "b": 2}',
    b'{"a": true, "b": 2}',
    b'{"a": null, "b": 2}',
    b'{"a": 1e39, "b": 2}',
    b'{"a": 1, "b": 2, "pad": "' + b"x" * 300 + b'"}',
]


def good(i: int) -> bytes:
    return orjson.dumps({"a": i * 0.5, "b": -i, "id": f"s{i % 7}"})


@given(
    st.integers(min_value=0, max_value=700),
    st.lists(st.tuples(st.integers(min_value=0, max_value=699), st.sampled_from(BAD)), max_size=6),
)
def test_batch_decoding_equals_message_by_message(
    n: int, bad: list[tuple[int, bytes | None]]
) -> None:
    values: list[bytes | None] = [good(i) for i in range(n)]
    for at, value in bad:
        if at < n:
            values[at] = value
    decoder = Decoder(FEATURES, 256, key_field="id")
    fast, slow = decoder.decode(values), decoder._decode_each(values)
    np.testing.assert_array_equal(fast.x, slow.x)
    assert fast.valid.tolist() == slow.valid.tolist()
    assert fast.raw == slow.raw and fast.keys == slow.keys
    assert [fast.event(i) for i in range(len(fast.raw))] == slow.objects
    assert fast.rejected == slow.rejected


@pytest.mark.parametrize("window", [None, 50])
@pytest.mark.parametrize("update_on_alert", [False, True])
def test_threshold_equals_rivers_public_api_one_by_one(
    window: int | None, update_on_alert: bool
) -> None:
    rng = np.random.default_rng(4)
    warm, scores = rng.exponential(size=500), rng.exponential(size=3_000)
    scores[::97] *= 40.0
    threshold = QuantileThreshold(
        0.95, window=window, update_on_alert=update_on_alert, initial_scores=warm
    )
    got_thr, got_alerts = threshold.decide(scores)

    est = stats.RollingQuantile(0.95, window_size=window) if window else stats.Quantile(0.95)
    for s in (warm[-window:] if window else warm).tolist():
        est.update(s)
    # The documented rule: an exceedance enters as at most the threshold x 1.05, or as the threshold
    # itself once the last max(window, 2,000) scores hold over 1.5 x (1 - q) x that many of them.
    span = max(window or 0, 2_000)
    exceedances: list[int] = []
    want_thr, want_alerts = [], []
    for k, s in enumerate(scores.tolist()):
        current = est.get()
        want_thr.append(current)
        want_alerts.append(s > current)
        if s > current and not update_on_alert:
            exceedances.append(k)
            recent = sum(e > k - span for e in exceedances)
            cap = current + (1.05 - 1.0) * abs(current)
            s = current if recent > 1.5 * 0.05 * span else min(s, cap)
        est.update(s)
    np.testing.assert_array_equal(got_thr, want_thr)
    np.testing.assert_array_equal(got_alerts, want_alerts)
    assert threshold.get() == est.get()


class ReferenceWindows(EntityWindows):
    """The straightforward per-entity loop that the vectorised ``windows`` replaced."""

    def windows(self, x: np.ndarray, entities: list[Hashable]) -> np.ndarray:
        n, w, f = len(x), self.window, self.n_features
        out = np.empty((n, w, f), dtype=np.float32)
        groups: dict[Hashable, list[int]] = {}
        for i, entity in enumerate(entities):
            groups.setdefault(entity, []).append(i)
        for entity, index in groups.items():
            rows = x[index]
            past = self._history.pop(entity, None)
            if past is None:
                past = np.repeat(rows[:1], w - 1, axis=0)
            seq = np.concatenate([past, rows])
            out[index] = sliding_window_view(seq, (w, f))[:, 0]
            self._history[entity] = seq[-(w - 1) :].copy()
        while len(self._history) > self.max_entities:
            self._history.popitem(last=False)
        return out


@given(
    st.integers(min_value=2, max_value=5),
    st.integers(min_value=1, max_value=6),
    st.lists(st.lists(st.sampled_from(["a", "b", 1, 2, None]), max_size=12), max_size=5),
)
def test_vectorised_windows_equal_the_per_entity_loop(
    window: int, max_entities: int, batches: list[list[Hashable]]
) -> None:
    fast = EntityWindows(window, 2, max_entities)
    slow = ReferenceWindows(window, 2, max_entities)
    rng = np.random.default_rng(0)
    for entities in batches:
        x = rng.normal(size=(len(entities), 2)).astype(np.float32)
        np.testing.assert_array_equal(fast.windows(x, entities), slow.windows(x, entities))
        assert list(fast._history) == list(slow._history)
        for key, rows in slow._history.items():
            np.testing.assert_array_equal(fast._history[key], rows)


def test_a_batch_starts_at_its_first_event_not_when_a_full_batch_could_have() -> None:
    """A fetch blocks until it has ``count`` items or times out, as librdkafka's ``consume`` does."""
    clock = [0.0]
    arrivals = [0.003 * i for i in range(1, 1_000)]  # one event every 3 ms

    def fetch(count: int, timeout_s: float) -> list[float]:
        ready = [t for t in arrivals if t <= clock[0]]
        if len(ready) < count:  # block: until the count-th event arrives or the timeout
            due = arrivals[count - 1] if count <= len(arrivals) else float("inf")
            clock[0] = min(max(clock[0], due), clock[0] + timeout_s)
            ready = [t for t in arrivals if t <= clock[0]]
        taken = ready[:count]
        del arrivals[: len(taken)]
        return taken

    batcher = MicroBatcher(fetch, max_events=5_000, max_wait_ms=10, clock=lambda: clock[0])
    batch = batcher.next_batch(idle_timeout_s=0.5)
    assert batch[0] == pytest.approx(0.003)
    assert clock[0] == pytest.approx(0.013)  # closed max_wait after its first event
    assert len(batch) == 4


@dataclass
class FakeMessage:
    t: str
    p: int
    o: int

    def topic(self) -> str:
        return self.t

    def partition(self) -> int:
        return self.p

    def offset(self) -> int:
        return self.o

    def leader_epoch(self) -> int | None:
        return None if self.o % 2 else self.o // 2


@given(
    st.lists(st.tuples(st.sampled_from(["x", "y"]), st.integers(0, 2)), max_size=40),
    st.sets(st.tuples(st.sampled_from(["x", "y"]), st.integers(0, 2))),
)
def test_next_offsets_read_from_the_end_equal_a_full_scan(
    parts: list[tuple[str, int]], assigned: set[tuple[str, int]]
) -> None:
    from streamer.runner import Detector

    counters: dict[tuple[str, int], int] = {}
    batch = []
    for tp in parts:
        counters[tp] = counters.get(tp, 10) + 1
        batch.append(FakeMessage(tp[0], tp[1], counters[tp]))
    want = {(m.t, m.p): (m.o + 1, -1 if m.o % 2 else m.o // 2) for m in batch}
    detector = Detector.__new__(Detector)  # only the assignment is needed
    detector._assigned = assigned
    got = detector._next_offsets(batch)  # type: ignore[arg-type]
    # Reading from the end may stop early only once every assigned partition was seen; partitions it
    # skips are not assigned to this consumer.
    assert {tp: o for tp, o in got.items()} == {tp: o for tp, o in want.items() if tp in got}
    assert {tp for tp in want if tp in assigned} <= set(got)


class AsyncSquareScorer:
    """Scores like tests/streamer/test_pipeline.py's SquareScorer, through ``submit`` as a GPU scorer would."""

    kind = "dense"
    name = "square"
    version = "v1"
    features = ("x", "y", "z")

    def __init__(self, window: int, device_type: str) -> None:
        self.window = window
        self.train_scores = np.linspace(0.0, 3.0, 1_000)
        self.device = type("Device", (), {"type": device_type})()
        self.submitted: list[int] = []

    def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        last = x if x.ndim == 2 else x.mean(axis=1)  # the whole window counts: entities matter
        err = (last.astype(np.float64) ** 2).astype(np.float32)
        return err.sum(axis=1).astype(np.float64), err

    def submit(self, x: np.ndarray) -> object:
        self.submitted.append(len(x))
        done = self.score(x)
        return type("Pending", (), {"result": lambda self: done})()


@pytest.mark.parametrize("gate_z", ["auto", 2.0])
@pytest.mark.parametrize("key_source", ["field", "kafka"])
@pytest.mark.parametrize("window", [1, 4])
def test_overlapped_chunks_give_the_results_of_one_pass(
    window: int, key_source: str, gate_z: str | float
) -> None:
    """Also with entities from the Kafka keys (``message_keys``), sliced per chunk, and with the rise
    gate, which takes its entities from the chunks (on for the windowed model, and with gate_z = 2 for
    the other too)."""
    from streamer.config import EventSettings, ThresholdSettings
    from streamer.pipeline import Message, Pipeline

    rng = np.random.default_rng(5)
    values: list[bytes | None] = [
        orjson.dumps({"x": float(v[0]), "y": float(v[1]), "z": float(v[2]), "id": f"e{i % 5}"})
        for i, v in enumerate(rng.normal(size=(1_000, 3)) * [1, 1, 3])
    ]
    values[10], values[700] = b"{broken", None
    values[11:40] = [None] * 29  # a chunk may be left with nothing to score

    def run(device_type: str) -> tuple[Pipeline, AsyncSquareScorer, object]:
        scorer = AsyncSquareScorer(window, device_type)
        pipeline = Pipeline(
            scorer,
            ThresholdSettings(q=0.99),
            EventSettings(key_field="id" if key_source == "field" else None, alert_gate_z=gate_z),
            now=lambda: datetime(2026, 1, 1, tzinfo=UTC),
            overlap_chunk=30,
        )
        keys = [f"e{i % 5}".encode() if key_source == "kafka" else b"k" for i in range(1_000)]
        results = [
            pipeline.process(
                values[s : s + 500],
                lambda i, s=s: Message(values[s + i], keys[s + i], "t", 0, s + i, None),
                message_keys=(lambda s=s: keys[s : s + 500]) if key_source == "kafka" else None,
            )
            for s in (0, 500)
        ]
        return pipeline, scorer, results

    _, gpu, overlapped = run("cuda")
    _, cpu, one_pass = run("cpu")
    assert gpu.submitted and not cpu.submitted
    for a, b in zip(overlapped, one_pass, strict=True):
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.thresholds, b.thresholds)
        assert a.valid.tolist() == b.valid.tolist()
        assert a.alerts == b.alerts and a.dead_letters == b.dead_letters
        assert a.dead_index == b.dead_index
        np.testing.assert_array_equal(a.published, b.published)
