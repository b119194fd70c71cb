"""The simulated sensor stream: determinism, labels, anomaly and malformed kinds, correlations."""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from sklearn.decomposition import PCA

from streamer.errors import DeliveryError
from streamer.metrics import detection_report
from streamer.simulate import (
    ANOMALY_KINDS,
    MALFORMED_KINDS,
    SimConfig,
    SimEvent,
    generate,
    normal_frame,
    produce,
)

FEATURES = SimConfig().features


def readings(events: list[SimEvent]) -> np.ndarray:
    """(N, F) feature matrix of well-formed events."""
    return np.array([[orjson.loads(e.value)[f] for f in FEATURES] for e in events])


def is_valid(value: bytes, features: tuple[str, ...] = FEATURES, limit: int | None = None) -> bool:
    """What a strict consumer accepts: a UTF-8 JSON object with every feature a finite number."""
    if limit is not None and len(value) > limit:
        return False
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(obj, dict):
        return False
    for f in features:
        v = obj.get(f)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return False
    return True


def test_deterministic_by_seed() -> None:
    cfg = SimConfig(seed=7, anomaly_rate=0.05, malformed_rate=0.05)
    assert list(generate(3000, cfg)) == list(generate(3000, cfg))
    other = list(generate(3000, SimConfig(seed=8, anomaly_rate=0.05, malformed_rate=0.05)))
    assert [e.value for e in other] != [e.value for e in generate(3000, cfg)]
    x1, f1, k1 = normal_frame(500, cfg)
    x2, f2, k2 = normal_frame(500, cfg)
    np.testing.assert_array_equal(x1, x2)
    assert f1 == f2 == list(FEATURES) and k1.tolist() == k2.tolist()


def test_event_structure() -> None:
    cfg = SimConfig(entities=4, seed=1)
    events = list(generate(400, cfg))
    assert [e.seq for e in events] == list(range(400))
    times = []
    for e in events:
        obj = orjson.loads(e.value)
        assert obj["sensor_id"] == e.key and obj["seq"] == e.seq
        assert set(obj) == {"sensor_id", "ts", "seq", *FEATURES}
        times.append(np.datetime64(obj["ts"].rstrip("Z")))
    assert all(np.diff(np.array(times)) > np.timedelta64(0, "ms"))
    # every round of 4 events visits each entity once
    for r in range(100):
        assert sorted(e.key for e in events[4 * r : 4 * r + 4]) == [
            f"sensor-0{i}" for i in range(4)
        ]
    assert cfg.entity_key(3) == "sensor-03"


def test_anomaly_fraction_near_rate() -> None:
    for rate in (0.01, 0.03):
        labels = np.array([e.label for e in generate(40_000, SimConfig(seed=2, anomaly_rate=rate))])
        assert labels.mean() == pytest.approx(rate, rel=0.15)
    assert not any(e.label for e in generate(5000, SimConfig(anomaly_rate=0.0)))


def test_every_anomaly_kind_present() -> None:
    events = list(generate(30_000, SimConfig(seed=3, anomaly_rate=0.02)))
    kinds = Counter(e.kind for e in events if e.label)
    assert set(kinds) == set(ANOMALY_KINDS)
    assert all(e.kind == "normal" for e in events if not e.label)


def test_normal_prefix_honoured() -> None:
    cfg = SimConfig(seed=4, anomaly_rate=0.05, normal_prefix=6000)
    labels = np.array([e.label for e in generate(12_000, cfg)])
    assert labels[:6000].sum() == 0
    assert labels[6000:].mean() == pytest.approx(0.05, rel=0.2)  # the rate applies after the prefix


def test_anomalies_change_only_labelled_events_and_clearly() -> None:
    """Same seed without anomalies gives the counterfactual: labelled events must be far off it."""
    cfg = SimConfig(seed=5, anomaly_rate=0.03)
    with_anomalies = list(generate(20_000, cfg))
    clean = list(generate(20_000, SimConfig(seed=5, anomaly_rate=0.0)))
    x, x0 = readings(with_anomalies), readings(clean)
    labels = np.array([e.label for e in with_anomalies])
    np.testing.assert_array_equal(x[labels == 0], x0[labels == 0])
    swing = np.ptp(readings(clean), axis=0)  # a little above the nominal daily swing
    rel = (np.abs(x - x0) / swing).max(axis=1)  # largest channel deviation, in daily swings
    assert rel[labels == 1].min() > 0.05
    assert np.quantile(rel[labels == 1], 0.05) > 0.2


