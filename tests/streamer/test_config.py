from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from streamer.config import load_settings
from streamer.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("STREAMER_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "streamer.toml"
    path.write_text(text)
    return path


def test_precedence_defaults_file_env_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(
        tmp_path,
        '[kafka]\nbootstrap_servers = "file:9092"\ngroup_id = "from-file"\n[batch]\nmax_events = 7\n',
    )
    monkeypatch.setenv("STREAMER_KAFKA__BOOTSTRAP_SERVERS", "env:9092")
    monkeypatch.setenv("STREAMER_THRESHOLD__Q", "0.9")
    s = load_settings(path, {"batch": {"max_wait_ms": 3}, "threshold": {"q": 0.95}})
    assert s.kafka.bootstrap_servers == "env:9092"  # env over file
    assert s.kafka.group_id == "from-file"  # file over default
    assert s.batch.max_events == 7 and s.batch.max_wait_ms == 3
    assert s.threshold.q == 0.95  # CLI over env
    assert s.kafka.alert_topic == "alerts"  # default


def test_env_lists_are_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMER_KAFKA__INPUT_TOPICS", '["a", "b"]')
    assert load_settings().kafka.input_topics == ["a", "b"]


@pytest.mark.parametrize(
    ("value", "windowed", "dense"), [("auto", 2.0, 0.0), ("0", 0.0, 0.0), ("3.5", 3.5, 3.5)]
)
def test_gate_z_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, windowed: float, dense: float
) -> None:
    monkeypatch.setenv("STREAMER_EVENTS__ALERT_GATE_Z", value)
    events = load_settings().events
    assert (events.gate_z(windowed=True), events.gate_z(windowed=False)) == (windowed, dense)


