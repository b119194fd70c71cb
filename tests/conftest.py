"""Shared fixtures: the embedded broker, topics per test, and the hypothesis profile for a busy 2-core box."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from hypothesis import HealthCheck, settings

from streamer.broker import EmbeddedBroker
from streamer.kafka_io import read_topic

settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=60
)
settings.load_profile("ci")


def pytest_configure(config: pytest.Config) -> None:
    # As `streamer run` does (model.torch_threads): on 2 cores a second intra-op thread only spins.
    import torch

    torch.set_num_threads(1)
    # As every command does (streamer.cli.main): log lines go to stderr, so a test that reads a
    # command's stdout does not depend on which test configured logging first.
    from streamer.logs import configure_logging

    configure_logging("INFO")


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
_names = itertools.count()


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One Tansu broker for the whole session; every test uses its own topics and groups."""
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture(scope="session")
def dense_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dense autoencoder trained on the simulator's normal behaviour (shared by the broker tests)."""
    from models import TrainConfig, train
    from streamer.simulate import SimConfig, normal_frame

    x, features, entities = normal_frame(12_000, SimConfig(seed=11))
    out = tmp_path_factory.mktemp("ckpt") / "dense.safetensors"
    train(
        x,
        features,
        TrainConfig(kind="dense", epochs=60, seed=0, progress=False, name="test"),
        out,
        entities=entities,
    )
    return out


class SquareScorer:
    """A scorer without a model, for the run loop's broker tests: events {x, y} score x^2 + y^2."""

    kind, name, version, features, window = "dense", "square", "v1", ("x", "y"), 1
    train_scores = np.linspace(0.0, 3.0, 1_000)

    def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        err = (x.astype(np.float64) ** 2).astype(np.float32)
        return err.sum(axis=1).astype(np.float64), err


