"""`streamer run`'s metrics against the embedded broker: the counts match what was consumed, and the
health check sees the loop go round."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def _produce(kit, topic: str, good: int, bad: int) -> None:
    producer = Producer(kit.conf)
    for i in range(good):
        producer.produce(topic, orjson.dumps({"x": (i % 7) / 7, "y": 0.0}), key=b"k%d" % (i % 3))
    for _ in range(bad):
        producer.produce(topic, b"{not json")
    assert producer.flush(30) == 0


def test_the_counters_match_what_the_detector_consumed(kit) -> None:
    names = kit.topics("metrics")
    _produce(kit, names["in"], good=60, bad=4)
    detector = kit.detector(names)
    seen_partitions: list[float] = []
    stats = detector.run(
        idle_exit_s=4,
        on_batch=lambda _: seen_partitions.append(
            detector.metrics.registry.get_sample_value("ae_streamer_assigned_partitions")
        ),
    )
    value = detector.metrics.registry.get_sample_value
    assert stats.events == 64
    assert value("ae_streamer_events_total") == 64
    assert value("ae_streamer_scored_events_total") == 60
    assert value("ae_streamer_dead_letters_total", {"reason_code": "invalid_json"}) == 4
    assert value("ae_streamer_dead_letters_total", {"reason_code": "missing_feature"}) == 0
    assert value("ae_streamer_alerts_total") == stats.alerts
    assert value("ae_streamer_batches_total") == stats.batches >= 1
    assert value("ae_streamer_batch_duration_seconds_count") == stats.batches
    assert value("ae_streamer_last_commit_timestamp_seconds") > time.time() - 60
    assert (
        value("ae_streamer_model_info", {"kind": "dense", "name": "square", "version": "v1"}) == 1
    )
    assert set(seen_partitions) == {3.0}  # while it ran; the group was left at the end
    assert value("ae_streamer_assigned_partitions") == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _health(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamer.cli", "health", "--url", url, "--max-age-s", "30"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_run_serves_metrics_and_health_reads_them(kit, dense_checkpoint: Path) -> None:
    names = kit.topics("health")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    assert _health(url).returncode == 1  # nothing there yet
    proc = subprocess.Popen(
        kit.run_args(names, dense_checkpoint, "--metrics-port", str(port)),
        env=kit.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while (checked := _health(url)).returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert checked.returncode == 0, checked.stdout
        assert checked.stdout.startswith("healthy")
        page = urllib.request.urlopen(url, timeout=5).read().decode()
        assert "ae_streamer_events_total 0.0" in page
        assert 'ae_streamer_model_info{kind="dense"' in page
    finally:
        assert kit.stop(proc) == 0
    assert _health(url).returncode == 1  # stopped: the page is gone