@pytest.mark.parametrize(
    ("name", "value", "named"),
    [
        ("STREAMER_EVENTS__ALERT_GATE_Z", "high", "events.alert_gate_z"),
        ("STREAMER_EVENTS__ALERT_GATE_Z", "-1", "events.alert_gate_z"),
        ("STREAMER_KAFKA__BOGUS", "1", "kafka.bogus"),
        ("STREAMER_BOGUS", "1", "STREAMER_BOGUS"),
        ("STREAMER_THRESHOLD__Q", "1.5", "threshold.q"),
        ("STREAMER_BATCH__MAX_EVENTS", "zero", "batch.max_events"),
    ],
)
def test_bad_environment_names_the_key(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, named: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_settings()


def test_bad_file_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.device"):
        load_settings(write(tmp_path, '[model]\ndevice = "tpu"\n'))
    with pytest.raises(ConfigError, match=r"events\.unknown"):
        load_settings(write(tmp_path, "[events]\nunknown = 1\n"))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[events\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")


def test_secrets_never_leak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMER_KAFKA__SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("STREAMER_KAFKA__EXTRA", '{"ssl.key.password": "s3cret"}')
    s = load_settings()
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump())
    assert "s3cret" not in repr(s)
    conf = s.kafka.consumer_config()
    assert conf["sasl.password"] == "hunter2" and conf["ssl.key.password"] == "s3cret"
    # an invalid value next to a secret: the error names keys, never values
    monkeypatch.setenv("STREAMER_KAFKA__SESSION_TIMEOUT_MS", "hunter2")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "hunter2" not in str(info.value) and "session_timeout_ms" in str(info.value)


@pytest.mark.parametrize("ms", [1_000, 5_999, 300_001])
def test_session_timeouts_a_default_kafka_broker_refuses_are_rejected(ms: int) -> None:
    with pytest.raises(ConfigError, match="session_timeout_ms"):
        load_settings(None, {"kafka": {"session_timeout_ms": ms}})


@pytest.mark.parametrize(
    "key",
    [
        "enable.auto.commit",
        "group.id",
        # these four were accepted and then silently overwritten by the detector's own values
        "auto.offset.reset",
        "session.timeout.ms",
        "partition.assignment.strategy",
        "enable.idempotence",
        "metadata.broker.list",  # librdkafka's alias of bootstrap.servers
    ],
)
def test_librdkafka_keys_the_detector_sets_cannot_be_given_in_extra(key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_settings(None, {"kafka": {"extra": {key: "x"}}})


def test_extra_overrides_the_producer_defaults() -> None:
    extra = {"linger.ms": "50", "compression.type": "zstd", "message.timeout.ms": "60000"}
    conf = load_settings(None, {"kafka": {"extra": extra}}).kafka.producer_config()
    assert {k: conf[k] for k in extra} == extra
    assert conf["enable.idempotence"] is True


@pytest.mark.parametrize(
    "extra",
    [
        # librdkafka's "never give up": the detector stopped at the first flush that took 30 s
        {"message.timeout.ms": "0"},
        {"delivery.timeout.ms": "0"},
        {"message.timeout.ms": "-5"},
        {"message.timeout.ms": "soon"},
        # past max.poll.interval.ms the group drops the consumer while it waits
        {"message.timeout.ms": "300000"},
        {"message.timeout.ms": "200000", "max.poll.interval.ms": "150000"},
        # the wait is the timeout and 10 s more: 299,999 let it run to about 310 s
        {"message.timeout.ms": "299999"},
        # the default 120 s timeout against a poll interval set alone
        {"max.poll.interval.ms": "60000"},
    ],
)
def test_a_delivery_timeout_the_detector_cannot_wait_out_is_refused(extra: dict[str, str]) -> None:
    key = next((k for k in extra if k.endswith("timeout.ms")), "message.timeout.ms")
    with pytest.raises(ConfigError, match=re.escape(key) + ".*max.poll.interval.ms"):
        load_settings(None, {"kafka": {"extra": extra}})


def test_a_delivery_timeout_below_a_raised_poll_interval_is_accepted() -> None:
    extra = {"message.timeout.ms": "400000", "max.poll.interval.ms": "600000"}
    conf = load_settings(None, {"kafka": {"extra": extra}}).kafka.producer_config()
    assert conf["message.timeout.ms"] == "400000"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STREAMER_KAFKA__INPUT_TOPICS", "events"),
        ("STREAMER_KAFKA__EXTRA", "sasl.password=hunter2"),
    ],
)
def test_a_list_or_mapping_in_the_environment_that_is_not_json_is_named(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """pydantic-settings' own error named only the section ("kafka"), not the variable."""
    monkeypatch.setenv(name, value)
    monkeypatch.setenv("STREAMER_KAFKA__GROUP_ID", "not-json-and-fine")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert name in message and "JSON" in message
    assert "GROUP_ID" not in message and "hunter2" not in message


def test_a_threshold_window_too_large_to_allocate_is_refused() -> None:
    """10**12 validated, then River tried to allocate 8 TB and the process aborted."""
    with pytest.raises(ConfigError, match=r"threshold\.window"):
        load_settings(None, {"threshold": {"window": 10**12}})
    assert load_settings(None, {"threshold": {"window": 1_000_000}}).threshold.window == 1_000_000


def test_consumer_is_at_least_once() -> None:
    conf = load_settings().kafka.consumer_config()
    assert conf["enable.auto.commit"] is False and conf["enable.auto.offset.store"] is False


def test_unknown_librdkafka_property_is_a_config_error_without_the_secret() -> None:
    from streamer.runner import Detector

    class Stub:
        kind, name, version, features, window = "dense", "s", "v", ("a",), 1
        train_scores = np.zeros(10)

        def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return np.zeros(len(x)), np.zeros_like(x)

    settings = load_settings(None, {"kafka": {"extra": {"no.such.property": "hunter2"}}})
    with pytest.raises(ConfigError, match=r"no\.such\.property") as info:
        Detector(settings, Stub())
    assert "hunter2" not in str(info.value)


def test_settings_without_environment_ignore_streamer_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`streamer demo` took STREAMER_KAFKA__ALERT_TOPIC from the user's environment, published its
    alerts there, read back 'alerts' and reported 0 alerts (exit 0)."""
    from streamer.config import settings_without_environment

    monkeypatch.setenv("STREAMER_KAFKA__ALERT_TOPIC", "prod-alerts")
    monkeypatch.setenv("STREAMER_THRESHOLD__Q", "0.95")
    given = settings_without_environment({"threshold": {"q": 0.9}})
    assert given.kafka.alert_topic == "alerts" and given.threshold.q == 0.9
    assert load_settings().kafka.alert_topic == "prod-alerts"  # the service still reads it


@pytest.mark.parametrize("topic", ["", "bad topic!", "x" * 250])
def test_topic_names_kafka_refuses_are_config_errors(topic: str) -> None:
    """`run --input-topic ''` raised KafkaException from subscribe() as a traceback."""
    with pytest.raises(ConfigError, match="input_topics"):
        load_settings(None, {"kafka": {"input_topics": [topic]}})
    with pytest.raises(ConfigError, match="alert_topic"):
        load_settings(None, {"kafka": {"alert_topic": topic}})


def test_a_warm_start_read_the_poll_interval_cannot_hold_is_refused() -> None:
    # 30 s of warm-start read and the batch's 120 s wait come between two polls: over 160 s less 10 s
    extra = {"max.poll.interval.ms": "160000"}
    with pytest.raises(ConfigError, match=r"warm_start_timeout_s .*max\.poll\.interval\.ms"):
        load_settings(None, {"kafka": {"extra": extra}})
    assert load_settings(None, {"kafka": {"extra": extra, "warm_start_timeout_s": 20}})
    assert load_settings(None, {"kafka": {"extra": extra, "warm_start_events": 0}})


def test_a_bad_auto_or_number_setting_is_one_error_naming_its_key(tmp_path: Path) -> None:
    """`threshold.alert_cap = 0.5` was two errors, one per branch of the union, under keys that named
    the branches: "threshold.alert_cap.constrained-float: ..." and "...literal['auto']: Input should
    be 'auto'"."""
    path = write(tmp_path, "[threshold]\nalert_cap = 0.5\n[events]\nnovelty = 3\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    lines = str(info.value).splitlines()[1:]
    assert lines == [
        "  threshold.alert_cap: Input should be greater than or equal to 1 (or 'auto')",
        "  events.novelty: Input should be a valid boolean, unable to interpret input (or 'auto')",
    ]


def test_a_mapping_key_that_reads_like_a_type_is_kept_in_the_error() -> None:
    with pytest.raises(ConfigError, match=r"kafka\.extra\.float: Input should be a valid string"):
        load_settings(None, {"kafka": {"extra": {"float": 1}}})
