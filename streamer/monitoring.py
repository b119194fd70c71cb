"""Prometheus metrics of ``streamer run``, and the health check that reads them.

What an operator graphs and pages on: events in, scored, alerted and dead-lettered; batch time; when
offsets were last committed; partitions held; the threshold; the model scoring now; Kafka client
errors by code. Each detector keeps its own registry (not prometheus_client's process-wide one, so
that detectors run in-process, as the tests and the benchmark do, count apart), served over HTTP
when ``metrics.port`` is set (over https with ``metrics.tls_cert_file`` and ``tls_key_file``, to
clients with a certificate from ``tls_client_ca_file`` where that is set). No label takes values from the input: entity keys never become label
values, so the number of series stays bounded whatever the stream holds.

``ae_streamer_loop_heartbeat_timestamp_seconds`` is set on every turn of the loop (at most about
every 0.5 s while idle, and every second while it waits for the broker to acknowledge output), so its age
tells a live loop from a stuck one: ``streamer health`` exits 1 when it is older than ``--max-age-s``.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    make_wsgi_app,
)
from prometheus_client.parser import text_string_to_metric_families

from streamer.alerts import ReasonCode

HEARTBEAT = "ae_streamer_loop_heartbeat_timestamp_seconds"
# How often librdkafka reports its statistics (the consumer lag) while metrics are served.
LAG_INTERVAL_MS = 5_000
# The most of a metrics page `streamer health` reads (a detector's is a few kB).
MAX_PAGE_BYTES = 1 << 20
_BATCH_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)


class RunMetrics:
    """The detector's metrics, in a registry of their own."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.events = Counter(
            "ae_streamer_events", "Input events processed (scored or dead-lettered)", registry=r
        )
        self.scored = Counter("ae_streamer_scored_events", "Input events scored", registry=r)
        self.alerts = Counter("ae_streamer_alerts", "Alerts published", registry=r)
        self.dead_letters = Counter(
            "ae_streamer_dead_letters",
            "Input events dead-lettered, by reason_code (a closed set: streamer.alerts.ReasonCode)",
            ["reason_code"],
            registry=r,
        )
        for code in ReasonCode:  # every series from the start, so that rate() sees the first one
            self.dead_letters.labels(code.value)
        self.batches = Counter("ae_streamer_batches", "Micro-batches processed", registry=r)
        self.batch_seconds = Histogram(
            "ae_streamer_batch_duration_seconds",
            "Time to process a micro-batch: decode, score, threshold, publish and wait for the "
            "broker's acknowledgement, store offsets",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.last_commit = Gauge(
            "ae_streamer_last_commit_timestamp_seconds",
            "When offsets were last committed (Unix time; 0: not yet)",
            registry=r,
        )
        self.heartbeat = Gauge(HEARTBEAT, "When the loop last went round (Unix time)", registry=r)
        self.partitions = Gauge(
            "ae_streamer_assigned_partitions",
            "Input partitions assigned to this detector",
            registry=r,
        )
        self.lag = Gauge(
            "ae_streamer_consumer_lag",
            "Events of an assigned partition not yet committed by the group: its end (last stable "
            "offset) minus the committed offset, from librdkafka's statistics every "
            "LAG_INTERVAL_MS; never below 0",
            ["topic", "partition"],
            registry=r,
        )
        self.threshold = Gauge(
            "ae_streamer_threshold", "The online threshold after the last batch", registry=r
        )
        self.warm_events = Counter(
            "ae_streamer_warm_start_events",
            "Records read again into the state when partitions were assigned (streamer.warmstart); "
            "not counted as events",
            registry=r,
        )
        self.model_swaps = Counter(
            "ae_streamer_model_swaps", "New model versions swapped in while running", registry=r
        )
        self.model = Info("ae_streamer_model", "The model scoring now", registry=r)
        self.client_errors = Counter(
            "ae_streamer_kafka_client_errors",
            "Client-wide Kafka errors by librdkafka's error name (_TRANSPORT, _ALL_BROKERS_DOWN, ...)",
            ["code"],
            registry=r,
        )
        self._server: WSGIServer | None = None
        # the statistics' field that is a partition's end for the lag: "ls_offset" (last stable
        # offset) under isolation.level read_committed, librdkafka's default; else "hi_offset"
        self.lag_end = "ls_offset"

    def beat(self) -> None:
        self.heartbeat.set(time.time())

    def record_lag(self, statistics: bytes | str, assigned: set[tuple[str, int]]) -> None:
        """The consumer lag of each assigned partition from librdkafka's statistics JSON (its
        ``stats_cb``): the partition's end (its last stable offset, or its high watermark where the
        consumer reads uncommitted records: ``lag_end``) minus the group's committed offset, 0 where
        the commit is past the end (a broker can report its end late); no series where either is
        not known (librdkafka's own ``consumer_lag`` is -1 then, and would leave the last value
        standing)."""
        try:
            topics = orjson.loads(statistics).get("topics", {})
        except (orjson.JSONDecodeError, AttributeError):
            return
        for topic, info in topics.items():
            for partition, stats in info.get("partitions", {}).items():
                if (topic, _int(partition)) not in assigned:
                    continue
                end = _offset(stats.get(self.lag_end))
                committed = _offset(stats.get("committed_offset"))
                if end is None or committed is None:
                    with contextlib.suppress(KeyError):
                        self.lag.remove(topic, partition)
                else:
                    self.lag.labels(topic, partition).set(max(0, end - committed))

    def forget_partitions(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Drop the lag series of partitions no longer assigned."""
        for topic, partition in partitions:
            with contextlib.suppress(KeyError):  # no statistics came for it
                self.lag.remove(topic, str(partition))

    def serve(
        self,
        port: int,
        host: str,
        certfile: str | Path | None = None,
        keyfile: str | Path | None = None,
        client_cafile: str | Path | None = None,
    ) -> int:
        """Serve the metrics on ``http://host:port/metrics`` from a daemon thread; the port bound
        (``port`` 0 takes a free one). With ``certfile`` and ``keyfile`` (PEM) over https, and with
        ``client_cafile`` too only to clients presenting a certificate that CA signed.

        Raises :class:`TLSFileError` for TLS files that cannot be used (checked before anything is
        bound), OSError when the address cannot be bound.
        """
        context = None
        if certfile is not None or keyfile is not None:
            if certfile is None or keyfile is None:
                raise TLSFileError("a certificate and its key go together: give both or neither")
            context = server_context(certfile, keyfile, client_cafile)
        elif client_cafile is not None:
            raise TLSFileError(
                "a client CA checks the clients of an https page: it needs a certificate"
            )
        server = _serve(port, host, self.registry, context)
        self._server = server
        return int(server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


# A client has this long for each read of its request (and for its TLS handshake, over https).
CLIENT_TIMEOUT_S = 10.0


class TLSFileError(ValueError):
    """A certificate, key or CA file that cannot serve (or read) the metrics page over TLS."""


def _no_password() -> bytes:
    # OpenSSL would otherwise prompt on the terminal for an encrypted key: a service would hang there.
    raise TLSFileError(
        "the key is encrypted: give it unencrypted (a service cannot type a password)"
    )


def server_context(
    certfile: str | Path, keyfile: str | Path, cafile: str | Path | None = None
) -> ssl.SSLContext:
    """The metrics page's TLS context: the certificate chain and its key, and with ``cafile`` client
    certificates required and checked against that CA. Loaded at start, so that a wrong file is told
    by name rather than as an error of the first connection (or a password prompt)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile, keyfile, password=_no_password)  # or TLSFileError
    except (OSError, ssl.SSLError) as exc:  # SSLError is an OSError; named for the reader
        raise TLSFileError(
            f"cannot use the certificate {certfile} with the key {keyfile}: {exc}"
        ) from None
    if cafile is not None:
        try:
            context.load_verify_locations(cafile=cafile)
        except (OSError, ssl.SSLError) as exc:
            raise TLSFileError(f"cannot use the CA {cafile}: {exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class _QuietHandler(WSGIRequestHandler):
    """Logs no request; a connection that sends nothing for CLIENT_TIMEOUT_S is closed."""

    timeout = CLIENT_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _MetricsServer(ThreadingMixIn, WSGIServer):
    """A thread per connection, and over https the TLS handshake in that thread.

    prometheus_client's own https server wraps the listening socket, so each handshake runs in the
    thread that accepts connections: one client that connects and says nothing (a port scan, a stuck
    prober) holds up every scrape and health check behind it until it goes, and a liveness probe
    that fails that way gets the detector restarted. Its http server gives an idle connection a
    thread without end; here every connection has CLIENT_TIMEOUT_S for each read.
    """

    daemon_threads = True
    context: ssl.SSLContext | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.context is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(CLIENT_TIMEOUT_S)
        try:  # the handshake, here in the connection's own thread
            tls = self.context.wrap_socket(request, server_side=True)
        except (OSError, ValueError):  # failed or abandoned: that client's loss alone
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):  # a client that went away mid-request
            return
        super().handle_error(request, client_address)


def _serve(
    port: int, host: str, registry: CollectorRegistry, context: ssl.SSLContext | None
) -> WSGIServer:
    """The metrics page from a daemon thread, over https with ``context`` (IPv6 hosts too, as
    prometheus_client serves them)."""
    family, _, _, _, sockaddr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    server_class: type[_MetricsServer] = type(
        "_MetricsServerOfFamily", (_MetricsServer,), {"address_family": family}
    )
    server = make_server(
        str(sockaddr[0]), port, make_wsgi_app(registry), server_class, handler_class=_QuietHandler
    )
    server.context = context
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


def client_context(
    cafile: str | Path | None = None,
    certfile: str | Path | None = None,
    keyfile: str | Path | None = None,
) -> ssl.SSLContext:
    """The TLS context ``streamer health`` reads an https page with: the system's CAs, or ``cafile``'s
    (a detector's own CA); with ``certfile`` and ``keyfile`` it shows that client certificate."""
    context = ssl.create_default_context(cafile=None if cafile is None else str(cafile))
    if certfile is not None:
        context.load_cert_chain(certfile, keyfile, password=_no_password)
    return context


def _offset(value: object) -> int | None:
    """An offset from librdkafka's statistics; None for its "not known" values (negative)."""
    return value if isinstance(value, int) and value >= 0 else None


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def heartbeat_age_s(
    url: str, timeout_s: float = 5.0, context: ssl.SSLContext | None = None
) -> float:
    """Seconds since the detector at ``url`` (its metrics page) last went round its loop; an https
    page is read with ``context`` (default: the system's CAs).

    Raises OSError when the page cannot be read, ValueError when it holds no heartbeat.
    """
    with urllib.request.urlopen(url, timeout=timeout_s, context=context) as response:
        page = response.read(MAX_PAGE_BYTES + 1)
    if len(page) > MAX_PAGE_BYTES:
        raise ValueError(f"{url} sent more than {MAX_PAGE_BYTES} bytes: not a detector's metrics")
    for family in text_string_to_metric_families(page.decode("utf-8", errors="replace")):
        if family.name == HEARTBEAT:
            for sample in family.samples:
                return max(0.0, time.time() - float(sample.value))
    raise ValueError(f"{url} has no {HEARTBEAT}: is it a detector's metrics page?")


def health(url: str, max_age_s: float, context: ssl.SSLContext | None = None) -> tuple[bool, str]:
    """Whether the detector at ``url`` is alive (its loop went round within ``max_age_s``), and why."""
    try:
        age = heartbeat_age_s(url, context=context)
    except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError is an OSError
        return False, f"unhealthy: {exc}"
    if age > max_age_s:
        return False, f"unhealthy: the loop last went round {age:.1f} s ago (limit {max_age_s:g} s)"
    return True, f"healthy: the loop went round {age:.1f} s ago"
