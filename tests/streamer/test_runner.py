"""The detector's output path with a producer whose topics refuse large records (no broker needed).

The embedded broker does not enforce a topic's ``max.message.bytes``, so a broker-side refusal, which
librdkafka reports at delivery, is played here by a fake producer; the producer-side refusal (at
``produce``) runs against the embedded broker in ``tests/integration/test_run.py``.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import numpy as np
import orjson
import pytest
from confluent_kafka import OFFSET_INVALID, KafkaError, Message, TopicPartition

from streamer import runner as runner_module
from streamer.alerts import Alert, DeadLetter, ReasonCode
from streamer.broker import create_topics
from streamer.config import load_settings
from streamer.errors import BrokerError, ConfigError, DeliveryError
from streamer.kafka_io import read_topic
from streamer.runner import Detector, OffsetTracker


class SquareScorer:
    kind = "dense"
    name = "square"
    version = "v1"
    features = ("x", "y")
    window = 1
    train_scores = np.linspace(0.0, 3.0, 1_000)

    def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        err = (x.astype(np.float64) ** 2).astype(np.float32)
        return err.sum(axis=1).astype(np.float64), err


class RefusingProducer:
    """Acknowledges records up to ``limit`` bytes at flush; refuses larger ones as a broker does.

    With ``whole_batch``, the limit is on all the records of a flush together, and every one of them
    is refused when they exceed it, as a broker refuses every record of a batch over its topic's limit.
    """

    def __init__(self, limit: int, whole_batch: bool = False) -> None:
        self.limit = limit
        self.whole_batch = whole_batch
        self.pending: list[tuple[str, bytes | None, bytes, Any]] = []
        self.delivered: list[tuple[str, bytes | None, bytes]] = []

    def produce(self, topic: str, value: bytes, key: bytes | None, on_delivery: Any) -> None:
        self.pending.append((topic, key, value, on_delivery))

    def flush(self, timeout: float) -> int:
        pending, self.pending = self.pending, []
        batch_size = sum(len(value) for _, _, value, _ in pending)
        for topic, key, value, callback in pending:
            too_large = (batch_size if self.whole_batch else len(value)) > self.limit
            err = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE) if too_large else None
            callback(err, Message(topic=topic, partition=0, offset=0, key=key, value=value))
            if not too_large:
                self.delivered.append((topic, key, value))
        return 0

    def poll(self, timeout: float) -> int:
        return 0


def detector(limit: int) -> tuple[Detector, RefusingProducer]:
    settings = load_settings(
        None,
        {
            # nothing listens there; log_level 0 keeps librdkafka's connection errors quiet
            "kafka": {
                "bootstrap_servers": "127.0.0.1:9",
                "commit_interval_ms": 60_000,
                "extra": {"log_level": "0"},
            },
            "events": {"alert_gate_z": 0, "max_original_bytes": 65_536},
            "log": {"level": "WARNING"},
        },
    )
    d = Detector(settings, SquareScorer())
    d.consumer.close()  # a real consumer with a commit queued would wait for the broker when freed
    d.consumer = RecordingConsumer()  # type: ignore[assignment]
    producer = RefusingProducer(limit)
    d.producer = producer  # type: ignore[assignment]
    return d, producer


class RecordingConsumer:
    """Takes the detector's commits and records them."""

    def __init__(self) -> None:
        self.commits: list[list[tuple[str, int, int]]] = []
        self.offsets: list[Any] = []  # the TopicPartitions of every commit

    def commit(self, offsets: list[Any], asynchronous: bool) -> None:
        self.commits.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])
        self.offsets.extend(offsets)

    def committed(self, partitions: list[Any], timeout: float) -> list[Any]:
        """Nothing committed before (OFFSET_INVALID): so no warm start reads anything."""
        return [TopicPartition(tp.topic, tp.partition, OFFSET_INVALID) for tp in partitions]


def batch() -> list[Message]:
    big_event = orjson.dumps({"x": 9.0, "y": 0.0, "note": "n" * 30_000})
    small_anomaly = orjson.dumps({"x": 0.0, "y": 8.0})
    return [
        Message(topic="in", partition=0, offset=0, key=b"a", value=orjson.dumps({"x": 0, "y": 0})),
        Message(topic="in", partition=2, offset=3, key=b"d", value=small_anomaly),
        Message(topic="in", partition=0, offset=1, key=b"b", value=big_event),
        Message(topic="in", partition=1, offset=7, key=b"c", value=b"{" * 30_000),
    ]


