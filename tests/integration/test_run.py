"""``streamer run`` against the embedded broker: end to end, SIGKILL and restart, SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from streamer.alerts import Alert, DeadLetter
from streamer.simulate import SimConfig, SimEvent, generate, produce

pytestmark = [pytest.mark.broker, pytest.mark.slow]

# What each simulator malformation must be reported as.
EXPECTED_REASON = {
    "invalid_json": "invalid JSON",
    "invalid_utf8": "invalid UTF-8",
    "not_object": "not a JSON object",
    "missing_feature": "missing feature",
    "non_numeric": "is not a number but string",
    "null_value": "is not a number but null",
    "nan": "invalid JSON",
    "infinity": "invalid JSON",
    "oversize": "exceeds the limit",
}


def read_labels(path: Path) -> dict[tuple[int, int], dict[str, object]]:
    return {
        (r["partition"], r["offset"]): r for r in map(orjson.loads, path.read_bytes().splitlines())
    }


def test_run_scores_alerts_dead_letters_and_commits_everything(
    kit, dense_checkpoint, tmp_path
) -> None:
    names = kit.topics("e2e")
    config = SimConfig(seed=21, anomaly_rate=0.03, malformed_rate=0.02, oversize_bytes=8_192)
    labels_path = tmp_path / "labels.jsonl"
    report = produce(kit.bootstrap, names["in"], generate(6_000, config), labels_out=labels_path)
    labels = read_labels(labels_path)

    kit.run_to_end(
        kit.run_args(
            names, dense_checkpoint, "--max-events", str(report.count), "--idle-exit", "60"
        ),
        # every decision published, so that recall and precision judge each event (the per-key
        # cooldown and the rise gate are tested in tests/streamer/test_pipeline.py, test_dedup.py
        # and test_gate.py, and end to end in test_models_in_run.py); q = 0.995, as
        # 1 % of 6,000 events is a third of the 3 % injected (the default q gave precision ~0.6)
        STREAMER_EVENTS__MAX_MESSAGE_BYTES="4096",
        STREAMER_EVENTS__ALERT_COOLDOWN_S="0",
        STREAMER_EVENTS__ALERT_GATE_Z="0",
        STREAMER_THRESHOLD__Q="0.995",
    )

    dead = kit.read(names["dead"])
    scores = kit.read(names["scores"])
    alerts_raw = kit.read_raw(names["alerts"])
    topic = names["in"]

    # Nothing lost, nothing twice: every offset is either scored or dead-lettered.
    scored_at = kit.offsets_of(scores, topic)
    dead_at = kit.offsets_of(dead, topic)
    assert scored_at | dead_at == set(labels) == kit.all_offsets(report.end_offsets)
    assert not scored_at & dead_at
    assert len(scores) == len(scored_at)

    # Every malformed message, and only those, is dead-lettered with its reason.
    malformed = {k for k, r in labels.items() if str(r["kind"]).startswith("malformed:")}
    assert malformed and dead_at == malformed
    kinds_seen = set()
    for record in dead:
        letter = DeadLetter.model_validate(record)
        kind = str(labels[(letter.source.partition, letter.source.offset)]["kind"]).split(":", 1)[1]
        kinds_seen.add(kind)
        assert EXPECTED_REASON[kind] in letter.reason, (kind, letter.reason)
        assert letter.original_size > 0
    assert {"invalid_json", "missing_feature", "oversize"} <= kinds_seen

    # The injected anomalies are alerted; alerts are valid, keyed by the entity.
    alerts = [Alert.model_validate_json(value) for _, value in alerts_raw]
    alerted = {(a.source.partition, a.source.offset) for a in alerts}
    anomalies = {k for k, r in labels.items() if r["label"] == 1}
    recall = len(alerted & anomalies) / len(anomalies)
    precision = len(alerted & anomalies) / len(alerted)
    assert recall >= 0.8, recall
    assert precision >= 0.6, precision
    for (key, _), alert in zip(alerts_raw, alerts, strict=True):
        assert alert.key is not None and key == alert.key.encode()
        assert alert.event is not None and alert.event["sensor_id"] == alert.key
        assert alert.event_time == alert.event["ts"]
        assert alert.score > alert.threshold
        assert alert.model.kind == "dense" and alert.model.name == "test"
        assert 1 <= len(alert.top_features) <= 3
        shares = [f.share for f in alert.top_features]
        assert shares == sorted(shares, reverse=True) and sum(shares) <= 1 + 1e-9
        # the largest error carries at least its 1/F
        assert shares[0] >= 1 / len(SimConfig().features)

    # At least once, and exactly to the end: committed offsets equal the end offsets.
    assert kit.committed(names["group"], topic) == report.end_offsets


def _wait_for_commit(kit, group: str, topic: str, timeout: float) -> dict[int, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = kit.committed(group, topic)
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError("the detector committed nothing in time")


def test_sigkill_mid_stream_then_restart_loses_nothing(kit, dense_checkpoint, tmp_path) -> None:
    names = kit.topics("kill")
    config = SimConfig(seed=5, anomaly_rate=0.02, malformed_rate=0.01)
    reports = []
    producer = threading.Thread(
        target=lambda: reports.append(
            produce(kit.bootstrap, names["in"], generate(30_000, config), rate=4_000.0)
        )
    )
    args = kit.run_args(names, dense_checkpoint, "--batch-size", "200", "--max-wait-ms", "20")
    first = subprocess.Popen(
        args, env=kit.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        producer.start()
        before_kill = _wait_for_commit(kit, names["group"], names["in"], timeout=60)
        time.sleep(0.5)
    finally:
        kit.stop(first, signal.SIGKILL)
    producer.join(timeout=60)
    report = reports[0]
    assert sum(before_kill.values()) < report.count, "the kill came after the end of the stream"

    kit.run_to_end([*args, "--idle-exit", "8"])

    topic = names["in"]
    accounted = kit.offsets_of(kit.read(names["scores"]), topic) | kit.offsets_of(
        kit.read(names["dead"]), topic
    )
    assert accounted >= kit.all_offsets(report.end_offsets)
    assert kit.committed(names["group"], topic) == report.end_offsets


def test_sigterm_flushes_and_commits_what_was_processed(kit, dense_checkpoint) -> None:
    names = kit.topics("term")
    report = produce(kit.bootstrap, names["in"], generate(3_000, SimConfig(seed=9)))
    # One huge batch that would wait a minute: only the shutdown path can close and commit it.
    args = kit.run_args(
        names, dense_checkpoint, "--batch-size", "1000000", "--max-wait-ms", "60000"
    )
    proc = subprocess.Popen(args, env=kit.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assigned = False
        deadline = time.monotonic() + 60
        while not assigned and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assigned = b"partitions_assigned" in line
        assert assigned, "the detector never joined its group"
        time.sleep(3.0)  # let it fetch the events into the open batch
        assert kit.committed(names["group"], names["in"]) == {}, "committed before the stop request"
        started = time.monotonic()
        code = kit.stop(proc, signal.SIGTERM)
        assert time.monotonic() - started < 20
    finally:
        kit.stop(proc, signal.SIGKILL, timeout=5)
    assert code == 0
    assert kit.committed(names["group"], names["in"]) == report.end_offsets
    assert len(kit.offsets_of(kit.read(names["scores"]), names["in"])) == report.count


def test_offsets_are_committed_while_idle_without_a_stop(kit, dense_checkpoint) -> None:
    """Commits come at most every kafka.commit_interval_ms; the last batch's offsets must still be
    committed once the stream goes quiet, not only at shutdown."""
    names = kit.topics("idle")
    report = produce(kit.bootstrap, names["in"], generate(2_000, SimConfig(seed=13)))
    args = kit.run_args(names, dense_checkpoint, "--batch-size", "300")
    proc = subprocess.Popen(
        args,
        env=kit.env(STREAMER_KAFKA__COMMIT_INTERVAL_MS="1000"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        committed: dict[int, int] = {}
        while committed != report.end_offsets and time.monotonic() < deadline:
            time.sleep(0.5)
            committed = kit.committed(names["group"], names["in"])
        assert proc.poll() is None, "the detector stopped"
        assert committed == report.end_offsets
    finally:
        kit.stop(proc, signal.SIGTERM)


def test_records_over_the_size_limit_go_out_without_their_echo(kit, dense_checkpoint) -> None:
    """An alert or dead letter larger than the producer accepts (message.max.bytes) would stop the
    service on every restart; it is sent without its echo of the event instead, and committed."""
    names = kit.topics("big")
    events = list(generate(300, SimConfig(seed=5, anomaly_rate=0.0, malformed_rate=0.0)))
    sample = orjson.loads(events[0].value)
    huge = {**sample, "sensor_id": "huge", **dict.fromkeys(SimConfig().features, 1e4)}
    huge["note"] = "n" * 40_000  # valid, anomalous, echoed whole: the alert is ~41 kB
    bad = b"{" + b"x" * 40_000  # invalid JSON: its dead letter's base64 is ~53 kB
    events += [
        SimEvent("huge", orjson.dumps(huge), 1, "spike", 300, False),
        SimEvent("bad", bad, 0, "malformed:invalid_json", 301, True),
    ]
    report = produce(kit.bootstrap, names["in"], events)
    proc = kit.run_to_end(
        kit.run_args(
            names, dense_checkpoint, "--max-events", str(report.count), "--idle-exit", "30"
        ),
        timeout=120,
        STREAMER_EVENTS__MAX_MESSAGE_BYTES="65536",
        STREAMER_EVENTS__MAX_ORIGINAL_BYTES="65536",
        STREAMER_KAFKA__EXTRA='{"message.max.bytes": "20000"}',
    )
    assert b"record_too_large" in proc.stdout + proc.stderr
    alerts = [Alert.model_validate(a) for a in kit.read(names["alerts"])]
    (big,) = [a for a in alerts if a.key == "huge"]
    assert big.event is None and big.event_truncated is None and big.score > big.threshold
    (letter,) = [DeadLetter.model_validate(d) for d in kit.read(names["dead"])]
    assert letter.original_b64 == "" and letter.truncated and letter.original_size == len(bad)
    assert "invalid JSON" in letter.reason
    assert kit.committed(names["group"], names["in"]) == report.end_offsets


class _SlowScorer:
    """Sums squares; its first call signals ``entered`` and then takes ``delay_s``."""

    kind, name, version, features, window = "dense", "slow", "v1", ("x", "y"), 1
    train_scores = np.linspace(0.0, 3.0, 1_000)

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.entered = threading.Event()

    def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.entered.is_set():
            self.entered.set()
            time.sleep(self.delay_s)
        err = (x.astype(np.float64) ** 2).astype(np.float32)
        return err.sum(axis=1).astype(np.float64), err


def test_latest_start_is_committed_so_that_a_stop_skips_nothing(kit) -> None:
    """Under auto_offset_reset = latest, events that arrive while a detector owns a partition it has
    not yet read from must not be skipped by the next owner when the first stops before reading
    them: the start is committed when the partition is assigned, so "latest" applies once."""
    from confluent_kafka import Producer

    names = kit.topics("latest", partitions=2)
    topic = names["in"]
    producer = Producer({"bootstrap.servers": kit.bootstrap})
    delivered: list[tuple[int, int]] = []

    def send(partition: int, count: int, flush_each: bool = False) -> None:
        for _ in range(count):
            producer.produce(
                topic,
                orjson.dumps({"x": 0.1, "y": 0.0}),
                partition=partition,
                on_delivery=lambda err, m: delivered.append((m.partition(), m.offset())),
            )
            if flush_each:  # a batch each: the embedded broker's end offset is then exact
                producer.flush(10)
        producer.flush(10)

    send(0, 5, flush_each=True)  # before the group's first contact: "latest" skips these
    old = set(delivered)

    slow = _SlowScorer(delay_s=3.0)
    # no warm start: reading the pinned start's earlier records would make the first, slow call
    first = kit.detector(names, slow, auto_offset_reset="latest", warm_start_events=0)
    runner = threading.Thread(target=first.run, kwargs={"idle_exit_s": 60})
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while kit.committed(names["group"], topic, partitions=2) != {0: 5, 1: 0}:
            assert time.monotonic() < deadline, kit.committed(names["group"], topic, partitions=2)
            time.sleep(0.3)
        send(1, 1)
        assert slow.entered.wait(30), "the detector never scored"
        send(0, 30)  # while the detector is busy with partition 1's event
        first.stop()
    finally:
        first.stop()
        runner.join(timeout=60)
    assert not runner.is_alive()

    second = kit.detector(names, _SlowScorer(delay_s=0.0), auto_offset_reset="latest")
    second.run(idle_exit_s=5)
    scored = kit.offsets_of(kit.read(names["scores"]), topic)
    assert scored == set(delivered) - old
    assert kit.committed(names["group"], topic, partitions=2) == {0: 35, 1: 1}
