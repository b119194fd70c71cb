"""Warm start against the embedded broker: a detector that restarts carries on with the state of one that
never stopped (streamer.warmstart)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import orjson
import pytest
from confluent_kafka import Producer

pytestmark = [pytest.mark.broker, pytest.mark.slow]

FIRST, TOTAL, KEYS = 1_500, 3_000, 5


class WindowScorer:
    """A windowed model of one feature (novelty on, rise gate on): the score is the sum of the
    squares over the key's last four events, so it depends on what the key sent before."""

    kind, name, version, features, window = "conv", "window-squares", "v1", ("x",), 4
    train_scores = np.random.default_rng(0).chisquare(4, 1_000)

    def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        err = (x.astype(np.float64) ** 2).sum(axis=1).astype(np.float32)  # (B, F) over the window
        return err.sum(axis=1).astype(np.float64), err


def _produce(bootstrap: str, topic: str, total: int = TOTAL) -> list[int]:
    """``total`` events on partition 0, keyed k0..k4, one a second of event time, with a few spikes;
    their offsets from the delivery reports."""
    rng = np.random.default_rng(7)
    values = rng.normal(0.0, 1.0, total)
    values[rng.choice(total, total // 125, replace=False)] *= 8.0
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    offsets: list[int] = []
    start_ms = int(time.time() * 1000) - total * 1000
    for i, v in enumerate(values.tolist()):
        producer.produce(
            topic,
            orjson.dumps({"x": v}),
            key=f"k{i % KEYS}".encode(),
            partition=0,
            timestamp=start_ms + i * 1000,
            on_delivery=lambda err, m: offsets.append(m.offset()),
        )
        if i % 1_000 == 999:
            producer.flush(10)
    producer.flush(10)
    assert sorted(offsets) == list(range(total))
    return offsets


def _decisions(kit: Any, topic: str, input_topic: str) -> dict[int, tuple[float, float, bool]]:
    """offset -> (score, threshold, published) from a scores topic; each offset once."""
    records = [r for r in kit.read(topic) if r["topic"] == input_topic]
    out = {r["offset"]: (r["score"], r["threshold"], r["alert"]) for r in records}
    assert len(out) == len(records), "an offset was scored twice"
    return out


def test_a_restarted_detector_carries_on_as_if_it_had_never_stopped(kit) -> None:
    names = kit.topics("warm", partitions=1)
    topic = names["in"]
    _produce(kit.bootstrap, topic)
    sections = {"events": {"alert_gate_z": "auto", "alert_cooldown_s": 300}}

    def detector(group: str, scores: str, **kafka: Any) -> Any:
        return kit.detector(
            {**names, "group": group, "scores": scores}, WindowScorer(), sections, **kafka
        )

    # The reference: one detector through the whole stream.
    reference = kit.topics("warm-ref", partitions=1)
    stats = detector(reference["group"], reference["scores"]).run(max_events=TOTAL)
    assert stats.events == TOTAL and stats.warm_events == 0
    never_stopped = _decisions(kit, reference["scores"], topic)

    # Stopped after FIRST events, then started again: warm, and (the control) cold.
    runs = {}
    for warm_events in (10_000, 0):
        other = kit.topics(f"warm-{warm_events}", partitions=1)
        first = detector(other["group"], other["scores"]).run(max_events=FIRST)
        assert first.events == FIRST
        assert kit.committed(other["group"], topic, partitions=1) == {0: FIRST}
        second = detector(other["group"], other["scores"], warm_start_events=warm_events)
        stats = second.run(max_events=TOTAL - FIRST)
        # the warm records were read again into the state only: neither counted nor published
        assert stats.events == TOTAL - FIRST
        assert stats.warm_events == (FIRST if warm_events else 0)
        assert kit.committed(other["group"], topic, partitions=1) == {0: TOTAL}
        assert second._fed[(topic, 0)] == TOTAL  # were the partition to come back: nothing again
        runs[warm_events] = _decisions(kit, other["scores"], topic)
        assert sorted(runs[warm_events]) == list(range(TOTAL)), "each offset scored exactly once"

    def after_restart(decisions: dict[int, tuple[float, float, bool]]) -> tuple[np.ndarray, ...]:
        rows = [decisions[o] for o in range(FIRST, TOTAL)]
        return tuple(np.array(column, dtype=np.float64) for column in zip(*rows, strict=True))

    ref_scores, ref_thresholds, ref_alerts = after_restart(never_stopped)
    assert ref_alerts.sum() >= 3, "the stream should raise alerts after the restart"
    # Warm: the same windows, novelty, threshold, gate and cooldown as the detector that never
    # stopped (novelty's running mean is summed per batch, so the last bits may differ).
    scores, thresholds, alerts = after_restart(runs[10_000])
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-9)
    np.testing.assert_allclose(thresholds, ref_thresholds, rtol=1e-9)
    np.testing.assert_array_equal(alerts, ref_alerts)
    # Cold: padded windows, a threshold from its seed, no memory of the cooldown.
    scores, thresholds, _ = after_restart(runs[0])
    assert not np.allclose(scores[: 4 * KEYS], ref_scores[: 4 * KEYS], rtol=1e-6)
    assert not np.allclose(thresholds, ref_thresholds, rtol=1e-6)


def test_the_warm_start_reads_at_most_its_count_and_nothing_fed_already(kit) -> None:
    """A partition that comes back to a detector is read again only from where it had fed it: its
    state would otherwise hold those records twice. Nothing is published for the records read."""
    from confluent_kafka import Consumer, TopicPartition

    names = kit.topics("warm-back", partitions=1)
    topic = names["in"]
    _produce(kit.bootstrap, topic, total=300)
    committer = Consumer({**kit.conf, "group.id": names["group"], "enable.auto.commit": False})
    try:
        committer.commit(offsets=[TopicPartition(topic, 0, 300)], asynchronous=False)
    finally:
        committer.close()

    for fed, count, expected in [
        (None, 10_000, 300),
        (200, 10_000, 100),
        (None, 50, 50),
        (300, 10, 0),
    ]:
        detector = kit.detector(names, WindowScorer(), warm_start_events=count)
        try:
            if fed is not None:
                detector._fed[(topic, 0)] = fed
            detector.warm_up([TopicPartition(topic, 0)])
            assert detector.stats.warm_events == expected, (fed, count)
            assert detector._fed[(topic, 0)] == 300
            assert detector.stats.events == detector.stats.alerts == 0
        finally:
            detector.producer.flush(10)
            detector.consumer.close()
            detector.metrics.close()
    assert kit.read(names["scores"], idle_s=1) == kit.read(names["alerts"], idle_s=1) == []
    assert kit.read(names["dead"], idle_s=1) == []
    assert kit.committed(names["group"], topic, partitions=1) == {0: 300}


def test_a_detector_that_joins_warms_up_the_partition_it_takes_over(kit) -> None:
    """In a rebalance, the member that takes a partition over reads its records before the committed
    offset into its state, and nothing is published twice: every offset is scored exactly once. When
    the partition comes back to the first member, it reads again only what the other processed."""
    import threading

    names = kit.topics("warm-join", partitions=2)
    topic = names["in"]
    producer = Producer({"bootstrap.servers": kit.bootstrap, "linger.ms": 20})
    ends = {0: 0, 1: 0}

    def send(count: int) -> None:
        for i in range(count):
            for partition in (0, 1):
                producer.produce(
                    topic, orjson.dumps({"x": float(i % 7), "y": 1.0}), partition=partition
                )
                ends[partition] += 1
        producer.flush(10)

    send(1_000)
    first = kit.detector(names)
    first_run = threading.Thread(target=first.run, kwargs={"idle_exit_s": 60})
    first_run.start()
    second = None
    try:
        deadline = time.monotonic() + 60
        while kit.committed(names["group"], topic, partitions=2) != ends:
            assert time.monotonic() < deadline, "the first detector did not drain the topic"
            time.sleep(0.3)
        second = kit.detector(names)
        second_run = threading.Thread(target=second.run, kwargs={"idle_exit_s": 60})
        second_run.start()
        deadline = time.monotonic() + 60
        while second.stats.warm_events == 0:  # it was given a partition, and read it again
            assert time.monotonic() < deadline, "the second detector never took a partition"
            time.sleep(0.3)
        send(500)
        deadline = time.monotonic() + 60
        while kit.committed(names["group"], topic, partitions=2) != ends:
            assert time.monotonic() < deadline, "the 500 new events of each partition not committed"
            time.sleep(0.3)
        second.stop()  # it leaves the group: its partition goes back to the first
        second_run.join(timeout=60)
        deadline = time.monotonic() + 60
        while first.stats.warm_events == 0:
            assert time.monotonic() < deadline, "the partition never came back to the first"
            time.sleep(0.3)
        first.stop()
        first_run.join(timeout=60)
    finally:
        first.stop()
        if second is not None:
            second.stop()
        first_run.join(timeout=60)
    assert not first_run.is_alive() and not second_run.is_alive()
    # The partition taken over had 1,000 records before its committed offset: all read again. When
    # the second member leaves, the partition goes back to the first, which had fed its first 1,000
    # records itself: it reads the second's 500 only.
    assert second.stats.warm_events == 1_000 and first.stats.warm_events == 500
    assert first.stats.events + second.stats.events == sum(ends.values())
    records = [r for r in kit.read(names["scores"]) if r["topic"] == topic]
    scored = [(r["partition"], r["offset"]) for r in records]
    assert len(scored) == len(set(scored)) == sum(ends.values()), "an event scored twice or never"
    assert kit.committed(names["group"], topic, partitions=2) == ends
