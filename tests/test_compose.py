"""docker-compose.yml cannot run here (no Docker engine), so check that it agrees with the code."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from streamer.cli import build_parser
from streamer.config import load_settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def created_topics(compose: dict) -> dict[str, int]:
    script = compose["services"]["topics"]["command"][0]
    specs = re.search(r"for spec in ([^;]+);", script)
    assert specs, "the topics job must list its topics"
    return {name: int(parts) for name, parts in (s.split(":") for s in specs.group(1).split())}


def command_of(service: dict) -> list[str]:
    """The streamer argv of a service (its command, or the streamer lines of its shell script)."""
    cmd = service["command"]
    return cmd if service.get("entrypoint") is None else shlex.split(cmd[0].replace("&&", " "))


def test_services_and_images(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"kafka", "topics", "trainer", "detector", "simulator"}
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["topics"]["image"] == services["kafka"]["image"]
    for name in ("trainer", "detector", "simulator"):
        assert services[name]["build"] == "."
        assert services[name]["image"] == "ae-streamer:local"
    assert (ROOT / "Dockerfile").exists()
    assert 'ENTRYPOINT ["streamer"]' in (ROOT / "Dockerfile").read_text()
    # the build context leaves out the virtualenv (GBs of torch) and the git history
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "**/__pycache__"} <= set(ignored)
    torch_pin = re.search(r"TORCH_VERSION=(\S+)", (ROOT / "Dockerfile").read_text())
    assert torch_pin and f"torch=={torch_pin.group(1)}" in (ROOT / "Makefile").read_text()


def test_kafka_is_a_single_kraft_node(compose: dict) -> None:
    env = compose["services"]["kafka"]["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert (
        env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    )  # so the topics job must create every topic


def test_detector_environment_is_valid_settings(
    compose: dict, created_topics: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("STREAMER_"):
            monkeypatch.delenv(name)
    detector = compose["services"]["detector"]
    for name, value in detector["environment"].items():
        monkeypatch.setenv(name, str(value))
    settings = load_settings()  # unknown keys or invalid values would raise here
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    for topic in [
        *settings.kafka.input_topics,
        settings.kafka.alert_topic,
        settings.kafka.dead_letter_topic,
    ]:
        assert topic in created_topics, topic
    assert settings.model.path == Path("/models/model.safetensors")
    assert "models:/models" in detector["volumes"]
    args = build_parser().parse_args(detector["command"])
    assert args.command == "run"
    # the healthcheck reads the metrics the detector serves, on the port the compose file publishes
    assert settings.metrics.port == 9464 and settings.metrics.host == "0.0.0.0"
    # published on the host's loopback only, as the detector's own default is
    assert f"127.0.0.1:{settings.metrics.port}:{settings.metrics.port}" in detector["ports"]
    check = detector["healthcheck"]["test"]
    assert check[:2] == ["CMD", "streamer"]
    health = build_parser().parse_args(check[2:])
    assert health.command == "health"
    assert health.url == f"http://127.0.0.1:{settings.metrics.port}/metrics"


def test_trainer_writes_the_model_the_detector_reads(
    compose: dict, created_topics: dict[str, int]
) -> None:
    argv = command_of(compose["services"]["trainer"])
    parser = build_parser()
    simulate = parser.parse_args(argv[argv.index("simulate") : argv.index("train") - 1])
    train = parser.parse_args(argv[argv.index("train") :])
    assert simulate.topic == train.from_topic and simulate.topic in created_topics
    assert simulate.anomaly_rate == 0  # trained on normal data only
    detector_model = compose["services"]["detector"]["environment"]["STREAMER_MODEL__PATH"]
    assert str(train.out) == detector_model
    from streamer.simulate import DEFAULT_FEATURES

    assert train.features == list(DEFAULT_FEATURES)


def test_simulator_feeds_the_detector(compose: dict) -> None:
    simulator = compose["services"]["simulator"]
    args = build_parser().parse_args(simulator["command"])
    env = compose["services"]["detector"]["environment"]
    assert args.command == "simulate"
    assert [args.topic] == yaml.safe_load(env["STREAMER_KAFKA__INPUT_TOPICS"])
    assert args.bootstrap == env["STREAMER_KAFKA__BOOTSTRAP_SERVERS"]
    from streamer.simulate import SimConfig

    sim = SimConfig()
    assert env["STREAMER_EVENTS__KEY_FIELD"] == sim.key_field
    assert env["STREAMER_EVENTS__TIME_FIELD"] == sim.time_field


def test_start_order(compose: dict) -> None:
    services = compose["services"]
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert (
        services["trainer"]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    )
    assert (
        services["detector"]["depends_on"]["trainer"]["condition"]
        == "service_completed_successfully"
    )
