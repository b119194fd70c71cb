"""Training from a Kafka topic and writing embeddings to one, against the embedded broker."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from models import load_checkpoint
from streamer.cli import main
from streamer.simulate import SimConfig, generate, produce

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
    assert main(["train", *source, "--features", features, "--out", str(ckpt), "--epochs", "3", "--no-progress"]) == 0
    scorer = load_checkpoint(ckpt)
    assert scorer.features == SimConfig().features
    summary = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rows"] == sum(not e.malformed for e in stream)  # malformed rows skipped, not trained on

    csv_path = tmp_path / "rows.csv"
    csv_path.write_text("temperature,pressure,vibration,current,voltage,rpm\n" + "60,2.3,2.5,14,230,1200\n" * 5)
    sink = ["--to-topic", names["scores"], "--bootstrap", kit.bootstrap]
    assert main(["encode", "--model", str(ckpt), "--data", str(csv_path), *sink]) == 0
    records = kit.read(names["scores"])
    assert [r["row"] for r in records] == list(range(5))
    assert all(len([k for k in r if k.startswith("z")]) == scorer.latent_dim for r in records)
