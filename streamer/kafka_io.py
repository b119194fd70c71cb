"""Small Kafka helpers shared by commands that read or write a topic outside the detector loop."""

from __future__ import annotations

import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Any, TypeVar

import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from streamer.alerts import bound_key
from streamer.errors import BrokerError, ConfigError

C = TypeVar("C")
log = structlog.get_logger("streamer.kafka")
_ALL_BROKERS_DOWN = KafkaError._ALL_BROKERS_DOWN

# librdkafka's 'Invalid value "..." for configuration property "..."': the value may be a secret (and
# may hold quotes itself, so everything up to the property clause goes).
_QUOTED_VALUE = re.compile(
    r'(value\s+)".*"(?=\s+for configuration property)', re.IGNORECASE | re.DOTALL
)


def client(cls: Callable[[dict[str, Any]], C], config: dict[str, Any]) -> C:
    """A librdkafka client (Consumer, Producer, AdminClient) whose log lines go through structlog
    (``client_logger``) unless ``config`` names a ``logger``; a rejected setting is a ConfigError that
    names the property without its value (``kafka.extra`` values are secrets, and librdkafka quotes
    them)."""
    if "logger" not in config:
        # with librdkafka's debug contexts on, every line is wanted (at log.level DEBUG)
        config = {
            **config,
            "logger": client_logger(0.0 if "debug" in config else CLIENT_LOG_EVERY_S),
        }
    try:
        return cls(config)
    except KafkaException as exc:
        reason = _QUOTED_VALUE.sub(r'\1"***"', exc.args[0].str())
        raise ConfigError(f"Kafka client configuration rejected: {reason}") from None


# Errors that waiting will not mend (credentials, certificates, ACLs): reading stops with them rather
# than returning too little, and the detector stops with them rather than retrying for ever.
REFUSED = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError._AUTHENTICATION,
        KafkaError._SSL,
    }
)

# Of those, a failed TLS handshake: a broker's may fail for a while and pass (a rolling restart, a
# certificate rotation), so the detector stops with it only when it lasts. Not _AUTHENTICATION:
# librdkafka reports refused SASL credentials as that (not as SASL_AUTHENTICATION_FAILED).
MAY_PASS = frozenset({KafkaError._SSL})

# librdkafka repeats the line of a failing connection many times a second (about 20 with the broker
# down): each distinct line (its numbers aside) is logged at most once per this many seconds, the next
# time with a count of the repeats not logged.
CLIENT_LOG_EVERY_S = 30.0
# Distinct lines (and error codes) the rate limit remembers; the least recently seen go first.
_RATE_KEYS = 512
# Numbers in a librdkafka line (addresses, ports, durations, counts): a line differing only in them is
# a repeat.
_NUMBERS = re.compile(r"\d+")


class RateLimit:
    """At most one event per key every ``every_s`` seconds (0: every event), for at most ``max_keys``
    keys (the least recently seen forgotten first)."""

    def __init__(self, every_s: float, max_keys: int = _RATE_KEYS) -> None:
        if every_s < 0 or max_keys < 1:
            raise ValueError(f"every_s must be >= 0 and max_keys >= 1, got {every_s}, {max_keys}")
        self.every_s, self.max_keys = every_s, max_keys
        self._seen: OrderedDict[Hashable, tuple[float, int]] = (
            OrderedDict()
        )  # last let through, held

    def allow(self, key: Hashable) -> dict[str, int] | None:
        """None to hold this event back; else the fields to log with it: how many were held back
        since the last one let through (``repeats_not_logged``), when any were."""
        now = time.monotonic()
        last, held = self._seen.pop(key, (-math.inf, 0))
        if now - last < self.every_s:
            self._seen[key] = (last, held + 1)
            return None
        self._seen[key] = (now, 0)
        while len(self._seen) > self.max_keys:
            self._seen.popitem(last=False)
        return {"repeats_not_logged": held} if held else {}


