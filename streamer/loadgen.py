"""Offered load for ``streamer bench``: events at a fixed rate in, alerts read back, latency per alert.

Runs in a child process (``multiprocessing`` spawn), so that sending and reading take nothing from
the detector's interpreter. Each event is stamped at send time with ``"sent_us"`` (wall clock,
microseconds) as its first field; the detector echoes the event in its alert, and the reader takes
the time the alert reached it minus that stamp. Both ends read the same host clock.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

STAMP_FIELD = "sent_us"
# The embedded broker answers a waiting fetch only when fetch.wait.max.ms runs out (it does not wake
# on new data as Kafka does), so consumers on it are told to wait at most this long for new messages.
FETCH_WAIT_MS = 10


@dataclass
class LoadReport:
    """What the child sent and what it read back."""

    sent: int = 0
    end_offsets: dict[int, int] = field(default_factory=dict)
    send_s: float = 0.0  # from the first send to the last
    latencies_ms: list[float] = field(default_factory=list)  # one per alert read back
    detect_ms: list[float] = field(default_factory=list)  # send stamp to the alert's detected_at
    sent_s: list[float] = field(default_factory=list)  # each latency sample's send stamp (epoch s)
    alerts: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LoadPlan:
    """What to send: ``values`` cycled at ``rate`` events/s for ``seconds``, keyed by ``keys``."""

    bootstrap: str
    topic: str
    alert_topic: str
    values: list[bytes]
    keys: list[bytes]
    rate: float
    seconds: float
    # As `streamer simulate` produces. Shorter lingers mean many tiny produce requests, which on a
    # 2-core machine leave the embedded broker busier than the detector (1 ms: ~0.8 of a core at 20k/s).
    linger_ms: int = 5
    fetch_wait_ms: int = FETCH_WAIT_MS  # the alert reader's


def stamp(value: bytes, sent_us: int) -> bytes:
    """The event with ``"sent_us": <sent_us>`` as its first field (value must be a JSON object)."""
    return b'{"%s":%d,%s' % (STAMP_FIELD.encode(), sent_us, value[1:])


def run_load(plan: LoadPlan, go: Event, finished: Event, conn: Connection) -> None:
    """Child process entry: wait for ``go``, send, report the send; read alerts until ``finished``.

    Two messages go back through ``conn``: the send report once sending is over (so that the parent
    knows how many events to wait for), then the whole report once no alert has come for a second
    after ``finished`` is set. Alerts are read by a thread of their own, blocked in ``consume`` (the
    GIL released) whenever nothing has arrived, so each is timed as soon as it is fetched.
    """
    report = LoadReport()
    common: dict[str, Any] = {"bootstrap.servers": plan.bootstrap, "log.connection.close": False}
    reader = Consumer(
        {
            **common,
            "group.id": "bench-alert-reader",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": plan.fetch_wait_ms,
        }
    )
    stop = threading.Event()
    thread = threading.Thread(target=_read_alerts, args=(reader, report, finished, stop))
    try:
        meta = reader.list_topics(plan.alert_topic, timeout=10).topics[plan.alert_topic]
        reader.assign(
            [TopicPartition(plan.alert_topic, p, OFFSET_BEGINNING) for p in meta.partitions]
        )
        thread.start()
        conn.send("ready")
        go.wait()
        _send(plan, report, common)
        conn.send(("sent", report.sent, report.end_offsets, report.send_s, report.errors))
        finished.wait()
        thread.join()
    finally:
        stop.set()
        if thread.is_alive():
            thread.join()
        reader.close()
    conn.send(("done", report))


def _send(plan: LoadPlan, report: LoadReport, common: dict[str, Any]) -> None:
    """Send on schedule: event i is due ``i / rate`` after the start; sleep only when ahead of it."""
    producer = Producer({**common, "linger.ms": plan.linger_ms, "acks": "all"})

    def on_delivery(err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            report.errors.append(str(err))
            return
        part, off = msg.partition(), msg.offset()
        if off + 1 > report.end_offsets.get(part, 0):
            report.end_offsets[part] = off + 1

    values, keys, n_pool = plan.values, plan.keys, len(plan.values)
    total = int(plan.rate * plan.seconds)
    start = time.monotonic()
    for i in range(total):
        ahead = start + i / plan.rate - time.monotonic()
        if ahead > 0.001:
            time.sleep(ahead)
        j = i % n_pool
        value = stamp(values[j], time.time_ns() // 1000)
        while True:
            try:
                producer.produce(plan.topic, value=value, key=keys[j], on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    remaining = producer.flush(30.0)
    report.send_s = time.monotonic() - start
    report.sent = total
    if remaining:
        report.errors.append(f"{remaining} events not delivered within 30 s")


def _read_alerts(
    reader: Consumer, report: LoadReport, finished: Event, stop: threading.Event
) -> None:
    """Time every alert as it arrives; return a second after ``finished`` once alerts stop coming."""
    quiet_since: float | None = None
    while not stop.is_set():
        messages = reader.consume(num_messages=1, timeout=0.05)
        now_us = time.time_ns() // 1000
        messages += reader.consume(num_messages=10_000, timeout=0)  # whatever came with it
        for m in messages:
            if m.error() is not None:
                continue
            alert = orjson.loads(m.value() or b"{}")
            sent = (alert.get("event") or {}).get(STAMP_FIELD)
            report.alerts += 1
            if isinstance(sent, int):
                report.latencies_ms.append((now_us - sent) / 1000.0)
                report.sent_s.append(sent / 1e6)
                detected = datetime.fromisoformat(alert["detected_at"]).timestamp()
                report.detect_ms.append((detected * 1e6 - sent) / 1000.0)
        if messages or not finished.is_set():
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > 1.0:
            return
