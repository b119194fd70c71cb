"""The metrics page and the health check that reads it (no broker: the HTTP side alone)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from streamer.broker import free_port
from streamer.monitoring import HEARTBEAT, RunMetrics, TLSFileError, client_context, health


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


def test_the_page_over_tls_is_read_with_its_ca_and_not_without(pki: dict[str, Path]) -> None:
    metrics = RunMetrics()
    port = metrics.serve(0, "127.0.0.1", certfile=pki["cert"], keyfile=pki["key"])
    try:
        metrics.beat()
        url = f"https://127.0.0.1:{port}/metrics"
        ok, why = health(url, 30, client_context(pki["ca"]))
        assert ok, why
        ok, why = health(url, 30, client_context(pki["other_ca"]))  # not the page's issuer
        assert not ok and "CERTIFICATE_VERIFY_FAILED" in why, why
        ok, why = health(url, 30)  # the system's CAs know nothing of it
        assert not ok and "CERTIFICATE_VERIFY_FAILED" in why, why
        ok, why = health(f"http://127.0.0.1:{port}/metrics", 30)  # plain http to a TLS port
        assert not ok and why.startswith("unhealthy:"), why
    finally:
        metrics.close()


def test_a_silent_client_holds_up_no_one_else(pki: dict[str, Path]) -> None:
    """prometheus_client's https server shakes hands in the thread that accepts connections: one
    connection that said nothing stalled every health check behind it (timed out after 5 s)."""
    metrics = RunMetrics()
    port = metrics.serve(0, "127.0.0.1", certfile=pki["cert"], keyfile=pki["key"])
    context = client_context(pki["ca"])
    url = f"https://127.0.0.1:{port}/metrics"
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    try:
        metrics.beat()
        for _ in range(3):
            ok, why = health(url, 30, context)
            assert ok, why
        silent[0].sendall(b"GET /metrics HTTP/1.1\r\n\r\n")  # no handshake: that one is dropped
        try:
            answer = silent[0].recv(1024)
        except ConnectionResetError:
            answer = b""
        assert b"ae_streamer" not in answer
        ok, why = health(url, 30, context)
        assert ok, why
    finally:
        for sock in silent:
            sock.close()
        metrics.close()


def test_an_idle_connection_is_closed_after_the_client_timeout(
    served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prometheus_client's http server gave a connection that never sent its request a thread for
    good: each port scan that left one open kept a thread."""
    import streamer.monitoring as monitoring

    monkeypatch.setattr(monitoring._QuietHandler, "timeout", 0.3)
    metrics, url = served
    port = int(url.split(":")[2].split("/")[0])
    with socket.create_connection(("127.0.0.1", port)) as idle:
        idle.settimeout(10)
        metrics.beat()
        ok, why = health(url, 30)
        assert ok, why
        started = time.monotonic()
        assert idle.recv(1024) == b""  # closed by the detector, not by this test's timeout
        assert time.monotonic() - started < 5


def test_a_client_ca_lets_only_its_clients_read_the_page(pki: dict[str, Path]) -> None:
    metrics = RunMetrics()
    port = metrics.serve(
        0, "127.0.0.1", certfile=pki["cert"], keyfile=pki["key"], client_cafile=pki["ca"]
    )
    try:
        metrics.beat()
        url = f"https://127.0.0.1:{port}/metrics"
        ok, why = health(url, 30, client_context(pki["ca"], pki["client_cert"], pki["client_key"]))
        assert ok, why
        ok, why = health(url, 30, client_context(pki["ca"]))  # no client certificate
        assert not ok and why.startswith("unhealthy:"), why
        stranger = client_context(pki["ca"], pki["stranger"], pki["stranger"])
        ok, why = health(url, 30, stranger)  # a certificate from another CA
        assert not ok and why.startswith("unhealthy:"), why
    finally:
        metrics.close()


def test_unusable_tls_files_are_refused_before_anything_is_bound(
    pki: dict[str, Path], tmp_path: Path
) -> None:
    """An encrypted key made OpenSSL prompt for its password on the terminal: a service hangs there."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki["key"].read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"hunter2"),
        )
    )
    cases = [
        ({"certfile": pki["cert"], "keyfile": encrypted}, "encrypted"),
        ({"certfile": pki["cert"], "keyfile": pki["client_key"]}, "cannot use the certificate"),
        ({"certfile": tmp_path / "missing.pem", "keyfile": pki["key"]}, "missing.pem"),
        ({"certfile": pki["cert"], "keyfile": pki["key"], "client_cafile": pki["key"]}, "the CA"),
        ({"certfile": pki["cert"]}, "give both or neither"),
        ({"client_cafile": pki["ca"]}, "needs a certificate"),
    ]
    for files, message in cases:
        port = free_port()
        with pytest.raises(TLSFileError, match=message):
            RunMetrics().serve(port, "127.0.0.1", **files)
        with socket.socket() as probe:  # nothing was left listening
            assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_metrics_tls_settings_go_together() -> None:
    from streamer.config import load_settings
    from streamer.errors import ConfigError

    with pytest.raises(ConfigError, match="tls_cert_file and tls_key_file go together"):
        load_settings(None, {"metrics": {"tls_cert_file": "c.pem"}})
    with pytest.raises(ConfigError, match=r"tls_client_ca_file .* needs tls_cert_file"):
        load_settings(None, {"metrics": {"tls_client_ca_file": "ca.pem"}})
    given = load_settings(None, {"metrics": {"tls_cert_file": "c.pem", "tls_key_file": "k.pem"}})
    assert given.metrics.scheme == "https" and load_settings().metrics.scheme == "http"


def test_health_reads_an_https_page_from_the_command_line(
    pki: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from streamer.cli import main

    metrics = RunMetrics()
    port = metrics.serve(
        0, "127.0.0.1", certfile=pki["cert"], keyfile=pki["key"], client_cafile=pki["ca"]
    )
    try:
        metrics.beat()
        url = ["--url", f"https://127.0.0.1:{port}/metrics"]
        client = ["--cert-file", str(pki["client_cert"]), "--key-file", str(pki["client_key"])]
        assert main(["health", *url, "--ca-file", str(pki["ca"]), *client]) == 0
        assert capsys.readouterr().out.startswith("healthy")
        assert main(["health", *url, "--ca-file", str(pki["ca"])]) == 1
        assert capsys.readouterr().out.startswith("unhealthy")
        assert main(["health", *url, "--cert-file", str(pki["client_cert"])]) == 2
        assert "go together" in capsys.readouterr().err
        assert main(["health", *url, "--ca-file", str(pki["key"])]) == 2  # a key is no CA
        assert "cannot use the TLS files" in capsys.readouterr().err
    finally:
        metrics.close()


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


def test_run_refuses_unusable_tls_files_at_start_naming_them(
    dense_checkpoint: Path, tmp_path: Path
) -> None:
    """Before any broker is reached (none listens here), and not as a traceback."""
    import os

    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
    env |= {"STREAMER_METRICS__TLS_CERT_FILE": str(bad), "STREAMER_METRICS__TLS_KEY_FILE": str(bad)}
    argv = ["run", "--bootstrap", f"127.0.0.1:{free_port()}", "--input-topic", "in"]
    argv += ["--model", str(dense_checkpoint), "--metrics-port", "0"]
    proc = subprocess.run(
        [sys.executable, "-m", "streamer.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    error = orjson.loads(proc.stderr.strip().splitlines()[-1])["error"]
    assert error.startswith("metrics.tls_*: cannot use the certificate") and str(bad) in error
