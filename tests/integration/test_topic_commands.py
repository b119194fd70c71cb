"""Training from a Kafka topic and writing embeddings to one, against the embedded broker."""

from __future__ import annotations

from argparse import Namespace
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest

from models import load_checkpoint
from streamer.cli import main
from streamer.simulate import SimConfig, generate, produce
from streamer.training import table_from_topic

pytestmark = [pytest.mark.broker]


def test_train_from_topic_skips_bad_rows_then_encode_to_topic(kit, tmp_path: Path, capsys) -> None:
    names = kit.topics("train", partitions=2)
    stream = list(generate(2_000, SimConfig(seed=8, anomaly_rate=0.0, malformed_rate=0.05)))
    produce(kit.bootstrap, names["in"], stream)
    ckpt = tmp_path / "from-topic.safetensors"
    features = ",".join(SimConfig().features)
    # the connection from a settings file, as `streamer run` takes it (no --bootstrap)
    config = tmp_path / "streamer.toml"
    config.write_text(f'[kafka]\nbootstrap_servers = "{kit.bootstrap}"\n')
    source = ["--from-topic", names["in"], "--config", str(config), "--max-events", "2000"]
    assert (
        main(
            [
                "train",
                *source,
                "--features",
                features,
                "--out",
                str(ckpt),
                "--epochs",
                "3",
                "--no-progress",
            ]
        )
        == 0
    )
    scorer = load_checkpoint(ckpt)
    assert scorer.features == SimConfig().features
    summary = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rows"] == sum(
        not e.malformed for e in stream
    )  # malformed rows skipped, not trained on
    # Each row's entity is its Kafka key, as `streamer run` windows it: the partitions interleave
    # sensors, and a conv trained on the read order windowed across them.
    rows = Namespace(
        from_topic=names["in"],
        bootstrap=kit.bootstrap,
        config=None,
        max_events=2_000,
        features=list(SimConfig().features),
        entity_column=None,
    )
    x, _, entities = table_from_topic(rows)
    assert entities is not None and len(entities) == len(x)
    good = [e for e in stream if not e.malformed]
    assert len(np.unique(entities)) == len({e.key for e in good})
    assert sorted(Counter(entities.tolist()).values()) == sorted(
        Counter(e.key for e in good).values()
    )

    csv_path = tmp_path / "rows.csv"
    csv_path.write_text(
        "temperature,pressure,vibration,current,voltage,rpm\n" + "60,2.3,2.5,14,230,1200\n" * 5
    )
    sink = ["--to-topic", names["scores"], "--bootstrap", kit.bootstrap]
    assert main(["encode", "--model", str(ckpt), "--data", str(csv_path), *sink]) == 0
    records = kit.read(names["scores"])
    assert [r["row"] for r in records] == list(range(5))
    assert all(len([k for k in r if k.startswith("z")]) == scorer.latent_dim for r in records)


def test_producing_to_a_topic_the_broker_does_not_have_is_a_clear_error(kit) -> None:
    """With topic auto-creation off (as in the compose stack's Kafka), librdkafka soon refuses every
    produce() to a missing topic: that KafkaException escaped `streamer simulate` as a traceback."""
    from streamer.errors import DeliveryError

    conf = {"allow.auto.create.topics": False, "topic.metadata.propagation.max.ms": 200}
    events = generate(2_000, SimConfig(seed=1))
    with pytest.raises(DeliveryError, match="cannot produce to 'no-such-topic'"):
        produce(kit.bootstrap, "no-such-topic", events, rate=1_000, producer_config=conf)


def test_sigterm_stops_the_embedded_broker_as_ctrl_c_does(tmp_path: Path) -> None:
    """`streamer demo` and `streamer bench` killed with SIGTERM (timeout, CI, docker stop) left their
    Tansu broker running: it runs in its own session, so the signal reached only the parent."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    code = (
        "import time\n"
        "from streamer.broker import EmbeddedBroker\n"
        "with EmbeddedBroker() as b:\n"
        "    print(b.port, flush=True)\n"
        "    time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        port = int(child.stdout.readline())  # type: ignore[union-attr]
        socket.create_connection(("127.0.0.1", port), timeout=2).close()  # the broker is up
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=20) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            except OSError:
                break  # nothing listens any more
            time.sleep(0.1)
        else:
            pytest.fail(f"the broker on port {port} outlived its parent")
    finally:
        child.kill()


def test_simulate_says_when_a_stream_has_no_room_for_its_anomalies(kit, capsys) -> None:
    """1,000 events at rate 0.01 came out with no labelled event at all, and nothing said so."""
    names = kit.topics("sim", partitions=1)
    base = ["simulate", "--bootstrap", kit.bootstrap, "--topic", names["in"]]
    assert main([*base, "--events", "1000", "--anomaly-rate", "0.01"]) == 0
    captured = capsys.readouterr()
    assert orjson.loads(captured.out)["labelled"] < 5
    assert "fewer_anomalies_than_asked" in captured.err
    assert main([*base, "--events", "5000", "--anomaly-rate", "0.02"]) == 0
    captured = capsys.readouterr()
    assert 50 <= orjson.loads(captured.out)["labelled"] <= 150
    assert "fewer_anomalies_than_asked" not in captured.err


def test_broker_command_serves_its_topics_until_sigterm() -> None:
    """`streamer broker`: the README's host commands need a broker on a machine without Docker."""
    import signal
    import socket
    import subprocess
    import sys

    from confluent_kafka.admin import AdminClient

    from streamer.broker import free_port

    port = free_port()
    args = [sys.executable, "-m", "streamer.cli", "broker", "--port", str(port)]
    proc = subprocess.Popen(
        [*args, "--topics", "events,alerts", "--partitions", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        started = orjson.loads(proc.stdout.readline())
        assert started["bootstrap"] == f"127.0.0.1:{port}"
        meta = AdminClient({"bootstrap.servers": started["bootstrap"]}).list_topics(timeout=10)
        assert {t: len(m.partitions) for t, m in meta.topics.items()} == {"events": 2, "alerts": 2}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with pytest.raises(OSError):  # the broker went with it
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