def test_channels_correlated_as_designed() -> None:
    x, names, keys = normal_frame(20_000, SimConfig(seed=6))
    col = {n: x[:, i].astype(np.float64) for i, n in enumerate(names)}
    corr = lambda a, b: float(np.corrcoef(col[a], col[b])[0, 1])  # noqa: E731
    assert corr("current", "rpm") > 0.8
    assert corr("current", "vibration") > 0.8
    assert corr("temperature", "pressure") > 0.8
    assert corr("current", "voltage") < -0.5
    # temperature lags the load: for one entity, it matches current best some steps later
    mine = keys == "sensor-00"
    cur, temp = col["current"][mine], col["temperature"][mine]
    lags = range(0, 80, 4)
    best = max(lags, key=lambda k: np.corrcoef(cur[: len(cur) - k], temp[k:])[0, 1])
    assert 10 <= best <= 70


def test_normal_frame_shares_the_plant_with_the_stream() -> None:
    cfg = SimConfig(seed=9, anomaly_rate=0.0)
    x, _, keys = normal_frame(16_000, cfg)
    events = list(generate(16_000, cfg))
    stream = readings(events)
    stream_keys = np.array([e.key for e in events])
    assert x.dtype == np.float32 and x.shape == (16_000, len(FEATURES))
    for k in np.unique(keys):
        np.testing.assert_allclose(
            x[keys == k].mean(0), stream[stream_keys == k].mean(0), rtol=0.03
        )
    assert not np.array_equal(x[:100], stream[:100])  # independent noise


def test_linear_detector_finds_the_anomalies() -> None:
    """A 2-component PCA reconstruction (the normal manifold is 2-D) separates the labels."""
    cfg = SimConfig(seed=11, anomaly_rate=0.01)
    x, _, _ = normal_frame(20_000, cfg)
    mu, sd = x.mean(0), x.std(0)
    pca = PCA(2).fit((x - mu) / sd)

    def score(a: np.ndarray) -> np.ndarray:
        z = (a - mu) / sd
        return ((pca.inverse_transform(pca.transform(z)) - z) ** 2).sum(1)

    events = list(generate(30_000, cfg))
    labels = np.array([e.label for e in events])
    s = score(readings(events))
    report = detection_report(labels, s, s > np.quantile(score(x), 0.999), [e.key for e in events])
    assert report["auprc"] > 0.95
    assert report["precision"] > 0.8 and report["recall"] > 0.9
    assert report["range_recall"] == 1.0


def test_malformed_messages_invalid_as_claimed() -> None:
    cfg = SimConfig(seed=12, malformed_rate=0.2, anomaly_rate=0.02)
    events = list(generate(6000, cfg))
    bad = [e for e in events if e.malformed]
    assert len(bad) / len(events) == pytest.approx(0.2, abs=0.03)
    assert {e.kind for e in bad} == {f"malformed:{k}" for k in MALFORMED_KINDS}
    assert all(e.label == 0 for e in bad)
    assert not any(is_valid(e.value) for e in bad)
    assert all(is_valid(e.value) for e in events if not e.malformed)
    for e in bad:
        reason = e.kind.split(":", 1)[1]
        if reason in ("invalid_json", "invalid_utf8", "nan", "infinity"):
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(e.value)
        if reason == "invalid_utf8":
            with pytest.raises(UnicodeDecodeError):
                e.value.decode("utf-8")
        if reason == "not_object":
            assert isinstance(orjson.loads(e.value), list)
        if reason == "missing_feature":
            assert len(set(FEATURES) - set(orjson.loads(e.value))) == 1
        if reason in ("nan", "infinity"):  # what a lenient decoder would hand on
            import json

            assert any(
                not math.isfinite(v) for v in json.loads(e.value).values() if isinstance(v, float)
            )


