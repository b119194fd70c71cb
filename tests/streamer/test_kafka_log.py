"""librdkafka's log lines through structlog: one JSON-able event per line let through, rate-limited."""

from __future__ import annotations

import logging

import pytest
import structlog.testing

from streamer.kafka_io import RateLimit, client_logger


def test_rate_limit_lets_one_event_per_key_through_and_counts_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr("streamer.kafka_io.time.monotonic", lambda: now[0])
    limit = RateLimit(30.0)
    assert limit.allow("FAIL") == 0
    assert [limit.allow("FAIL") for _ in range(5)] == [None] * 5
    assert limit.allow("other") == 0  # keys are limited apart
    now[0] += 30.0
    assert limit.allow("FAIL") == 5  # the five held back since, reported with the next one
    assert limit.allow("FAIL") is None


def test_client_lines_become_structlog_events_with_their_level() -> None:
    logger = client_logger(every_s=3600)
    with structlog.testing.capture_logs() as logs:
        # as confluent-kafka calls it: a format and (facility, client name, text)
        for _ in range(3):
            logger.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", "refused")
        logger.log(logging.WARNING, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", "a warning")
    assert logs == [
        {
            "event": "kafka_client_log",
            "log_level": "error",
            "facility": "FAIL",
            "client": "rdkafka#consumer-1",
            "message": "refused",
        },
        {
            "event": "kafka_client_log",
            "log_level": "warning",
            "facility": "FAIL",
            "client": "rdkafka#consumer-1",
            "message": "a warning",
        },
    ]
    assert not logger.propagate  # nothing reaches the root logger's handlers as well
