"""Training rows from a topic (``streamer.training.table_from_topic``) on an in-memory topic: the
features a user did not name, and each row's entity as ``streamer run`` groups it."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

import streamer.kafka_io
from streamer.training import table_from_topic


def args(**given: Any) -> argparse.Namespace:
    base = {
        "from_topic": "t",
        "bootstrap": "127.0.0.1:9",
        "max_events": 100_000,
        "features": None,
        "entity_column": None,
        "config": None,
    }
    return argparse.Namespace(**{**base, **given})


@pytest.fixture
def topic(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes | None, bytes | None]]:
    records: list[tuple[bytes | None, bytes | None]] = []

    def read(*_: Any, **__: Any) -> Iterator[tuple[bytes | None, bytes | None]]:
        yield from records

    monkeypatch.setattr(streamer.kafka_io, "read_topic_records", read)
    return records


def test_features_are_the_fields_most_events_carry_as_numbers(topic: list) -> None:
    """The first event had an optional error_code: it became a feature, and the 1,950 events
    without it were skipped, so the model trained on 50 rows."""
    for i in range(2_000):
        event = {"temp": 20.0 + i % 7, "rpm": 1_000 + i % 11, "site": "a"}
        if i % 40 == 0:
            event["error_code"] = 3
        topic.append((b"m-1", orjson.dumps(event)))
    x, features, _ = table_from_topic(args())
    assert features == ["temp", "rpm"] and x.shape == (2_000, 2)


def test_entities_are_the_kafka_keys_without_an_entity_column(topic: list) -> None:
    """Partitions interleave sensors: a conv trained on the read order windowed across sensors,
    while `streamer run` windows each sensor (by its Kafka key when no key field is set)."""
    for i in range(300):
        for sensor in (b"a", b"b", b"c"):
            topic.append((sensor, orjson.dumps({"v": float(i), "w": 1.0})))
    x, _, entities = table_from_topic(args())
    assert entities is not None and len(entities) == len(x) == 900
    groups = {e: x[entities == e, 0] for e in np.unique(entities)}
    assert len(groups) == 3
    assert all(np.array_equal(g, np.arange(300, dtype=np.float32)) for g in groups.values())


def test_without_any_key_the_topic_is_one_stream(topic: list) -> None:
    topic.extend((None, orjson.dumps({"v": float(i)})) for i in range(10))
    assert table_from_topic(args())[2] is None


def test_the_entity_column_then_the_kafka_key_as_run_falls_back(topic: list) -> None:
    """An event without the field was put in one made-up entity "None" with every other such
    event; `streamer run` takes its Kafka key."""
    topic += [
        (b"k1", orjson.dumps({"machine": 7, "v": 1.0})),
        (b"k1", orjson.dumps({"v": 2.0})),
        (b"k2", orjson.dumps({"v": 3.0})),
        (b"k2", orjson.dumps({"machine": 7, "v": 4.0})),
        (b"7", orjson.dumps({"v": 5.0})),  # the key b"7" is not the field's 7
    ]
    x, _, entities = table_from_topic(args(entity_column="machine", features=["v"]))
    assert entities is not None
    by_entity = {e: sorted(x[entities == e, 0].tolist()) for e in np.unique(entities)}
    assert sorted(by_entity.values()) == [[1.0, 4.0], [2.0], [3.0], [5.0]]


def test_an_entity_column_that_is_also_a_feature(topic: list) -> None:
    """A numeric machine id named as a feature too (a file accepts it) failed with
    'entities must be (400,), got (0,)'."""
    topic += [(None, orjson.dumps({"machine": i % 4, "v": float(i)})) for i in range(400)]
    _, features, entities = table_from_topic(
        args(entity_column="machine", features=["machine", "v"])
    )
    assert features == ["machine", "v"] and entities is not None and len(entities) == 400
    assert len(np.unique(entities)) == 4


def test_a_conv_trains_on_a_topic_where_some_key_is_rarely_seen(
    topic: list, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One key with 3 events stopped the whole training ("window=16 is longer than an entity's 3
    rows"): such an entity is left out and counted. Only when every entity is short is it an error."""
    from streamer.cli import main

    rng = np.random.default_rng(0)
    for i in range(600):
        for sensor in (b"a", b"b"):
            topic.append((sensor, orjson.dumps({"v": float(np.sin(i / 9)) + rng.normal(0, 0.1)})))
    topic += [(b"rare", orjson.dumps({"v": 0.5}))] * 3
    # 17 rows: one window's worth, but not one on each side of the validation cut either
    topic += [(b"short", orjson.dumps({"v": 0.5}))] * 17
    argv = ["train", "--from-topic", "t", "--bootstrap", "127.0.0.1:9", "--model", "conv"]
    argv += ["--window", "16", "--epochs", "2", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "c.safetensors")]) == 0
    captured = capsys.readouterr()
    summary = orjson.loads(captured.out)
    assert summary["rows"] == 1_220 and summary["entities_left_out"] == 2
    assert "entities_left_out" in captured.err
    del topic[:-20]  # only the rare and the short keys are left
    assert main([*argv, "--out", str(tmp_path / "d.safetensors")]) == 2
    assert "no training or validation window in any entity" in capsys.readouterr().err


def test_training_groups_rows_as_the_detector_keys_them(topic: list) -> None:
    """Training had its own rule, which put 7.0 and "7.0" (one entity to the detector) apart."""
    from streamer.config import EventSettings, ThresholdSettings
    from streamer.pipeline import Message, Pipeline

    values = [7.0, "7.0", True, "true", {"b": 1, "a": 2}, {"a": 2, "b": 1}]
    events = [orjson.dumps({"m": v, "v": float(i)}) for i, v in enumerate(values)]
    topic += [(b"k", e) for e in events]
    _, _, entities = table_from_topic(args(entity_column="m", features=["v"]))
    assert entities is not None
    groups = sorted(sorted(np.flatnonzero(entities == e).tolist()) for e in np.unique(entities))

    class Everything:
        kind, name, version, features, window = "dense", "s", "1", ("v",), 1
        train_scores = np.zeros(1_000)

        def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return np.full(len(x), 1e9), np.ones_like(x)

    pipeline = Pipeline(
        Everything(), ThresholdSettings(), EventSettings(key_field="m", alert_cooldown_s=0)
    )
    batch = [Message(e, b"k", "t", 0, i, 0) for i, e in enumerate(events)]
    keys = [k for k, _ in pipeline.process_messages(batch).alerts]
    assert len(keys) == len(values)
    by_key = sorted(sorted(i for i, k in enumerate(keys) if k == key) for key in set(keys))
    assert groups == by_key == [[0, 1], [2, 3], [4, 5]]
