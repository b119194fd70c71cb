"""``streamer demo``: the whole product end to end on an embedded broker, with a summary at the end.

Start Tansu, simulate a labelled multi-sensor stream (with malformed messages), train a dense autoencoder
on the stream's normal prefix, run the detector over the topic, read back the alert and dead-letter
topics, and score the alerts against the simulator's labels.
"""

from __future__ import annotations

import gc
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from streamer.metrics import detection_report


@dataclass(frozen=True)
class DemoConfig:
    events: int = 30_000
    seed: int = 0
    train_events: int = 10_000  # the normal prefix the model is trained on
    anomaly_rate: float = 0.02
    malformed_rate: float = 0.003
    q: float = 0.999  # the demo stream is 1-2 % anomalous; 0.999 keeps false alarms well below that
    epochs: int = 60
    progress: bool = True

    def __post_init__(self) -> None:
        if self.events <= self.train_events:
            raise ValueError(
                f"events ({self.events}) must exceed train_events ({self.train_events})"
            )


# Tansu closes idle connections; librdkafka would log each reconnect.
_QUIET = {"log.connection.close": False}


def _say(config: DemoConfig, text: str) -> None:
    if config.progress:
        print(f"[demo] {text}", file=sys.stderr, flush=True)


def run_demo(config: DemoConfig) -> dict[str, Any]:
    from models import TrainConfig, load_checkpoint, train
    from streamer.broker import EmbeddedBroker
    from streamer.cli import set_torch_threads
    from streamer.config import settings_without_environment
    from streamer.kafka_io import read_topic
    from streamer.logs import configure_logging
    from streamer.runner import Detector
    from streamer.simulate import SimConfig, generate, produce

    configure_logging("WARNING")
    set_torch_threads(1)
    sim = SimConfig(
        seed=config.seed,
        anomaly_rate=config.anomaly_rate,
        malformed_rate=config.malformed_rate,
        normal_prefix=config.train_events,
    )
    events = list(generate(config.events, sim))
    if not any(e.label for e in events):  # nothing to find: precision and recall would mean nothing
        raise ValueError(
            f"{config.events} events hold no labelled anomaly after the {config.train_events} "
            "normal ones the model trains on; give more events"
        )
    features = list(sim.features)
    prefix = [orjson.loads(e.value) for e in events[: config.train_events] if not e.malformed]
    x_train = np.array([[row[f] for f in features] for row in prefix], dtype=np.float32)
    entities = np.array([row[sim.key_field] for row in prefix])

    with tempfile.TemporaryDirectory(prefix="ae-demo-") as tmp, EmbeddedBroker() as broker:
        work = Path(tmp)
        _say(config, f"embedded Tansu broker on {broker.bootstrap}")
        broker.create_topics(["events"], partitions=3)
        broker.create_topics(["alerts", "dead-letters"], partitions=1)

        _say(config, f"training a dense autoencoder on {len(x_train)} normal events ...")
        ckpt = work / "demo.safetensors"
        train(
            x_train,
            features,
            TrainConfig(
                kind="dense",
                epochs=config.epochs,
                seed=config.seed,
                progress=config.progress,
                name="demo",
            ),
            ckpt,
            entities=entities,
        )

        labels_path = work / "labels.jsonl"
        _say(config, f"producing {config.events} simulated events ...")
        report = produce(
            broker.bootstrap, "events", events, labels_out=labels_path, producer_config=_QUIET
        )

        # Only these settings and the defaults: the user's STREAMER_* environment (another alert
        # topic, SASL, ...) must not change what the demo runs or where it reads its results.
        settings = settings_without_environment(
            {
                "kafka": {
                    "bootstrap_servers": broker.bootstrap,
                    "group_id": "demo",
                    "input_topics": ["events"],
                    "session_timeout_ms": 6000,
                },
                "model": {"path": str(ckpt), "device": "auto", "reload_interval_s": 0},
                # The demo judges every event's decision against its label (point-wise), so it publishes
                # every alert (no per-key cooldown, no rise gate) and, at q = 0.999, estimates the
                # quantile over all history: a 2,000-score window holds only two scores above it.
                "events": {
                    "key_field": sim.key_field,
                    "time_field": sim.time_field,
                    "alert_cooldown_s": 0,
                    "alert_gate_z": 0,
                },
                "threshold": {"q": config.q, "window": None},
                "log": {"level": "WARNING"},
            }
        )
        _say(config, "running the detector ...")
        detector = Detector(settings, load_checkpoint(ckpt, device="auto"))
        stats = detector.run(max_events=report.count, idle_exit_s=60)
        # Its Kafka clients hold reference cycles: collect them while the broker is up, or the
        # producer logs failed reconnects once the broker is gone.
        del detector
        gc.collect()

        alert_values = list(
            read_topic({"bootstrap.servers": broker.bootstrap, **_QUIET}, "alerts", stats.alerts)
        )
        dead_values = list(
            read_topic(
                {"bootstrap.servers": broker.bootstrap, **_QUIET},
                "dead-letters",
                stats.dead_lettered,
            )
        )
        label_lines = labels_path.read_bytes().splitlines()

    labels = {}
    entity_of = {}
    malformed = set()
    for line in label_lines:
        row = orjson.loads(line)
        labels[(row["partition"], row["offset"])] = row["label"]
        entity_of[(row["partition"], row["offset"])] = row["key"]
        if row["kind"].startswith("malformed"):
            malformed.add((row["partition"], row["offset"]))

    def source_of(value: bytes | None) -> tuple[int, int]:
        src = orjson.loads(value or b"{}")["source"]
        return (src["partition"], src["offset"])

    alerted = {source_of(v) for v in alert_values}
    dead = {source_of(v) for v in dead_values}

    scored = [k for k in sorted(labels) if k not in dead]
    y = np.array([labels[k] for k in scored], dtype=np.int8)
    a = np.array([k in alerted for k in scored], dtype=np.int8)
    # Windows (for range recall) are runs of labelled events of one sensor, not of the interleaved stream.
    groups = np.array([entity_of[k] for k in scored])
    quality = detection_report(y, a.astype(np.float64), a, groups=groups)
    return {
        "events": report.count,
        "scored": len(scored),
        "alerts": len(alert_values),
        "dead_lettered": len(dead_values),
        "malformed_sent": len(malformed),
        "malformed_dead_lettered": len(malformed & dead),
        "anomalies": int(y.sum()),
        "precision": round(float(quality["precision"]), 4),
        "recall": round(float(quality["recall"]), 4),
        "f1": round(float(quality["f1"]), 4),
        "range_recall": round(float(quality["range_recall"]), 4),
        "events_per_s": round(stats.events / stats.active_s, 1) if stats.active_s > 0 else None,
        "q": config.q,
    }


def print_summary(summary: dict[str, Any]) -> None:
    rows = [
        ("events produced", summary["events"]),
        ("scored", summary["scored"]),
        ("labelled anomalies", summary["anomalies"]),
        ("alerts published", summary["alerts"]),
        (
            "dead-lettered",
            f"{summary['dead_lettered']} ({summary['malformed_dead_lettered']} of "
            f"{summary['malformed_sent']} malformed)",
        ),
        ("precision", f"{summary['precision']:.3f}"),
        ("recall", f"{summary['recall']:.3f}"),
        ("F1", f"{summary['f1']:.3f}"),
        ("anomaly windows found", f"{summary['range_recall']:.3f}"),
        ("events/s (detector)", summary["events_per_s"]),
        ("threshold quantile q", summary["q"]),
    ]
    width = max(len(name) for name, _ in rows)
    print("\nae-streamer demo")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