@pytest.mark.parametrize("whole_batch", [False, True])
def test_records_a_topic_refuses_as_too_large_are_resent_without_their_echo(
    whole_batch: bool,
) -> None:
    d, producer = detector(limit=10_000)
    producer.whole_batch = whole_batch
    d._process(batch())
    alerts = {
        a.alert_id: a
        for a in (Alert.model_validate_json(v) for t, _, v in producer.delivered if t == "alerts")
    }
    (dead_out,) = [v for t, _, v in producer.delivered if t == "dead-letters"]
    alert = alerts["in:0:1"]
    assert alert.event is None and alert.event_truncated is None
    # a small record refused only with its batch goes out again whole
    assert alerts["in:2:3"].event == {"x": 0.0, "y": 8.0}
    letter = DeadLetter.model_validate_json(dead_out)
    assert letter.original_b64 == "" and letter.truncated and letter.original_size == 30_000
    # only then are the offsets stored, and committed
    assert [set(c) for c in d.consumer.commits] == [{("in", 0, 2), ("in", 1, 8), ("in", 2, 4)}]


def test_a_record_refused_even_without_its_echo_stops_before_any_commit() -> None:
    d, _ = detector(limit=200)  # below any alert or dead letter
    with pytest.raises(DeliveryError, match="alerts"):
        d._process(batch())
    assert d.offsets.uncommitted() == [] and d.consumer.commits == []


class SlowProducer(RefusingProducer):
    """Leaves records unacknowledged for the first ``slow_flushes`` flushes (a leader election)."""

    def __init__(self, slow_flushes: int) -> None:
        super().__init__(limit=10**9)
        self.slow_flushes = slow_flushes

    def flush(self, timeout: float) -> int:
        if self.slow_flushes > 0:
            self.slow_flushes -= 1
            return len(self.pending)
        return super().flush(timeout)


def test_output_is_waited_for_until_librdkafka_settles_it() -> None:
    d, _ = detector(limit=10**9)
    d.producer = producer = SlowProducer(slow_flushes=3)  # type: ignore[assignment]
    d._process(batch())
    assert len(producer.delivered) == 3 and len(d.consumer.commits) == 1


def test_output_never_acknowledged_stops_before_any_commit() -> None:
    d, _ = detector(limit=10**9)
    d.producer = SlowProducer(slow_flushes=10**9)  # type: ignore[assignment]
    d._delivery_timeout_s = -9.9  # the deadline is message.timeout.ms + 10 s: 0.1 s here
    with pytest.raises(DeliveryError, match="not acknowledged"):
        d._process(batch())
    assert d.offsets.uncommitted() == [] and d.consumer.commits == []


def test_the_wait_for_output_never_runs_past_its_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each flush asked for 30 s whatever was left: a 120 s timeout could wait up to 160 s, and a
    timeout near max.poll.interval.ms past it, when the group drops a consumer that does not poll."""
    clock = [1_000.0]
    monkeypatch.setattr("streamer.runner.time.monotonic", lambda: clock[0])

    asked: list[float] = []

    class Stuck(SlowProducer):
        def flush(self, timeout: float) -> int:
            asked.append(timeout)
            clock[0] += timeout  # librdkafka waits the whole timeout when nothing settles
            return super().flush(timeout)

    d, _ = detector(limit=10**9)
    d.producer = Stuck(slow_flushes=10**9)  # type: ignore[assignment]
    d._delivery_timeout_s = 45.0  # waits 45 + 10 s at most
    with pytest.raises(DeliveryError, match="within 55 s"):
        d._process(batch())
    # in steps of at most a second (so that a second stop request is seen), the last one cut short
    assert max(asked) == 1.0 and clock[0] - 1_000.0 == pytest.approx(55.0)


def test_score_records_validate_against_their_schema() -> None:
    """The scores topic had no schema; its records are built as plain dicts, so this is the check."""
    from jsonschema import Draft202012Validator

    from streamer.alerts import json_schema

    d, producer = detector(limit=10**9)
    d.settings = d.settings.model_copy(
        update={"kafka": d.settings.kafka.model_copy(update={"scores_topic": "scores"})}
    )
    d._process(batch())
    scores = [orjson.loads(v) for t, _, v in producer.delivered if t == "scores"]
    assert len(scores) == 3 and sum(r["alert"] for r in scores) == 2
    validator = Draft202012Validator(json_schema("score"))
    for record in scores:
        validator.validate(record)
        assert record["schema_version"] == 1  # score records had no version


def test_an_unreadable_record_is_dead_lettered_with_its_code() -> None:
    """The runner's own dead letter (a record whose batch the consumer could not read) has a code
    too, and no bytes: there were none to keep."""
    d, _ = detector(limit=10**9)
    error = KafkaError(KafkaError._BAD_COMPRESSION)
    letter = DeadLetter.model_validate_json(
        d._unreadable_letter(Message(topic="in", partition=1, offset=7, error=error))
    )
    assert letter.reason_code == ReasonCode.UNREADABLE and letter.feature is None
    assert "_BAD_COMPRESSION" in letter.reason and letter.original_size == 0


def test_an_offset_that_goes_back_is_committed_as_it_is() -> None:
    """After a log truncation the consumer reads on from a lower offset without a revocation; the
    records there were processed, so the lower offset is the one to commit (not the old, higher one)."""
    tracker = OffsetTracker()
    tracker.advance("in", 0, 100)
    tracker.mark_committed(tracker.uncommitted())
    tracker.advance("in", 0, 40)
    assert [(tp.topic, tp.partition, tp.offset) for tp in tracker.uncommitted()] == [("in", 0, 40)]


def test_commits_carry_the_leader_epoch_of_the_last_message_processed() -> None:
    """The committed offset goes with the leader epoch of the message before it (-1 where the broker
    gave none), as Kafka's own consumers commit, so that the next reader can check its start against
    the log's history after an unclean leader election."""
    d, _ = detector(limit=1_000_000)
    value = orjson.dumps({"x": 0, "y": 0})
    d._process(
        [
            Message(topic="in", partition=0, offset=4, value=value, leader_epoch=2),
            Message(topic="in", partition=0, offset=5, value=value, leader_epoch=3),
            Message(topic="in", partition=1, offset=9, value=value),
        ]
    )
    committed = {(tp.topic, tp.partition): tp for tp in d.consumer.offsets}
    assert committed["in", 0].offset == 6 and committed["in", 0].leader_epoch == 3
    assert committed["in", 1].offset == 10 and committed["in", 1].leader_epoch is None


