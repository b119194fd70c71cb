"""``streamer run``: the consume -> score -> alert -> commit loop against Kafka, at least once.

The commit procedure, per micro-batch:

1. Process the batch through the pipeline core: every message becomes a score (and maybe an alert) or a
   dead letter with its reason.
2. Produce every alert to the alert topic and every dead letter to the dead-letter topic.
3. Flush the producer: wait until the broker has acknowledged each of them. A delivery error stops the
   service *before* step 4, so the batch is read and scored again after a restart (nothing is lost).
4. Store the batch's next offsets; commit what is stored asynchronously, at most every
   ``kafka.commit_interval_ms`` (checked after every batch and every idle loop turn), and synchronously
   when partitions are revoked and on shutdown.

Messages fetched but not yet processed when their partition is revoked are dropped from the batch under
construction: their offsets were never committed, so the partition's new owner reads them again.
"""

from __future__ import annotations

import gc
import math
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import orjson
import structlog
from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka import Message as KafkaMessage

from streamer.alerts import SCHEMA_VERSION, ReasonCode, Source, bound_key, dead_letter, shrink
from streamer.batching import MicroBatcher
from streamer.config import FLUSH_SLACK_MS, Settings
from streamer.errors import BrokerError, ConfigError, DeliveryError
from streamer.kafka_io import CLIENT_LOG_EVERY_S, MAY_PASS, REFUSED, RateLimit, client
from streamer.monitoring import LAG_INTERVAL_MS, RunMetrics, TLSFileError
from streamer.pipeline import BatchResult, Message, Pipeline, ScorerLike
from streamer.reload import RETRY_REFUSED_S, ModelWatcher
from streamer.warmstart import read_ranges, warm_ranges

log = structlog.get_logger(__name__)

_POLL_S = 0.5  # longest a loop turn waits for input, so stop requests are served promptly
# Waiting for output to be acknowledged goes in steps this long (a second stop signal is seen between
# two), with a warning every _FLUSH_WARN_S.
_FLUSH_STEP_S = 1.0
_FLUSH_WARN_S = 30.0
# A failed TLS or SASL handshake (MAY_PASS) stops the detector once they have come for this long with
# no gap as long between two (librdkafka retries a connection at least every 10 s).
REFUSAL_LASTS_S = 20.0
# The longest each broker query that pins a "latest" start may take (Detector._pin_latest).
_PIN_TIMEOUT_S = 10.0
# A record over the producer's message.max.bytes, or over a topic's max.message.bytes on the broker.
_TOO_LARGE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})
# A record batch the consumer cannot read (corrupt, or its compressed payload undecodable): librdkafka
# reports it at the batch's first offset on every fetch and never moves past it.
_UNREADABLE = frozenset({KafkaError._BAD_MSG, KafkaError._BAD_COMPRESSION})


@dataclass
class RunStats:
    events: int = 0
    scored: int = 0
    alerts: int = 0
    dead_lettered: int = 0
    batches: int = 0
    model_swaps: int = 0
    # records read again into the state on assignment (streamer.warmstart); not counted above
    warm_events: int = 0
    elapsed_s: float = 0.0
    active_s: float = 0.0  # from the first batch's arrival to the last batch's commit
    committed_s: float = 0.0  # from the first batch's arrival to the shutdown's synchronous commit
    stage_s: dict[str, float] = field(default_factory=dict)

    def add_stage(self, name: str, seconds: float) -> None:
        self.stage_s[name] = self.stage_s.get(name, 0.0) + seconds