def test_oversize_only_when_configured() -> None:
    plain = list(generate(3000, SimConfig(malformed_rate=0.3)))
    assert not any(e.kind == "malformed:oversize" for e in plain)
    events = list(generate(3000, SimConfig(malformed_rate=0.3, oversize_bytes=10_000)))
    big = [e for e in events if e.kind == "malformed:oversize"]
    assert big and all(len(e.value) > 10_000 for e in big)
    assert all(len(e.value) < 1000 for e in events if e.kind != "malformed:oversize")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"entities": 0}, "entities"),
        ({"features": ("temperature", "humidity")}, "unknown features"),
        ({"features": ("rpm",)}, "two distinct"),
        ({"anomaly_rate": 0.7}, "anomaly_rate"),
        ({"malformed_rate": -0.1}, "malformed_rate"),
        ({"period": 2}, "period"),
        ({"noise": 2.0}, "noise"),
        ({"normal_prefix": -1}, "normal_prefix"),
        ({"start": "yesterday"}, "ISO"),
        ({"key_field": "rpm"}, "feature names"),
    ],
)
def test_config_validated(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SimConfig(**kwargs)


def test_feature_subset_and_order() -> None:
    cfg = SimConfig(features=("rpm", "current"), seed=1)
    obj = orjson.loads(next(generate(1, cfg)).value)
    assert {"rpm", "current"} <= set(obj) and "temperature" not in obj
    x, names, _ = normal_frame(10, cfg)
    assert names == ["rpm", "current"] and x.shape == (10, 2)
    assert x[:, 0].mean() > x[:, 1].mean()  # rpm ~1000s, current ~10s


# ----------------------------------------------------------------------------- produce (no broker)


@dataclass
class FakeMessage:
    _topic: str
    _partition: int
    _offset: int
    _key: bytes

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


class FakeProducer:
    """Acknowledges on poll/flush like librdkafka; partitions by key; can fail one message."""

    def __init__(self, partitions: int = 3, fail_at: int | None = None) -> None:
        self.partitions = partitions
        self.fail_at = fail_at
        self.pending: list[tuple[Any, FakeMessage, bool]] = []
        self.offsets = [0] * partitions
        self.produced = 0

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any) -> None:
        part = sum(key) % self.partitions
        msg = FakeMessage(topic, part, self.offsets[part], key)
        self.offsets[part] += 1
        self.pending.append((on_delivery, msg, self.produced == self.fail_at))
        self.produced += 1

    def poll(self, timeout: float) -> int:
        served = len(self.pending)
        for cb, msg, fail in self.pending:
            cb("broker said no" if fail else None, msg)
        self.pending.clear()
        return served

    def flush(self, timeout: float) -> int:
        self.poll(0)
        return 0


def test_produce_writes_labels_with_offsets(tmp_path: Path) -> None:
    events = list(generate(300, SimConfig(seed=1, anomaly_rate=0.05, malformed_rate=0.05)))
    fake = FakeProducer()
    out = tmp_path / "labels.jsonl"
    report = produce("unused:9092", "events", events, labels_out=out, producer=fake)
    assert report.count == 300
    assert report.end_offsets == {p: n for p, n in enumerate(fake.offsets) if n}
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(lines) == 300
    by_seq = {line["seq"]: line for line in lines}
    for e in events:
        line = by_seq[e.seq]
        assert (line["key"], line["label"], line["kind"], line["topic"]) == (
            e.key,
            e.label,
            e.kind,
            "events",
        )
    assert len({(line["partition"], line["offset"]) for line in lines}) == 300


def test_produce_paces_to_rate() -> None:
    events = list(generate(200, SimConfig()))
    started = time.monotonic()
    report = produce("unused:9092", "events", events, rate=2000.0, producer=FakeProducer())
    assert time.monotonic() - started >= 0.09  # 200 events at 2000/s: the 200th is due at 99.5 ms
    assert report.elapsed_s >= 0.09


def test_produce_raises_on_delivery_error() -> None:
    events = list(generate(50, SimConfig()))
    with pytest.raises(DeliveryError, match="seq 10: broker said no"):
        produce("unused:9092", "events", events, producer=FakeProducer(fail_at=10))
    with pytest.raises(ValueError, match="rate"):
        produce("unused:9092", "events", events, rate=0.0, producer=FakeProducer())


def test_a_short_stream_does_not_get_one_long_anomaly_regardless_of_the_rate() -> None:
    """The first anomaly was always kept: 100 events at rate 0.01 came out 19-30 % labelled."""
    for seed in range(5):
        events = list(
            generate(100, SimConfig(seed=seed, entities=1, anomaly_rate=0.01, normal_prefix=0))
        )
        assert sum(e.label for e in events) <= 5, seed
