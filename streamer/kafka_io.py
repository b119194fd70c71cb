"""Small Kafka helpers shared by commands that read or write a topic outside the detector loop."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from streamer.errors import BrokerError

# Errors that waiting will not mend: reading stops with them rather than returning too little.
_REFUSED = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError._AUTHENTICATION,
        KafkaError._SSL,
    }
)


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
    consumer = Consumer(
        {
            **client_config,
            "group.id": "ae-streamer-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10)
        info = meta.topics.get(topic)
        if info is None or info.error is not None:
            raise BrokerError(
                f"topic {topic!r} is not available: {info.error if info else 'unknown'}"
            )
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in info.partitions])
        n = 0
        last = time.monotonic()
        error: KafkaError | None = None
        while n < max_events and time.monotonic() - last < idle_s:
            for m in consumer.consume(num_messages=min(10_000, max_events - n), timeout=0.5):
                err = m.error()
                if err is not None:
                    if err.fatal():
                        raise KafkaException(err)
                    if err.code() in _REFUSED:
                        raise BrokerError(f"cannot read topic {topic!r}: {err.str()}")
                    error = err
                    continue
                last = time.monotonic()
                value = m.value()
                n += 1
                yield value if value is None or len(value) <= max_message_bytes else None
        if n == 0 and error is not None:  # an empty topic reads as nothing, without an error
            raise BrokerError(f"read nothing from topic {topic!r}: {error.str()}")
    finally:
        consumer.close()