class OffsetTracker:
    """The next offset to commit per partition, as the consumer's position moves."""

    def __init__(self) -> None:
        self._next: dict[tuple[str, int], int] = {}
        self._epoch: dict[tuple[str, int], int] = {}
        self._committed: dict[tuple[str, int], int] = {}

    def advance(self, topic: str, partition: int, next_offset: int, leader_epoch: int = -1) -> None:
        """Record the offset after a processed message, even one below the last, with that message's
        leader epoch (-1: unknown). Committed with the offset, the epoch lets the next reader of the
        partition check its start against the log's history, and notice a truncation since.

        The position goes back without a revocation when the log was truncated under the consumer
        (an unclean leader election; librdkafka's log-truncation detection, or an out-of-range
        offset reset to the earliest): what is read from there was processed, so the lower offset is
        the one to commit. Committing the old, higher one would skip the records written anew at
        those offsets.
        """
        tp = (topic, partition)
        last = self._next.get(tp)
        if last is not None and next_offset < last:
            log.warning(
                "offset_went_back", partition=f"{topic}[{partition}]", now=next_offset, was=last
            )
        self._next[tp] = next_offset
        self._epoch[tp] = leader_epoch

    def uncommitted(self, only: set[tuple[str, int]] | None = None) -> list[TopicPartition]:
        return [
            TopicPartition(t, p, o, leader_epoch=self._epoch.get((t, p), -1))
            for (t, p), o in self._next.items()
            if self._committed.get((t, p)) != o and (only is None or (t, p) in only)
        ]

    def mark_committed(self, offsets: list[TopicPartition]) -> None:
        for tp in offsets:
            self._committed[(tp.topic, tp.partition)] = tp.offset

    def forget(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._next.pop((tp.topic, tp.partition), None)
            self._epoch.pop((tp.topic, tp.partition), None)
            self._committed.pop((tp.topic, tp.partition), None)


# Unbound C methods: ``map`` over a batch with them runs no Python code per message.
_value = KafkaMessage.value
_error = KafkaMessage.error


def _value_bytes(messages: list[KafkaMessage]) -> int:
    """The bytes of the messages' values (len of a message is its value's; ~28 ns a message, timeit)."""
    return sum(map(len, messages))


def to_message(m: KafkaMessage) -> Message:
    ts_type, ts = m.timestamp()
    return Message(
        value=m.value(),
        key=m.key(),
        topic=cast(str, m.topic()),  # set on every consumed message
        partition=cast(int, m.partition()),
        offset=cast(int, m.offset()),
        timestamp_ms=None if ts_type == TIMESTAMP_NOT_AVAILABLE else ts,
    )


class Detector:
    """The long-running service: one consumer, one producer, one pipeline."""

    def __init__(
        self,
        settings: Settings,
        scorer: ScorerLike,
        load_scorer: Callable[[Any], ScorerLike] | None = None,
        *,
        consumer_overrides: dict[str, Any] | None = None,
    ) -> None:
        """``consumer_overrides`` are librdkafka properties for this consumer only (the benchmark sets
        ``fetch.wait.max.ms``: the embedded broker answers a waiting fetch only when it times out)."""
        self.settings = settings
        self.pipeline = Pipeline(scorer, settings.threshold, settings.events)
        self.watcher: ModelWatcher[ScorerLike] | None = (
            ModelWatcher(
                settings.model.path, load_scorer, scorer.version, settings.model.reload_interval_s
            )
            if load_scorer is not None
            else None
        )
        self.offsets = OffsetTracker()
        self.stats = RunStats()
        self.metrics = RunMetrics()
        self._show_model(scorer)
        # Stop requests, set by signal handlers: plain flags, as a handler that ran inside another's
        # threading.Event.set() would wait for ever on the lock that one holds.
        self._stopping = False
        self._aborting = False  # a second stop request: stop waiting for output
        self._delivery_errors: list[str] = []
        # records a topic refused as too large, sent again by _resend_smaller
        self._too_large: list[tuple[str, bytes | None, bytes]] = []
        # A client-wide error that waiting will not mend (credentials, ACLs, a fatal one): the loop
        # stops with it (_check_client). Others, and librdkafka's own log lines, are logged as
        # structlog events at most every CLIENT_LOG_EVERY_S per kind.
        self._client_failure: KafkaError | None = None
        # the first and the last of an unbroken run of handshake failures (MAY_PASS)
        self._refused_since: float | None = None
        self._refused_last = -math.inf
        self._client_errors = RateLimit(CLIENT_LOG_EVERY_S)
        callbacks = {"error_cb": self._on_client_error}  # and client()'s logger
        kafka = settings.kafka
        # the warm-start reader's (streamer.warmstart): this consumer's, without its callbacks
        self._warm_config = {**kafka.consumer_config(), **(consumer_overrides or {})}
        # Per partition, the offset after the last record fed to the pipeline (live or warm), kept
        # when the partition goes: if it comes back, what was fed already is not fed again.
        self._fed: dict[tuple[str, int], int] = {}
        consumer_config = {
            **self._warm_config,
            **callbacks,
            "on_commit": self._on_commit,
        }
        if settings.metrics.port is not None:  # the consumer lag, from librdkafka's statistics
            consumer_config["statistics.interval.ms"] = LAG_INTERVAL_MS
            consumer_config["stats_cb"] = self._on_statistics
            if consumer_config.get("isolation.level") == "read_uncommitted":  # kafka.extra
                self.metrics.lag_end = "hi_offset"
        # the metrics' port first: a port in use is a configuration error, found before any client
        # joins the group (it is served until run() ends)
        self._serve_metrics()
        try:
            self.consumer = client(Consumer, consumer_config)
            producer_config = kafka.producer_config()
            self.producer = client(Producer, {**producer_config, **callbacks})
        except BaseException:
            self.metrics.close()
            raise
        # librdkafka settles every record (acknowledged or failed) within message.timeout.ms (alias
        # delivery.timeout.ms)
        timeout_ms = producer_config.get("delivery.timeout.ms") or producer_config.get(
            "message.timeout.ms", 300_000
        )
        self._delivery_timeout_s = float(timeout_ms) / 1000
        self._assigned: set[tuple[str, int]] = set()
        # Per partition stalled at an unreadable batch: the offset librdkafka reports it at, and the
        # next offset to dead-letter while it keeps reporting that one (see _unreadable).
        self._stalled: dict[tuple[str, int], tuple[int, int]] = {}
        # Whether a batch may hold placeholders of unreadable records (dead-lettered by _process).
        self._unreadable_fetched = False
        self._assigned_at: float | None = None  # when partitions were last assigned
        self._commit_every_s = kafka.commit_interval_ms / 1000.0
        self._last_commit = float("-inf")
        self._first_input: float | None = None
        self.batcher: MicroBatcher[KafkaMessage] = MicroBatcher(
            self._fetch,
            settings.batch.max_events,
            settings.batch.max_wait_ms,
            stopping=lambda: self._stopping,
            max_bytes=settings.batch.max_bytes,
            size=_value_bytes,
        )

    def stop(self) -> None:
        """Ask the loop to finish its current batch, commit and close (safe from signal handlers).

        Asked again while stopping, it stops waiting for the broker to acknowledge output: the batch
        being published is then not committed (it is read again after a restart), and the loop ends
        with a DeliveryError at once rather than after up to ``message.timeout.ms``."""
        if self._stopping:
            self._aborting = True
        self._stopping = True

    # -- Kafka callbacks -------------------------------------------------------------------------
    def _on_client_error(self, err: KafkaError) -> None:
        """A client-wide error (served by consume, poll and flush, in the loop's thread)."""
        self.metrics.client_errors.labels(err.name()).inc()
        code = err.code()
        if code in MAY_PASS and code in REFUSED:
            # a failed TLS or SASL handshake may be one broker's, for a while (a rolling restart,
            # a certificate rotation): it stops the detector once it has lasted REFUSAL_LASTS_S
            now = time.monotonic()
            if self._refused_since is None or now - self._refused_last > REFUSAL_LASTS_S:
                self._refused_since = now
            self._refused_last = now
            lasting = now - self._refused_since >= REFUSAL_LASTS_S
        else:
            lasting = code in REFUSED
        if err.fatal() or lasting:
            self._client_failure = self._client_failure or err
            return
        extra = self._client_errors.allow(err.code())
        if extra is None or self._client_failure is not None:  # stopping with that one anyway
            return
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            log.warning(
                "broker_unreachable",
                bootstrap_servers=self.settings.kafka.bootstrap_servers,
                error=err.str(),
                hint="librdkafka keeps reconnecting; nothing is read or committed meanwhile",
                **extra,
            )
        else:
            log.warning("kafka_client_error", code=err.name(), error=err.str(), **extra)

    def _on_statistics(self, statistics: str) -> None:
        self.metrics.record_lag(statistics, self._assigned)

    def _check_client(self) -> None:
        """Stop with the client-wide error that waiting will not mend, if one came."""
        err = self._client_failure
        if err is None:
            return
        if err.code() in REFUSED:
            raise BrokerError(
                f"Kafka refused the detector ({err.name()}: {err.str()}): check "
                "kafka.security_protocol, the SASL mechanism and credentials or the certificates, "
                "and the ACLs of the group and the topics"
            )
        raise BrokerError(f"the Kafka client failed ({err.name()}: {err.str()})")

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if (
            err is not None
        ):  # the next commit or the next owner covers it: at-least-once still holds
            log.warning("commit_failed", error=str(err))
            return
        self._committed([p for p in partitions if p.error is None])

    def _on_delivery(self, err: KafkaError | None, msg: KafkaMessage) -> None:
        if err is None:
            return
        if err.code() in _TOO_LARGE:
            self._too_large.append((cast(str, msg.topic()), msg.key(), msg.value() or b""))
            return
        self._delivery_errors.append(f"{msg.topic()}: {err}")

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned.update((p.topic, p.partition) for p in partitions)
        self.metrics.partitions.set(len(self._assigned))
        self._forget_stalls(partitions)
        if partitions:
            self._assigned_at = time.monotonic()
            if self.settings.kafka.auto_offset_reset == "latest":
                self._pin_latest(consumer, partitions)
        self.metrics.beat()  # pinning "latest" starts may take a while
        log.info(
            "partitions_assigned", partitions=[f"{p.topic}[{p.partition}]" for p in partitions]
        )
        if partitions and self.settings.kafka.warm_start_events:
            self.warm_up(partitions)

    def warm_up(self, partitions: list[TopicPartition]) -> None:
        """Feed the pipeline the records before each assigned partition's committed offset, with
        every output dropped (streamer.warmstart); where the group never committed, nothing. What
        an assignment starts with (the benchmark times it)."""
        kafka = self.settings.kafka
        names = [f"{p.topic}[{p.partition}]" for p in partitions]
        try:
            committed = self.consumer.committed(
                [TopicPartition(p.topic, p.partition) for p in partitions], timeout=_PIN_TIMEOUT_S
            )
        except KafkaException as exc:
            log.warning("warm_start_skipped", error=str(exc), partitions=names)
            return
        ranges = warm_ranges(
            {(c.topic, c.partition): c.offset for c in committed if c.error is None},
            self._fed,
            kafka.warm_start_events,
        )
        if not ranges:
            return
        started = time.monotonic()
        got = read_ranges(
            self._warm_config,
            ranges,
            self._feed_warm,
            batch=self.settings.batch.max_events,
            timeout_s=kafka.warm_start_timeout_s,
            stopping=lambda: self._stopping,
            beat=self.metrics.beat,
        )
        for tp, offset in got.reached.items():
            self._fed[tp] = max(self._fed.get(tp, 0), offset)
        self.stats.warm_events += got.events
        self.metrics.warm_events.inc(got.events)
        (log.info if got.complete else log.warning)(
            "warm_start" if got.complete else "warm_start_incomplete",
            events=got.events,
            partitions={f"{t}[{p}]": [a, b] for (t, p), (a, b) in ranges.items()},
            reached={f"{t}[{p}]": o for (t, p), o in got.reached.items()},
            seconds=round(time.monotonic() - started, 3),
            **({"errors": got.errors[:5]} if got.errors else {}),
        )

    def _feed_warm(self, messages: list[KafkaMessage]) -> None:
        """Warm-start records through the pipeline, into its state only: no output is kept."""
        self.pipeline.process(
            list(map(_value, messages)),
            lambda i: to_message(messages[i]),
            message_keys=lambda: [m.key() for m in messages],
        )

    def _pin_latest(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Under ``auto_offset_reset = latest``, start each partition the group has never committed at
        its end as it is now, and commit that start at once.

        Left to librdkafka, "latest" is resolved again by every owner that finds no committed offset:
        events that arrive while this member owns such a partition, and are not processed when it
        stops, crashes or loses the partition, would be skipped by the next owner, which starts at
        the end again. With the start committed, "latest" applies once, on the group's first contact
        with the partition; from then on, nothing that arrived is skipped. If the broker cannot say
        (a timeout), the partition is left to librdkafka and a warning names it.
        """
        topic_partitions = [TopicPartition(p.topic, p.partition) for p in partitions]
        try:
            committed = consumer.committed(topic_partitions, timeout=_PIN_TIMEOUT_S)
            starts = {
                (c.topic, c.partition): consumer.get_watermark_offsets(
                    TopicPartition(c.topic, c.partition), timeout=_PIN_TIMEOUT_S, cached=False
                )[1]
                for c in committed
                if c.error is None and c.offset < 0  # never committed by this group
            }
        except KafkaException as exc:
            log.warning(
                "latest_start_not_pinned",
                error=str(exc),
                partitions=[f"{p.topic}[{p.partition}]" for p in partitions],
            )
            return
        if not starts:
            return
        for p in partitions:
            if (p.topic, p.partition) in starts:
                p.offset = starts[(p.topic, p.partition)]
        consumer.incremental_assign(partitions)  # instead of the automatic assignment
        pinned = [TopicPartition(t, p, o) for (t, p), o in starts.items()]
        try:
            consumer.commit(offsets=pinned, asynchronous=False)
        except KafkaException as exc:
            log.warning(
                "latest_start_not_committed",
                error=str(exc),
                partitions=[f"{t.topic}[{t.partition}]@{t.offset}" for t in pinned],
            )
            return
        log.info(
            "latest_start_pinned",
            partitions=[f"{t.topic}[{t.partition}]@{t.offset}" for t in pinned],
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {(p.topic, p.partition) for p in partitions}
        self._assigned -= revoked
        self.metrics.partitions.set(len(self._assigned))
        self.metrics.forget_partitions(revoked)
        dropped = self.batcher.discard(lambda m: (m.topic(), m.partition()) in revoked)
        self._commit(self.offsets.uncommitted(revoked), asynchronous=False)
        self.offsets.forget(partitions)
        self._forget_stalls(partitions)
        log.info(
            "partitions_revoked",
            partitions=[f"{p.topic}[{p.partition}]" for p in partitions],
            unprocessed_dropped=dropped,
        )

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = {(p.topic, p.partition) for p in partitions}
        self._assigned -= lost
        self.metrics.partitions.set(len(self._assigned))
        self.metrics.forget_partitions(lost)
        dropped = self.batcher.discard(lambda m: (m.topic(), m.partition()) in lost)
        self.offsets.forget(partitions)
        self._forget_stalls(partitions)
        log.warning(
            "partitions_lost",
            partitions=[f"{p.topic}[{p.partition}]" for p in partitions],
            unprocessed_dropped=dropped,
        )

    # -- the loop ----------------------------------------------------------------------------------
    def _fetch(self, count: int, timeout_s: float) -> list[KafkaMessage]:
        messages = self.consumer.consume(num_messages=count, timeout=timeout_s)
        if not any(map(_error, messages)):
            return messages
        good = []
        reported: set[tuple[str, int]] = (
            set()
        )  # partitions whose unreadable batch this fetch reported
        for m in messages:
            err = m.error()
            if err is None:
                good.append(m)
            elif err.fatal() or err.code() in REFUSED:  # a topic's or the group's: as client-wide
                self._on_client_error(err)
            elif (
                err.code() in _UNREADABLE
                and m.topic()
                and (at := m.offset()) is not None
                and at >= 0
            ):
                tp = (cast(str, m.topic()), cast(int, m.partition()))
                if tp not in reported:  # later ones in the same fetch repeat it, before the seek
                    reported.add(tp)
                    placeholder = self._unreadable(tp, at, err)
                    if placeholder is not None:
                        good.append(placeholder)
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer_error", error=str(err))
        return good

    def _unreadable(
        self, tp: tuple[str, int], reported: int, err: KafkaError
    ) -> KafkaMessage | None:
        """A record the consumer cannot read: a placeholder for it, dead-lettered with the error as its
        reason, and the partition sought past it, so that it neither stalls the partition nor vanishes.

        librdkafka reports an unreadable batch at its first offset on every fetch, wherever the
        position is inside it; so while it keeps reporting the same offset, the offsets after it are
        dead-lettered one by one until a readable record comes (a batch's records have no offsets of
        their own to read). None if the seek failed: the error comes again and is tried again.
        """
        last = self._stalled.get(tp)
        offset = last[1] if last is not None and last[0] == reported else reported
        try:
            self.consumer.seek(TopicPartition(tp[0], tp[1], offset + 1))
        except KafkaException as exc:
            log.warning("unreadable_record_not_passed", error=str(exc), offset=offset)
            return None
        self._stalled[tp] = (reported, offset + 1)
        self._unreadable_fetched = True
        log.error("unreadable_record", partition=f"{tp[0]}[{tp[1]}]", offset=offset, error=str(err))
        return KafkaMessage(topic=tp[0], partition=tp[1], offset=offset, error=err)

    def _forget_stalls(self, partitions: list[TopicPartition]) -> None:
        """A partition assigned again may be read again from before its unreadable batch."""
        for p in partitions:
            self._stalled.pop((p.topic, p.partition), None)

    def run(
        self,
        max_events: int | None = None,
        idle_exit_s: float | None = None,
        on_batch: Callable[[RunStats], None] | None = None,
    ) -> RunStats:
        """Consume until stopped (signal, ``max_events`` processed and committed, or ``idle_exit_s`` idle).

        ``on_batch`` is called with the statistics after every committed batch, in the loop's thread
        (the benchmark watches progress with it).
        """
        kafka = self.settings.kafka
        self.consumer.subscribe(
            kafka.input_topics,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        # Everything loaded so far (libraries, model, settings) lives as long as the loop: out of the
        # cyclic collector's sight, a full collection scans only what the loop itself keeps, which
        # turns its pauses from ~100 ms into ~1 ms (per-event objects are freed by reference counting).
        # Unfrozen on the way out, so that a detector run in-process (demo, bench) can be collected.
        gc.freeze()
        start = last_input = time.monotonic()
        failed = False
        try:
            while not self._stopping:
                self.metrics.beat()
                limit = None if max_events is None else max_events - self.stats.events
                if limit is not None and limit <= 0:
                    break
                t0 = time.perf_counter()
                batch = self.batcher.next_batch(_POLL_S, limit)
                self.producer.poll(0)
                self._check_client()
                if batch:
                    self.stats.add_stage("consume", time.perf_counter() - t0)
                    last_input = time.monotonic()
                    if self._first_input is None:
                        self._first_input = last_input
                    self._process(batch)
                    self.stats.active_s = time.monotonic() - self._first_input
                    if on_batch is not None:
                        on_batch(self.stats)
                else:
                    self._maybe_commit()  # what the last batches stored, once the interval is up
                    if idle_exit_s is not None and self._idle_s(last_input) >= idle_exit_s:
                        if self._assigned_at is None:  # not idle: never reached its topics
                            tls = (
                                f", and does it speak {kafka.security_protocol}"
                                if kafka.security_protocol not in (None, "PLAINTEXT")
                                else ""
                            )
                            raise BrokerError(
                                f"no partition of {kafka.input_topics} was assigned within "
                                f"{time.monotonic() - start:.0f} s: is {kafka.bootstrap_servers} "
                                f"reachable{tls}, and do the topics exist?"
                            )
                        log.info("idle_exit", idle_s=round(time.monotonic() - last_input, 3))
                        break
                self._maybe_swap_model()
        except BaseException:
            failed = True
            raise
        finally:
            self.stats.elapsed_s = time.monotonic() - start
            try:
                self._shutdown(failed)
            finally:
                self.metrics.close()
                gc.unfreeze()
        return self.stats

    def _idle_s(self, last_input: float) -> float:
        """How long the detector has been idle, for ``idle_exit_s``: since its last input or its last
        partition assignment, whichever came later (a rebalance is not idleness).

        Before the first assignment the wait is longer by a session timeout and 10 s: a restarted
        detector's partitions stay with its dead predecessor until the broker expels it, and leaving
        before they come would leave their last events unread.
        """
        now = time.monotonic()
        if self._assigned_at is None:
            return now - last_input - self.settings.kafka.session_timeout_ms / 1000.0 - 10.0
        return now - max(last_input, self._assigned_at)

    def _process(self, batch: list[KafkaMessage]) -> None:
        t0 = time.perf_counter()
        readable, unreadable = batch, []
        if self._unreadable_fetched:  # placeholders of unreadable records (_unreadable) among them
            self._unreadable_fetched = False
            readable = [m for m in batch if m.error() is None]
            unreadable = [m for m in batch if m.error() is not None]
        result = self.pipeline.process(
            list(map(_value, readable)),
            lambda i: to_message(readable[i]),
            message_keys=lambda: [m.key() for m in readable],
        )
        t1 = time.perf_counter()
        settings = self.settings.kafka
        for key, value in result.alerts:
            self._produce(settings.alert_topic, key, value)
        for key, value in result.dead_letters:
            self._produce(settings.dead_letter_topic, key, value)
        for m in unreadable:
            self._produce(settings.dead_letter_topic, None, self._unreadable_letter(m))
        if settings.scores_topic is not None:
            self._produce_scores(settings.scores_topic, readable, result)
        if result.alerts or result.dead_letters or unreadable or settings.scores_topic is not None:
            self._flush()
            if self._too_large:
                self._resend_smaller()
        if self._delivery_errors:
            raise DeliveryError("delivery failed: " + "; ".join(self._delivery_errors[:5]))
        t2 = time.perf_counter()
        next_offsets = self._next_offsets(batch)
        for (topic, partition), (offset, epoch) in next_offsets.items():
            self.offsets.advance(topic, partition, offset, epoch)
            if offset > self._fed.get((topic, partition), 0):
                self._fed[(topic, partition)] = offset
        self._maybe_commit()
        t3 = time.perf_counter()

        n_alerts, n_dead = len(result.alerts), len(result.dead_letters) + len(unreadable)
        stats = self.stats
        stats.batches += 1
        stats.events += len(batch)
        stats.scored += len(result.scores)
        stats.alerts += n_alerts
        stats.dead_lettered += n_dead
        for name, seconds in result.timings.items():
            stats.add_stage(name, seconds)
        metrics = self.metrics
        metrics.batches.inc()
        metrics.events.inc(len(batch))
        metrics.scored.inc(len(result.scores))
        metrics.alerts.inc(n_alerts)
        for code, count in Counter(
            [*result.dead_codes, *[ReasonCode.UNREADABLE] * len(unreadable)]
        ).items():
            metrics.dead_letters.labels(code).inc(count)
        metrics.batch_seconds.observe(t3 - t0)
        metrics.threshold.set(self.pipeline.threshold.get())
        stats.add_stage("produce", t2 - t1)
        stats.add_stage("commit", t3 - t2)
        log.info(
            "batch",
            events=len(batch),
            scored=len(result.scores),
            alerts=n_alerts,
            dead_lettered=n_dead,
            offsets={f"{t}[{p}]": o for (t, p), (o, _) in next_offsets.items()},
            threshold=round(self.pipeline.threshold.get(), 6),
            model_version=self.pipeline.scorer.version,
            ms={
                k: round(v * 1000, 3)
                for k, v in {**result.timings, "produce": t2 - t1, "commit": t3 - t2}.items()
            },
            total_ms=round((t3 - t0) * 1000, 3),
        )

    def _unreadable_letter(self, m: KafkaMessage) -> bytes:
        """The dead letter of a record that could not be read: its offset and the consumer's error."""
        err = cast(KafkaError, m.error())
        source = Source(
            topic=cast(str, m.topic()),
            partition=cast(int, m.partition()),
            offset=cast(int, m.offset()),
            timestamp_ms=None,
        )
        reason = f"unreadable record: its batch could not be read ({err.name()}: {err.str()})"
        return dead_letter(ReasonCode.UNREADABLE, reason, source, None, None, 0, datetime.now(UTC))

    def _next_offsets(self, batch: list[KafkaMessage]) -> dict[tuple[str, int], tuple[int, int]]:
        """The offset after each partition's last message in the batch, and that message's leader
        epoch (-1 when the broker gave none).

        Messages arrive in order per partition, so the batch is read from its end, and the scan stops
        once every assigned partition has been seen: a few messages instead of the whole batch.
        """
        found: dict[tuple[str, int], tuple[int, int]] = {}
        assigned, seen_assigned = self._assigned, 0
        for m in reversed(batch):
            tp = cast("tuple[str, int]", (m.topic(), m.partition()))  # set on consumed messages
            if tp not in found:
                epoch = m.leader_epoch()
                found[tp] = (cast(int, m.offset()) + 1, -1 if epoch is None else epoch)
                if tp in assigned:
                    seen_assigned += 1
                    if seen_assigned == len(assigned):
                        break
        return found

    def _produce_scores(self, topic: str, batch: list[KafkaMessage], result: BatchResult) -> None:
        alerts = result.published.tolist()
        thresholds = result.thresholds.tolist()
        for j, (i, score) in enumerate(
            zip(result.valid.tolist(), result.scores.tolist(), strict=True)
        ):
            m = batch[i]
            record = {
                "schema_version": SCHEMA_VERSION,
                "topic": m.topic(),
                "partition": m.partition(),
                "offset": m.offset(),
                "score": score,
                "threshold": thresholds[j] if thresholds[j] != float("inf") else None,
                "alert": alerts[j],
            }
            self._produce(topic, bound_key(m.key()), orjson.dumps(record))

    def _produce(self, topic: str, key: bytes | None, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, on_delivery=self._on_delivery)
                return
            except BufferError:  # local queue full: serve delivery reports, then retry
                self.producer.poll(0.1)
            except KafkaException as exc:  # over the producer's message.max.bytes
                smaller = shrink(value) if exc.args[0].code() in _TOO_LARGE else None
                if smaller is None:
                    raise DeliveryError(f"{topic}: {exc.args[0].str()}") from None
                log.warning("record_too_large", topic=topic, bytes=len(value), sent=len(smaller))
                value = smaller

    def _flush(self) -> None:
        """Wait until every record produced is acknowledged or failed (a broker's leader election can
        take longer than a batch); librdkafka settles each within ``message.timeout.ms``."""
        wait_s = self._delivery_timeout_s + FLUSH_SLACK_MS / 1000
        warned = time.monotonic()
        deadline = warned + wait_s
        # Never past the deadline: the settings keep it below max.poll.interval.ms (streamer.config).
        remaining = self.producer.flush(min(_FLUSH_STEP_S, wait_s))
        while remaining and (left := deadline - (now := time.monotonic())) > 0:
            self.metrics.beat()  # waiting for the broker, not stuck
            self._check_client()
            if self._aborting:
                raise DeliveryError(
                    f"stopped again while {remaining} output records were not acknowledged: "
                    "their batch is not committed, and is read again after a restart"
                )
            if now - warned >= _FLUSH_WARN_S:
                warned = now
                log.warning("output_not_acknowledged_yet", records=remaining)
            remaining = self.producer.flush(min(_FLUSH_STEP_S, left))
        if remaining:
            raise DeliveryError(f"{remaining} output records not acknowledged within {wait_s:g} s")

    def _resend_smaller(self) -> None:
        """Send again, one at a time, the records a topic refused as too large.

        A broker checks its topic's limit against the whole batch that librdkafka packed, and refuses
        every record in it: so each is first sent again as it was, alone, and only a record refused on
        its own goes out without its echo (``shrink``). If that too is refused, it is a delivery
        error. A record sent again arrives after later records of its partition.
        """
        refused, self._too_large = self._too_large, []
        for topic, key, value in refused:
            if not self._refused_alone(topic, key, value):
                continue
            smaller = shrink(value)
            if smaller is not None:
                log.warning("record_too_large", topic=topic, bytes=len(value), sent=len(smaller))
            if smaller is None or self._refused_alone(topic, key, smaller):
                self._delivery_errors.append(
                    f"{topic}: record too large ({len(smaller or value)} bytes)"
                )

    def _refused_alone(self, topic: str, key: bytes | None, value: bytes) -> bool:
        """Produce one record and wait for it: whether the topic refused it as too large."""
        self._produce(topic, key, value)
        self._flush()
        refused = bool(self._too_large)
        self._too_large.clear()
        return refused

    def _maybe_commit(self) -> None:
        """Commit the stored offsets asynchronously if ``commit_interval_ms`` has passed since the last."""
        now = time.monotonic()
        if now - self._last_commit < self._commit_every_s:
            return
        offsets = self.offsets.uncommitted()
        if offsets:
            self._last_commit = now
            self._commit(offsets, asynchronous=True)

    def _commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        if not offsets:
            return
        try:
            done = (
                self.consumer.commit(offsets=offsets, asynchronous=True)
                if asynchronous
                else self.consumer.commit(offsets=offsets, asynchronous=False)
            )
        except KafkaException as exc:
            # No assignment any more, or a rebalance is under way: the next owner re-reads from the last
            # committed offset, so this costs duplicates, never loss.
            log.warning(
                "commit_failed",
                error=str(exc),
                offsets=[f"{o.topic}[{o.partition}]@{o.offset}" for o in offsets],
            )
            return
        if done:  # synchronous: the broker's answer; asynchronous commits are marked in _on_commit
            self._committed([p for p in done if p.error is None])

    def _committed(self, partitions: list[TopicPartition]) -> None:
        self.offsets.mark_committed(partitions)
        if partitions:
            self.metrics.last_commit.set(time.time())

    def _maybe_swap_model(self) -> None:
        if self.watcher is None:
            return
        scorer = self.watcher.poll()
        if scorer is None:
            return
        old = self.pipeline.scorer
        try:
            self.pipeline.swap_model(scorer)
        except Exception as exc:  # the model loaded but cannot run here: keep the running one
            log.error(
                "model_refused",
                path=str(self.watcher.path),
                error=f"{type(exc).__name__}: {exc}",
                keeping=old.version,
                retry_s=max(self.watcher.interval_s, RETRY_REFUSED_S),
            )
            self.watcher.refused(old.version)
            return
        if list(scorer.features) != list(old.features):
            log.warning(
                "model_features_changed",
                added=sorted(set(scorer.features) - set(old.features)),
                removed=sorted(set(old.features) - set(scorer.features)),
            )
        self.stats.model_swaps += 1
        self.metrics.model_swaps.inc()
        self._show_model(scorer)
        log.info("model_swapped", old_version=old.version, new_version=scorer.version)

    def _show_model(self, scorer: ScorerLike) -> None:
        self.metrics.model.info(
            {"kind": scorer.kind, "name": scorer.name, "version": scorer.version}
        )

    def _serve_metrics(self) -> None:
        settings = self.settings.metrics
        if settings.port is None:
            return
        try:
            port = self.metrics.serve(
                settings.port,
                settings.host,
                certfile=settings.tls_cert_file,
                keyfile=settings.tls_key_file,
                client_cafile=settings.tls_client_ca_file,
            )
        except TLSFileError as exc:
            raise ConfigError(f"metrics.tls_*: {exc}") from None
        except OSError as exc:
            raise ConfigError(
                f"metrics: cannot serve on {settings.host}:{settings.port} ({exc})"
            ) from None
        log.info(
            "metrics_serving",
            url=f"{settings.scheme}://{settings.host}:{port}/metrics",
            client_certificate_required=settings.tls_client_ca_file is not None,
        )

    def _shutdown(self, failed: bool) -> None:
        """Flush, commit what was processed and acknowledged, close. After a failure, commit nothing new."""
        try:
            if not self._aborting:
                self.producer.flush(10.0)
            if not failed:
                self._commit(self.offsets.uncommitted(), asynchronous=False)
                if self._first_input is not None:
                    self.stats.committed_s = time.monotonic() - self._first_input
        finally:
            self.consumer.close()  # leaves the group; the revoke callback commits synchronously
        log.info(
            "stopped",
            events=self.stats.events,
            alerts=self.stats.alerts,
            dead_lettered=self.stats.dead_lettered,
            warm_events=self.stats.warm_events,
            elapsed_s=round(self.stats.elapsed_s, 3),
        )


@contextmanager
def stop_on_signals(detector: Detector) -> Iterator[None]:
    """SIGINT/SIGTERM ask the detector to stop cleanly: finish the batch, flush, commit, close; a
    second one stops it waiting for the broker to acknowledge output (``Detector.stop``)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: detector.stop())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
