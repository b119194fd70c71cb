"""The metrics page and the health check that reads it (no broker: the HTTP side alone)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import orjson
import pytest

from streamer.broker import free_port
from streamer.monitoring import HEARTBEAT, RunMetrics, health


@pytest.fixture
def served() -> Iterator[tuple[RunMetrics, str]]:
    metrics = RunMetrics()
    port = metrics.serve(0, "127.0.0.1")
    try:
        yield metrics, f"http://127.0.0.1:{port}/metrics"
    finally:
        metrics.close()


def test_a_recent_heartbeat_is_healthy_and_an_old_one_is_not(served) -> None:
    metrics, url = served
    metrics.beat()
    ok, why = health(url, max_age_s=30)
    assert ok, why
    metrics.heartbeat.set(time.time() - 120)  # a loop stuck for two minutes
    ok, why = health(url, max_age_s=30)
    assert not ok and "(limit 30 s)" in why, why


def test_no_detector_there_is_unhealthy_not_an_exception() -> None:
    ok, why = health(f"http://127.0.0.1:{free_port()}/metrics", max_age_s=30)
    assert not ok and why.startswith("unhealthy:"), why


def test_a_page_without_the_heartbeat_is_not_taken_for_a_detector(served) -> None:
    metrics, url = served
    metrics.registry.unregister(metrics.heartbeat)
    ok, why = health(url, max_age_s=30)
    assert not ok and HEARTBEAT in why, why


def test_each_detector_counts_in_its_own_registry() -> None:
    a, b = RunMetrics(), RunMetrics()
    a.events.inc(5)
    assert a.registry.get_sample_value("ae_streamer_events_total") == 5
    assert b.registry.get_sample_value("ae_streamer_events_total") == 0


def test_a_service_that_is_not_http_is_unhealthy_not_a_traceback() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"SSH-2.0-OpenSSH\r\n")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        ok, why = health(f"http://127.0.0.1:{port}/metrics", max_age_s=30)
        thread.join(timeout=5)
    assert not ok and why.startswith("unhealthy:"), why


def test_health_does_not_import_torch() -> None:
    """It runs every few seconds beside the detector: the full command line imports torch (3 s and
    300 MB a check, which a container's memory limit or a 10 s timeout could turn into unhealthy)."""
    code = (
        "import sys; from streamer.cli import main; "
        "rc = main(['health', '--url', 'http://127.0.0.1:9/metrics']); "
        "assert rc == 1, rc; assert 'torch' not in sys.modules, 'torch imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("unhealthy:")


def test_the_lag_is_the_end_minus_the_committed_offset_for_assigned_partitions_only() -> None:
    metrics = RunMetrics()

    def part(end: int, committed: int, hi: int | None = None) -> dict[str, int]:
        return {
            "ls_offset": end,
            "hi_offset": end if hi is None else hi,
            "committed_offset": committed,
        }

    stats = {
        "topics": {
            "events": {
                "partitions": {
                    "0": part(200, 50, hi=210),
                    "1": part(200, -1001),  # nothing committed yet: not known
                    "2": part(200, 1_000),  # committed past the end reported: 0
                    "3": part(200, 0),  # not assigned here
                    "-1": part(5, 0),  # librdkafka's internal partition
                }
            }
        }
    }
    assigned = {("events", 0), ("events", 1), ("events", 2)}
    metrics.record_lag(orjson.dumps(stats), assigned)
    metrics.record_lag(b"not json", assigned)  # ignored
    lag = metrics.registry.get_sample_value
    series = "ae_streamer_consumer_lag"
    assert lag(series, {"topic": "events", "partition": "0"}) == 150  # the last stable offset's
    assert lag(series, {"topic": "events", "partition": "1"}) is None
    assert lag(series, {"topic": "events", "partition": "2"}) == 0
    assert lag(series, {"topic": "events", "partition": "3"}) is None
    # a lag that becomes unknown goes, rather than standing at its last value
    stats["topics"]["events"]["partitions"]["0"] = part(-1, 50)
    metrics.record_lag(orjson.dumps(stats), assigned)
    assert lag(series, {"topic": "events", "partition": "0"}) is None
    metrics.lag_end = "hi_offset"  # a consumer reading uncommitted records
    stats["topics"]["events"]["partitions"]["0"] = part(200, 50, hi=210)
    metrics.record_lag(orjson.dumps(stats), assigned)
    assert lag(series, {"topic": "events", "partition": "0"}) == 160
    metrics.forget_partitions([("events", 0), ("events", 9)])
    assert lag(series, {"topic": "events", "partition": "0"}) is None
