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
    assert limit.allow("FAIL") == {}
    assert [limit.allow("FAIL") for _ in range(5)] == [None] * 5
    assert limit.allow("other") == {}  # keys are limited apart
    now[0] += 30.0
    assert limit.allow("FAIL") == {"repeats_not_logged": 5}  # reported with the next one
    assert limit.allow("FAIL") is None


def test_rate_limit_forgets_the_least_recently_seen_keys_first() -> None:
    limit = RateLimit(3600.0, max_keys=2)
    assert limit.allow("a") == {} and limit.allow("b") == {}
    assert limit.allow("a") is None  # a is now the most recent
    assert limit.allow("c") == {}  # b goes
    assert limit.allow("b") == {} and limit.allow("a") == {}  # b forgot, then a pushed out by b
    with pytest.raises(ValueError):
        RateLimit(-1.0)


def _line(logger: logging.Logger, level: int, facility: str, text: str) -> None:
    """As confluent-kafka calls the logger: a format and (facility, client name, text)."""
    logger.log(level, "%s [%s] %s", facility, "rdkafka#consumer-1", text)


def test_client_lines_become_structlog_events_and_only_repeats_are_held_back() -> None:
    logger = client_logger(every_s=3600)
    with structlog.testing.capture_logs() as logs:
        for port in (9092, 9093, 9094):  # the same line for three brokers: repeats of one
            _line(logger, logging.ERROR, "FAIL", f"127.0.0.1:{port}: Connect failed (after 0ms)")
        _line(logger, logging.WARNING, "CONFWARN", "linger.ms is a producer property: ignored")
        _line(logger, logging.WARNING, "CONFWARN", "fetch.wait.max.ms is a consumer property")
    assert [(e["log_level"], e["facility"], e["message"]) for e in logs] == [
        ("error", "FAIL", "127.0.0.1:9092: Connect failed (after 0ms)"),
        ("warning", "CONFWARN", "linger.ms is a producer property: ignored"),
        ("warning", "CONFWARN", "fetch.wait.max.ms is a consumer property"),
    ]
    assert {e["event"] for e in logs} == {"kafka_client_log"}
    assert not logger.propagate  # nothing reaches the root logger's handlers as well


def test_with_no_rate_limit_every_line_is_logged() -> None:
    logger = client_logger(every_s=0.0)  # what client() takes when librdkafka's debug is on
    with structlog.testing.capture_logs() as logs:
        for _ in range(5):
            _line(logger, logging.WARNING, "FETCH", "fetching partition 0")
    assert len(logs) == 5