@pytest.mark.parametrize("secret", ["hunter2-secret", 'hun"ter2" for x "y'])
def test_a_rejected_client_setting_is_named_without_its_value(secret: str) -> None:
    extra = {"ssl.endpoint.identification.algorithm": secret}
    settings = load_settings(None, {"kafka": {"extra": extra}})
    with pytest.raises(ConfigError) as info:
        Detector(settings, SquareScorer())
    assert "hun" not in str(info.value) and "ter2" not in str(info.value)
    assert "ssl.endpoint.identification.algorithm" in str(info.value)
    # the same for `streamer train --from-topic`
    with pytest.raises(ConfigError) as info:
        list(read_topic({"bootstrap.servers": "127.0.0.1:9", **extra}, "t", 1))
    assert "hun" not in str(info.value) and "ter2" not in str(info.value)
    # and for `streamer run --create-topics`
    with pytest.raises(ConfigError) as info:
        create_topics(settings.kafka.common_config(), ["t"])
    assert "hun" not in str(info.value) and "ter2" not in str(info.value)


def test_idleness_counts_from_the_last_assignment_and_waits_for_the_first() -> None:
    """`--idle-exit` must not leave before a restarted detector gets the partitions its dead
    predecessor held (the broker frees them after a session timeout), nor during a rebalance."""
    from confluent_kafka import TopicPartition

    d, _ = detector(limit=10**9)
    now = time.monotonic()
    session = d.settings.kafka.session_timeout_ms / 1000
    # no partitions yet: the wait is a session timeout and 10 s longer
    assert d._idle_s(now - 30) == pytest.approx(30 - session - 10, abs=0.5)
    d._on_assign(d.consumer, [TopicPartition("in", 0)])  # type: ignore[arg-type]
    assert d._idle_s(now - 60) < 1  # counted from the assignment, not from the last input
    assert d._assigned_at is not None
    d._assigned_at -= 30  # the assignment was 30 s ago
    d._on_assign(d.consumer, [])  # an empty incremental assignment is not a new one
    assert d._idle_s(now - 60) == pytest.approx(30, abs=0.5)


def test_idle_exit_before_any_assignment_is_an_error_not_a_drained_topic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`run --idle-exit` against an unreachable broker or a missing topic exited 0 with 'stopped
    events=0', which a script cannot tell from a drained topic."""
    from streamer.errors import BrokerError

    settings = load_settings(
        None,
        {
            "kafka": {"bootstrap_servers": "127.0.0.1:9", "extra": {"log_level": "0"}},
            "log": {"level": "WARNING"},
        },
    )
    d = Detector(settings, SquareScorer())
    monkeypatch.setattr(d, "_idle_s", lambda last_input: 10**6)  # past any wait at once
    with pytest.raises(BrokerError, match=r"no partition of \['events'\] was assigned"):
        d.run(idle_exit_s=1)


