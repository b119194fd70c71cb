"""Warm start: a partition's recent past read again into the detector's state when it is assigned.

The detector's state lives in memory: each key's window and novelty history, the threshold's recent
scores, the rise gate's averages, the cooldown's last alerts. A detector that restarts, or that takes
over a partition in a rebalance, would start all of it cold: a windowed model's first events per key
see padded windows, the threshold falls back to its seed, and an alert the previous owner published a
minute ago is published again. On NAB, scoring a series from a cold state cost the conv detector 2.2
points against the same detector fed the series' first rows first (README, detection quality).

So when a partition the group has read before is assigned, the detector first reads again up to
``kafka.warm_start_events`` records before its committed offset and feeds them through the pipeline
with every output dropped: nothing is published, dead-lettered or committed for them (the previous
owner did that), and the committed offset never moves back. The read uses a consumer of its own,
assigned to the partitions (it joins no group and commits nothing) and starting, when the records have
expired, at the earliest one kept: the group's consumer never seeks backwards, so its own
``auto.offset.reset`` (``latest`` would skip events) never comes into play. Records this detector has
already fed (a partition that comes back to it) are not fed twice. The read is best effort and
bounded by ``kafka.warm_start_timeout_s``: what was read by then is kept, and the detector carries on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka import Message as KafkaMessage

from streamer.kafka_io import REFUSED, client

# Group consumer properties this consumer must not take: it is not the group's static member.
_NOT_INHERITED = frozenset({"group.instance.id"})
# Longest one consume call waits: the stop request and the deadline are checked between calls.
_POLL_S = 0.2
TopicPart = tuple[str, int]


def warm_ranges(
    committed: dict[TopicPart, int], fed: dict[TopicPart, int], count: int
) -> dict[TopicPart, tuple[int, int]]:
    """Per partition, the offsets ``[start, end)`` to read again: the ``count`` before its committed
    offset, less those this detector has already fed (``fed``: the next offset after the last one),
    and none where the group never committed.

    >>> warm_ranges({("t", 0): 500, ("t", 1): 50, ("t", 2): -1001}, {("t", 1): 40}, 100)
    {('t', 0): (400, 500), ('t', 1): (40, 50)}
    """
    out = {}
    for tp, end in committed.items():
        start = max(end - count, fed.get(tp, 0), 0)
        if start < end:
            out[tp] = (start, end)
    return out


@dataclass
class WarmRead:
    """What a warm-start read got: records fed, per partition how far it got, and whether it read
    every range to its end."""

    events: int = 0
    # per partition, the offset after the last record fed
    reached: dict[TopicPart, int] = field(default_factory=dict)
    complete: bool = True
    errors: list[str] = field(default_factory=list)


def read_ranges(
    consumer_config: dict[str, Any],
    ranges: dict[TopicPart, tuple[int, int]],
    feed: Callable[[list[KafkaMessage]], None],
    *,
    batch: int,
    timeout_s: float,
    stopping: Callable[[], bool] = lambda: False,
    beat: Callable[[], None] = lambda: None,
) -> WarmRead:
    """Read each partition's ``[start, end)`` in order and pass the records to ``feed``, at most
    ``batch`` at a time, until every range is read, ``timeout_s`` has passed or ``stopping()``.

    ``consumer_config`` is the group consumer's; this consumer commits nothing and joins no group. A
    partition whose records before ``start`` have expired starts at its earliest record; one that
    reports an error (an unreadable batch, a missing topic) is given up, and the read is incomplete.
    """
    got = WarmRead()
    if not ranges:
        return got
    client_errors: list[KafkaError] = []
    consumer = client(
        Consumer,
        {
            **{k: v for k, v in consumer_config.items() if k not in _NOT_INHERITED},
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",  # where start has expired: the earliest record kept
            "fetch.wait.max.ms": 100,
            "error_cb": client_errors.append,
        },
    )
    pending = dict(ranges)
    deadline = time.monotonic() + timeout_s
    try:
        consumer.assign([TopicPartition(t, p, start) for (t, p), (start, _) in ranges.items()])
        while pending and not stopping():
            if time.monotonic() >= deadline:
                break
            beat()
            fresh: list[KafkaMessage] = []
            for m in consumer.consume(num_messages=batch, timeout=_POLL_S):
                tp = (m.topic(), m.partition())
                if tp not in pending:  # read to its end already
                    continue
                err = m.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        got.errors.append(f"{tp[0]}[{tp[1]}]: {err.name()}")
                        got.complete = False
                    del pending[tp]
                    continue
                offset = m.offset()
                end = pending[tp][1]
                if offset is None or offset >= end:
                    del pending[tp]
                    continue
                fresh.append(m)
                got.reached[tp] = offset + 1
                if offset + 1 >= end:
                    del pending[tp]
            if fresh:
                feed(fresh)
                got.events += len(fresh)
            if any(e.fatal() or e.code() in REFUSED for e in client_errors):
                got.errors.extend(e.name() for e in client_errors)
                break
    finally:
        consumer.close()
    if pending:
        got.complete = False
    return got