class Kit:
    """Small helpers around a running broker for integration tests."""

    def __init__(self, broker: EmbeddedBroker) -> None:
        self.broker = broker
        self.bootstrap = broker.bootstrap
        self.conf: dict[str, Any] = {
            "bootstrap.servers": broker.bootstrap,
            "log.connection.close": False,
        }

    def topics(self, prefix: str, partitions: int = 3) -> dict[str, str]:
        n = next(_names)
        names = {k: f"{prefix}-{k}-{n}" for k in ("in", "alerts", "dead", "scores")}
        self.broker.create_topics([names["in"]], partitions=partitions)
        self.broker.create_topics([names["alerts"], names["dead"], names["scores"]], partitions=1)
        names["group"] = f"{prefix}-group-{n}"
        return names

    def read(
        self, topic: str, expect: int | None = None, idle_s: float = 3.0
    ) -> list[dict[str, Any]]:
        values = read_topic(self.conf, topic, max_events=expect or 10**9, idle_s=idle_s)
        return [orjson.loads(v) for v in values if v is not None]

    def read_raw(self, topic: str, idle_s: float = 3.0) -> list[Any]:
        """(key, value) pairs of a topic."""
        consumer = Consumer({**self.conf, "group.id": "kit-raw", "enable.auto.commit": False})
        try:
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
            out, last = [], time.monotonic()
            while time.monotonic() - last < idle_s:
                for m in consumer.consume(1000, 0.5):
                    if m.error() is None:
                        out.append((m.key(), m.value()))
                        last = time.monotonic()
            return out
        finally:
            consumer.close()

    def committed(self, group: str, topic: str, partitions: int = 3) -> dict[int, int]:
        consumer = Consumer({**self.conf, "group.id": group, "enable.auto.commit": False})
        try:
            got = consumer.committed(
                [TopicPartition(topic, p) for p in range(partitions)], timeout=10
            )
            return {tp.partition: tp.offset for tp in got if tp.offset >= 0}
        finally:
            consumer.close()

    def detector(
        self,
        names: dict[str, str],
        scorer: Any = None,
        sections: dict[str, dict[str, Any]] | None = None,
        **kafka: Any,
    ) -> Any:  # a streamer.runner.Detector
        """An in-process detector on the topics ``names``, every decision published (no gate, no
        cooldown), scoring with ``scorer`` (default: SquareScorer); ``kafka`` overrides settings,
        and ``sections`` other sections whole (``{"batch": {...}}``)."""
        from streamer.config import load_settings
        from streamer.runner import Detector

        settings = load_settings(
            None,
            {
                "kafka": {
                    "bootstrap_servers": self.bootstrap,
                    "group_id": names["group"],
                    "input_topics": [names["in"]],
                    "alert_topic": names["alerts"],
                    "dead_letter_topic": names["dead"],
                    "scores_topic": names["scores"],
                    "session_timeout_ms": 6000,
                    **kafka,
                },
                "events": {"alert_gate_z": 0, "alert_cooldown_s": 0},
                "log": {"level": "WARNING"},
                **(sections or {}),
            },
        )
        return Detector(settings, scorer or SquareScorer())

    def run_args(self, names: dict[str, str], checkpoint: Path, *extra: str) -> list[str]:
        return [
            sys.executable, "-m", "streamer.cli", "run",
            "--bootstrap", self.bootstrap,
            "--group", names["group"],
            "--input-topic", names["in"],
            "--alert-topic", names["alerts"],
            "--dead-letter-topic", names["dead"],
            "--scores-topic", names["scores"],
            "--model", str(checkpoint),
            "--key-field", "sensor_id",
            "--time-field", "ts",
            "--log-format", "json",
            *extra,
        ]  # fmt: skip

    def run_to_end(
        self, args: list[str], timeout: float = 180, **settings: str
    ) -> subprocess.CompletedProcess[bytes]:
        """Run `streamer run` (``args`` from ``run_args``) until it exits by itself; it must exit 0."""
        proc = subprocess.run(args, env=self.env(**settings), capture_output=True, timeout=timeout)
        assert proc.returncode == 0, proc.stderr.decode()[-3000:]
        return proc

    @staticmethod
    def env(**settings: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
        env["STREAMER_KAFKA__SESSION_TIMEOUT_MS"] = "6000"  # Tansu: fast group joins
        env.update(settings)
        return env

    @staticmethod
    def stop(
        process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30.0
    ) -> int:
        """Signal a process and wait for it; kill it if it hangs (the test then fails on the exit code)."""
        if process.poll() is None:
            process.send_signal(sig)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return -999

    @staticmethod
    def offsets_of(records: list[dict[str, Any]], topic: str) -> set[tuple[int, int]]:
        """(partition, offset) of score records, or of dead letters and alerts via their source."""
        out = set()
        for r in records:
            src = r.get("source", r)
            if src["topic"] == topic:
                out.add((src["partition"], src["offset"]))
        return out

    @staticmethod
    def all_offsets(end_offsets: dict[int, int]) -> set[tuple[int, int]]:
        return {(p, o) for p, end in end_offsets.items() for o in range(end)}


@pytest.fixture
def kit(broker: EmbeddedBroker) -> Kit:
    return Kit(broker)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate it signed, as PEM files."""
    import trustme  # a dev dependency: certificates made for the test, no openssl binary needed

    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    client = ca.issue_cert("health-check@example.org")
    files = {
        "ca": folder / "ca.pem",
        "cert": folder / "server.pem",
        "key": folder / "server.key",
        "client_cert": folder / "client.pem",
        "client_key": folder / "client.key",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.private_key_pem.write_to_path(str(files["key"]))
    client.private_key_pem.write_to_path(str(files["client_key"]))
    for blob in server.cert_chain_pems:
        blob.write_to_path(str(files["cert"]), append=True)
    for blob in client.cert_chain_pems:
        blob.write_to_path(str(files["client_cert"]), append=True)
    other = trustme.CA()  # a CA the page does not know
    other.cert_pem.write_to_path(str(folder / "other-ca.pem"))
    stranger = other.issue_cert("stranger@example.org")
    stranger.private_key_and_cert_chain_pem.write_to_path(str(folder / "stranger.pem"))
    files["other_ca"], files["stranger"] = folder / "other-ca.pem", folder / "stranger.pem"
    return files