class SilentProducer(RefusingProducer):
    """A broker that never answers: every flush waits its whole timeout and leaves one record."""

    def flush(self, timeout: float) -> int:
        time.sleep(timeout)
        return 1


def _flush_in_thread(d: Detector) -> tuple[threading.Thread, list[BaseException]]:
    raised: list[BaseException] = []

    def target() -> None:
        try:
            d._flush()
        except BaseException as exc:  # handed to the test
            raised.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, raised


def test_a_second_stop_ends_the_wait_for_output_and_a_first_does_not() -> None:
    """With the broker gone, the wait for a batch's output lasts up to message.timeout.ms + 10 s (130 s
    by default), longer than a container's stop grace period: a second signal ends it at once, as a
    delivery error, so that the batch is not committed."""
    d, _ = detector(limit=1 << 20)
    d.producer = SilentProducer(1 << 20)  # type: ignore[assignment]
    thread, raised = _flush_in_thread(d)
    d.stop()  # the first: finish the batch, so keep waiting
    thread.join(timeout=3)
    assert thread.is_alive() and not raised
    t0 = time.monotonic()
    d.stop()  # the second
    thread.join(timeout=10)
    assert not thread.is_alive(), "still waiting after the second stop"
    assert time.monotonic() - t0 < 5
    assert len(raised) == 1 and isinstance(raised[0], DeliveryError)
    assert "not acknowledged" in str(raised[0]) and "read again" in str(raised[0])


def test_a_failed_handshake_stops_the_detector_only_once_it_lasts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A TLS handshake may fail for a while during a rolling restart or a certificate rotation: it
    stops the detector after REFUSAL_LASTS_S of failures without a long gap; refused credentials
    (librdkafka reports them as _AUTHENTICATION) or a missing ACL stop it at once."""
    clock = [0.0]
    monkeypatch.setattr("streamer.runner.time.monotonic", lambda: clock[0])
    d, _ = detector(limit=1 << 20)
    for _ in range(3):  # a blip: 10 s of failures, then a quiet 30 s
        d._on_client_error(KafkaError(KafkaError._SSL, "handshake failed"))
        clock[0] += 5.0
    clock[0] += 30.0
    for _ in range(4):  # again, 15 s: a new run, shorter than 20 s
        d._on_client_error(KafkaError(KafkaError._SSL, "handshake failed"))
        d._check_client()
        clock[0] += 5.0
    d._on_client_error(KafkaError(KafkaError._SSL, "handshake failed"))  # 20 s on: it lasts
    with pytest.raises(BrokerError, match="Kafka refused the detector \\(_SSL"):
        d._check_client()

    refused = [
        (KafkaError._AUTHENTICATION, "SASL authentication error: Authentication failed: Invalid "
         "username or password (after 3ms in state AUTH_REQ)"),
        (KafkaError.SASL_AUTHENTICATION_FAILED, "bad password"),
        (KafkaError.GROUP_AUTHORIZATION_FAILED, "not authorized"),
    ]  # fmt: skip
    for code, text in refused:
        d, _ = detector(limit=1 << 20)
        d._on_client_error(KafkaError(code, text))
        with pytest.raises(BrokerError, match="Kafka refused the detector"):
            d._check_client()


def test_a_fatal_consumer_error_stops_the_detector_as_a_broker_error() -> None:
    """It was raised as a bare KafkaException: a traceback and exit 1 instead of one line, exit 2."""

    class FatalConsumer(RecordingConsumer):
        def consume(self, num_messages: int, timeout: float) -> list[Any]:
            return [Message(error=KafkaError(KafkaError._FENCED, "fenced", fatal=True))]

    d, _ = detector(limit=1 << 20)
    d.consumer = FatalConsumer()  # type: ignore[assignment]
    assert d._fetch(10, 0.1) == []
    with pytest.raises(BrokerError, match="_FENCED"):
        d._check_client()


def test_a_metrics_port_in_use_is_a_configuration_error_before_any_client_exists(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It was found only in run(), after the consumer had joined its group (and timed out leaving)."""
    made: list[str] = []
    real_client = runner_module.client
    monkeypatch.setattr(
        runner_module,
        "client",
        lambda cls, config: made.append(cls.__name__) or real_client(cls, config),
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = load_settings(
            None,
            {
                "kafka": {"bootstrap_servers": "127.0.0.1:9", "extra": {"log_level": "0"}},
                "metrics": {"port": taken.getsockname()[1]},
            },
        )
        with pytest.raises(ConfigError, match=r"metrics: cannot serve on 127\.0\.0\.1"):
            Detector(settings, SquareScorer())
    assert made == []
