"""Every model kind in the detector, and hot model swap, against the embedded broker."""

from __future__ import annotations

import itertools
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from models import load_checkpoint
from streamer.alerts import Alert
from streamer.config import EventSettings
from streamer.gate import DEFAULT_GATE_Z

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture(scope="module")
def normal():
    from streamer.simulate import SimConfig, normal_frame

    return normal_frame(8_000, SimConfig(seed=11))


@pytest.mark.parametrize("kind", ["conv", "vae", "conv+hst"])
def test_run_with_each_model_kind(kind: str, kit, normal, tmp_path: Path) -> None:
    from models import TrainConfig, train
    from models.training import split_kind
    from streamer.simulate import SimConfig, generate, produce

    x, features, entities = normal
    if kind == "conv+hst":  # the companion learns one series: one sensor's rows, scoring them all
        one = entities == entities[0]
        x, entities = x[one], entities[one]
    ckpt = tmp_path / f"{kind}.safetensors"
    model, companion = split_kind(kind)
    train(
        x,
        features,
        TrainConfig(kind=model, companion=companion, epochs=12, window=16, seed=0, progress=False),
        ckpt,
        entities=entities,
    )

    names = kit.topics(kind.replace("+", "-"))  # "+" is not allowed in a topic name
    report = produce(
        kit.bootstrap,
        names["in"],
        generate(4_000, SimConfig(seed=4, anomaly_rate=0.03, malformed_rate=0.01)),
    )
    kit.run_to_end(
        kit.run_args(names, ckpt, "--max-events", str(report.count), "--idle-exit", "60")
    )
    topic = names["in"]
    scored = kit.offsets_of(kit.read(names["scores"]), topic)
    dead = kit.offsets_of(kit.read(names["dead"]), topic)
    assert scored | dead == kit.all_offsets(report.end_offsets)
    alerts = [Alert.model_validate(a) for a in kit.read(names["alerts"])]
    assert alerts and {a.model.kind for a in alerts} == {model}
    assert kit.committed(names["group"], topic) == report.end_offsets
    # The default per-key cooldown (events.alert_cooldown_s): per sensor, published alerts are at
    # least that far apart in Kafka timestamps unless the later one escalates (a score at least
    # events.alert_escalation times the one before), and the scores topic flags exactly the
    # published ones.
    defaults = EventSettings()
    scorer = load_checkpoint(ckpt)
    cooldown_ms = defaults.cooldown_s(scorer.window, len(scorer.features)) * 1000
    escalation = defaults.alert_escalation
    by_key: dict[str | None, list[tuple[int, float]]] = {}
    for a in alerts:
        assert a.source.timestamp_ms is not None
        by_key.setdefault(a.key, []).append((a.source.timestamp_ms, a.score))
    for published in by_key.values():
        published.sort()
        for (t0, s0), (t1, s1) in itertools.pairwise(published):
            assert t1 - t0 >= cooldown_ms or s1 >= escalation * s0, published
    # The default rise gate (events.alert_gate_z, auto): on for the windowed conv model, and every
    # alert it published passed it; off for the VAE, which scores single events.
    if model == "conv":
        assert all(a.rise is not None and a.rise >= DEFAULT_GATE_Z for a in alerts)
    else:
        assert all(a.rise is None for a in alerts)
    flagged = sum(1 for r in kit.read(names["scores"]) if r["alert"])
    assert flagged == len(alerts)


def test_new_checkpoint_is_swapped_in_and_a_bad_one_refused(
    kit, dense_checkpoint, normal, tmp_path: Path
) -> None:
    from models import TrainConfig, load_checkpoint, train
    from streamer.config import load_settings
    from streamer.runner import Detector
    from streamer.simulate import SimConfig, generate, produce

    x, features, entities = normal
    live = tmp_path / "live.safetensors"
    shutil.copy(dense_checkpoint, live)
    v2 = tmp_path / "v2.safetensors"
    train(
        x,
        features,
        TrainConfig(kind="dense", epochs=5, seed=1, progress=False, name="v2"),
        v2,
        entities=entities,
    )
    names = kit.topics("swap")
    settings = load_settings(
        None,
        {
            "kafka": {
                "bootstrap_servers": kit.bootstrap,
                "group_id": names["group"],
                "input_topics": [names["in"]],
                "alert_topic": names["alerts"],
                "dead_letter_topic": names["dead"],
                "session_timeout_ms": 6000,
            },
            "model": {"path": str(live), "reload_interval_s": 0.2},
            "events": {"key_field": "sensor_id"},
        },
    )
    first = load_checkpoint(live)
    detector = Detector(settings, first, load_scorer=load_checkpoint)
    runner = threading.Thread(target=detector.run, kwargs={"idle_exit_s": 60})
    runner.start()
    try:
        produce(kit.bootstrap, names["in"], generate(500, SimConfig(seed=1)))
        wait_until(lambda: detector.stats.events >= 500)

        # A corrupt file at the path is refused; the running model stays.
        bad = tmp_path / "bad.tmp"
        bad.write_bytes(b"\x80\x04not a checkpoint")
        os.replace(bad, live)
        time.sleep(1.0)
        produce(kit.bootstrap, names["in"], generate(500, SimConfig(seed=2)))
        wait_until(lambda: detector.stats.events >= 1_000)
        assert detector.pipeline.scorer.version == first.version
        assert detector.stats.model_swaps == 0

        # A valid new checkpoint, renamed into place, is picked up between batches.
        staged = tmp_path / "staged.tmp"
        shutil.copy(v2, staged)
        os.replace(staged, live)
        wait_until(lambda: detector.stats.model_swaps == 1)
        produce(kit.bootstrap, names["in"], generate(2_000, SimConfig(seed=3, anomaly_rate=0.05)))
        wait_until(lambda: detector.stats.events >= 3_000)
    finally:
        detector.stop()
        runner.join(timeout=30)
    assert not runner.is_alive()
    assert detector.pipeline.scorer.version == load_checkpoint(v2).version != first.version
    assert detector.pipeline.scorer.name == "v2"
    versions = {Alert.model_validate(a).model.version for a in kit.read(names["alerts"])}
    assert load_checkpoint(v2).version in versions


def wait_until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)
