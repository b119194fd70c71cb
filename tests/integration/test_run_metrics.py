"""`streamer run`'s metrics against the embedded broker: the counts match what was consumed, and the
health check sees the loop go round."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import orjson
import pytest
from confluent_kafka import Producer

from streamer.broker import free_port
from streamer.monitoring import client_context

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


def _health(url: str, *tls: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamer.cli", "health", "--url", url, "--max-age-s", "30", *tls],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("tls", [False, True], ids=["http", "mutual-tls"])
def test_run_serves_metrics_and_health_reads_them(
    kit, dense_checkpoint: Path, pki: dict[str, Path], tls: bool
) -> None:
    names = kit.topics("health")
    port = free_port()
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/metrics"
    env = kit.env()
    client: list[str] = []
    context = None
    if tls:  # the page over https, to clients with a certificate from the CA only
        env |= {
            "STREAMER_METRICS__TLS_CERT_FILE": str(pki["cert"]),
            "STREAMER_METRICS__TLS_KEY_FILE": str(pki["key"]),
            "STREAMER_METRICS__TLS_CLIENT_CA_FILE": str(pki["ca"]),
        }
        client = ["--ca-file", str(pki["ca"])]
        client += ["--cert-file", str(pki["client_cert"]), "--key-file", str(pki["client_key"])]
        context = client_context(pki["ca"], pki["client_cert"], pki["client_key"])
    assert _health(url, *client).returncode == 1  # nothing there yet
    proc = subprocess.Popen(
        kit.run_args(names, dense_checkpoint, "--metrics-port", str(port)),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while (checked := _health(url, *client)).returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert checked.returncode == 0, checked.stdout
        assert checked.stdout.startswith("healthy")
        page = urllib.request.urlopen(url, timeout=5, context=context).read().decode()
        assert "ae_streamer_events_total 0.0" in page
        assert 'ae_streamer_model_info{kind="dense"' in page
        if tls:  # without a client certificate the page is not read
            refused = _health(url, "--ca-file", str(pki["ca"]))
            assert refused.returncode == 1 and refused.stdout.startswith("unhealthy")
    finally:
        assert kit.stop(proc) == 0
    assert _health(url, *client).returncode == 1  # stopped: the page is gone
    assert proc.stderr is not None
    log = proc.stderr.read().decode()
    assert '"metrics_serving"' in log and url in log, log[-2000:]  # the scheme it serves


class _PacedScorer:
    """Sums squares, taking ``delay_s`` a batch: the detector stays behind its input for a while."""

    kind, name, version, features, window = "dense", "paced", "v1", ("x", "y"), 1
    train_scores = np.linspace(0.0, 3.0, 1_000)

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        time.sleep(self.delay_s)
        err = (x.astype(np.float64) ** 2).astype(np.float32)
        return err.sum(axis=1).astype(np.float64), err


def test_the_consumer_lag_falls_as_the_detector_catches_up(
    kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("streamer.runner.LAG_INTERVAL_MS", 300)
    names = kit.topics("lag", partitions=1)
    producer = Producer({**kit.conf, "linger.ms": 0})
    for i in range(300):  # one record batch each: the embedded broker's end is its last batch's
        producer.produce(names["in"], orjson.dumps({"x": 0.1, "y": float(i % 5)}))
        producer.flush(10)
    detector = kit.detector(
        names,
        _PacedScorer(delay_s=0.25),
        sections={"batch": {"max_events": 20}, "metrics": {"port": 0}},
        commit_interval_ms=0,
    )
    lags: list[float] = []

    def watch(_: object) -> None:
        value = detector.metrics.registry.get_sample_value(
            "ae_streamer_consumer_lag", {"topic": names["in"], "partition": "0"}
        )
        if value is not None:
            lags.append(value)

    stats = detector.run(idle_exit_s=3, on_batch=watch)
    assert stats.events == 300
    assert lags and max(lags) > 100, lags  # behind at first
    assert lags[-1] < max(lags) and min(lags) >= 0, lags  # and catching up, never below 0
    assert all(a >= b for a, b in itertools.pairwise(lags)), lags  # no new input: it falls
    # the group was left at the end: the partition's series is gone
    assert (
        detector.metrics.registry.get_sample_value(
            "ae_streamer_consumer_lag", {"topic": names["in"], "partition": "0"}
        )
        is None
    )