class _ToStructlog(logging.Handler):
    """librdkafka's log lines (``logger`` client property: facility, client name, text) as structlog
    events, so that a JSON log stays JSON; each distinct line rate-limited (``RateLimit``)."""

    def __init__(self, every_s: float) -> None:
        super().__init__(logging.DEBUG)
        self.limit = RateLimit(every_s)

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if isinstance(args, tuple) and len(args) == 3:
            facility, name, text = (str(a) for a in args)
        else:
            facility, name, text = "", "", record.getMessage()
        extra = self.limit.allow((record.levelno, facility, _NUMBERS.sub("#", text)))
        if extra is None:
            return
        log.log(
            record.levelno,
            "kafka_client_log",
            facility=facility,
            client=name,
            message=text,
            **extra,
        )


def client_logger(every_s: float = CLIENT_LOG_EVERY_S) -> logging.Logger:
    """A logger for librdkafka's ``logger`` property that writes through structlog (not registered
    with ``logging``: it reaches no root handler, and each client may have its own)."""
    logger = logging.Logger("streamer.kafka.client", logging.DEBUG)
    logger.addHandler(_ToStructlog(every_s))
    logger.propagate = False
    return logger


def read_topic(
    client_config: dict[str, Any],
    topic: str,
    max_events: int,
    idle_s: float = 3.0,
    max_message_bytes: int = 1_048_576,
) -> Iterator[bytes | None]:
    """Read a topic from its beginning, without a consumer group or commits, until ``max_events`` values
    are read or nothing arrives for ``idle_s`` (watermarks are not trusted: some brokers report them late).
    Values over ``max_message_bytes`` are yielded as None (the caller counts them as unusable)."""
    for _, value in read_topic_records(client_config, topic, max_events, idle_s, max_message_bytes):
        yield value


def read_topic_records(
    client_config: dict[str, Any],
    topic: str,
    max_events: int,
    idle_s: float = 3.0,
    max_message_bytes: int = 1_048_576,
) -> Iterator[tuple[bytes | None, bytes | None]]:
    """``read_topic``, with each value's Kafka key: ``(key, value)``; a key over ``MAX_KEY_BYTES`` is
    ``sha256:<hex>`` of it, as the detector keys it (``streamer.alerts.bound_key``)."""
    client_errors: list[KafkaError] = []  # authentication, TLS, transport: not from consume()
    read_errors: list[KafkaError] = []  # from consume(): the topic's partitions
    consumer = client(
        Consumer,
        {
            **client_config,
            "group.id": "ae-streamer-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "error_cb": client_errors.append,
        },
    )
    try:
        try:
            meta = consumer.list_topics(topic, timeout=10)
        except KafkaException as exc:
            raise BrokerError(f"cannot read topic {topic!r}: {exc.args[0].str()}") from None
        info = meta.topics.get(topic)
        if info is None or info.error is not None:
            raise BrokerError(
                f"topic {topic!r} is not available: {info.error if info else 'unknown'}"
            )
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in info.partitions])
        n = 0
        last = time.monotonic()
        while n < max_events and time.monotonic() - last < idle_s:
            refused = [e for e in client_errors + read_errors if e.code() in REFUSED]
            if refused:
                raise BrokerError(f"cannot read topic {topic!r}: {refused[0].str()}")
            for m in consumer.consume(num_messages=min(10_000, max_events - n), timeout=0.5):
                err = m.error()
                if err is not None:
                    if err.fatal():
                        raise KafkaException(err)
                    read_errors.append(err)
                    continue
                last = time.monotonic()
                value = m.value()
                n += 1
                small = value is None or len(value) <= max_message_bytes
                yield bound_key(m.key()), value if small else None
        # An empty topic reads as nothing, without an error; a lone dropped connection is retried.
        unread = read_errors + [e for e in client_errors if e.code() == _ALL_BROKERS_DOWN]
        if n == 0 and unread:
            raise BrokerError(f"read nothing from topic {topic!r}: {unread[-1].str()}")
    finally:
        consumer.close()
