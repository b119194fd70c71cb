"""``streamer bench``: how fast the detector is, every figure measured side by side in one run.

For each feature count F the same generated events (``streamer.workload``) go through, in order:

1. in process, in interleaved rounds so that a busy machine slows all figures alike: decode only
   (bytes to a float matrix, the ceiling of the pipeline), then the pipeline (decode, features, score,
   threshold, alerts) with each model kind; each figure is the median over the rounds;
2. River's HalfSpaceTrees, score then learn per event: from the same event bytes (decoded and
   min-max scaled per event), and alone on dicts prepared beforehand (its floor); then the same trees
   as arrays (``models.hst.HalfSpaceForest``, river's exact scores) on the same rows, batches of 5,000;
3. through the embedded broker: a backlog of the events is produced, read back raw (nothing done per
   message: the ceiling), then drained by the real ``Detector`` (consume, pipeline, alerts produced
   and acknowledged, offsets committed). Both rates are sustained rates, between the points where 10 %
   and 90 % of the backlog was done. Right after the drain, a child process offers events at a fixed
   rate for ``seconds`` (the soak) to a topic of their own, which the detector reads too, stamping
   each with its send time, and times every alert from that stamp to the alert's arrival at its
   consumer. The soak's topic has ``soak_partitions`` partitions (1 by default): the embedded broker
   lists every batch stored in a partition on each fetch that finds new data there, so at a fixed
   offered rate its CPU grows with the run and with the partitions written (see the README);
4. with ``--device cuda``: ``Scorer.score`` on the GPU per model kind and batch size in fp32 and fp16,
   eager and as a captured CUDA graph, the share of the host-to-device copy, and the bare forward pass.

Stage times (consume, decode, features, score, threshold, alerts, produce, commit) come from the
pipeline's and the detector's own accounting. Memory is the resident set size of this process, which
runs the detector: at the start and end of the soak, the largest seen during it, and the peak of the
whole run; CPU use of the detector, the broker and the load generator is taken over the soak.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from itertools import cycle
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import orjson

from streamer.args import cooldown_arg, positive_int, seed
from streamer.errors import StreamerError
from streamer.gate import gate_z_arg
from streamer.kafka_io import client
from streamer.workload import KEY_FIELD, TIME_FIELD, Workload, make_scorer, make_workload

if TYPE_CHECKING:
    from models import Scorer
    from streamer.runner import RunStats

KINDS = ("dense", "conv", "vae")
STAGES = (
    "consume",
    "decode",
    "features",
    "score",
    "novelty",
    "threshold",
    "gate",
    "alerts",
    "produce",
    "commit",
)
GPU_BATCHES = (256, 1024, 4096, 16384)
# The in-process figures' name for conv with novelty off, measured beside it where novelty is on (one
# feature, by default).
CONV_WITHOUT_NOVELTY = "conv-without-novelty"


@dataclass(frozen=True)
class BenchConfig:
    """What to measure; ``quick`` shrinks everything to a smoke run of a few seconds."""

    device: str = "cpu"
    precision: str = "fp32"  # GPU only, as model.precision
    cuda_graph: bool = True  # GPU only, as model.cuda_graph
    model: str = "dense"
    features: tuple[int, ...] = (16, 38)
    seconds: float = 20.0  # the soak: events offered at `rate` through the broker
    soak_partitions: int = 1  # partitions of the soak's own topic (the backlog's has 3)
    rate: float = 20_000.0
    events: int = 200_000  # generated events per feature count: the in-process pool and the backlog
    rounds: int = 3
    pass_s: float = 1.0  # shortest timed pass of one in-process figure
    batch_events: int | None = None  # None: the detector's default (BatchSettings.max_events)
    threshold_window: int | None = None  # None: the detector's default; 0: all history (P-square)
    # None: the detector's default (events.alert_cooldown_s)
    alert_cooldown_s: float | Literal["auto"] | None = None
    gate_z: float | str | None = None  # None: the detector's default (events.alert_gate_z); 0 = off
    max_wait_ms: int | None = None  # None: the detector's default (BatchSettings.max_wait_ms)
    threads: int = 1  # torch intra-op threads
    # fetch.wait.max.ms of every consumer on the embedded broker (see streamer.loadgen)
    fetch_wait_ms: int = 10
    train_rows: int = 20_000  # normal rows each model scores to start its threshold
    broker: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.precision not in ("fp32", "fp16"):
            raise ValueError(f"precision must be 'fp32' or 'fp16', got {self.precision!r}")
        if self.model not in KINDS:
            raise ValueError(f"model must be one of {KINDS}, got {self.model!r}")
        if not self.features or any(f < 1 for f in self.features):
            raise ValueError(f"feature counts must be positive, got {self.features}")
        if not self.seconds > 0 or not self.rate > 0:
            raise ValueError(f"seconds and rate must be > 0, got {self.seconds}, {self.rate}")
        if self.events < 1_000 or self.rounds < 1 or not self.pass_s > 0 or self.threads < 1:
            raise ValueError("need events >= 1000, rounds >= 1, pass_s > 0 and threads >= 1")
        if not 1 <= self.soak_partitions <= 64:
            raise ValueError(f"soak_partitions must be 1 to 64, got {self.soak_partitions}")
        if not 0 <= self.fetch_wait_ms <= 300_000:
            raise ValueError(f"fetch_wait_ms must be 0 to 300000, got {self.fetch_wait_ms}")
        # The detector's own settings, checked now rather than after the in-process figures.
        from pydantic import ValidationError

        from streamer.config import BatchSettings, EventSettings, ThresholdSettings, describe

        batch = {"max_events": self.batch_events, "max_wait_ms": self.max_wait_ms}
        try:
            ThresholdSettings(**_threshold_overrides(self))
            EventSettings(**_events_overrides(self))
            BatchSettings(**{k: v for k, v in batch.items() if v is not None})
        except ValidationError as exc:
            raise ValueError(describe(exc)) from None

    @classmethod
    def quick(cls, **overrides: Any) -> BenchConfig:
        """A smoke run: small pools, one round, short passes; every figure is still produced."""
        base: dict[str, Any] = {
            "features": (16,),
            "seconds": 2.0,
            "events": 20_000,
            "rounds": 1,
            "pass_s": 0.2,
            "train_rows": 4_000,
        }
        return cls(**{**base, **overrides})


@contextmanager
def _settled() -> Iterator[None]:
    """Collect, then freeze what survives for the block, as ``Detector.run`` does around its loop.

    With torch and the event pools loaded, one full collection of the cyclic GC takes ~100 ms, and
    per-event objects (parsed events, consumed messages) trigger them every few batches: unfrozen,
    that alone cuts the consume ceiling several times over (measured: ~130 k/s against ~900 k/s).
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _rss_mb() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss) / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


# ------------------------------------------------------------------------------------- in process


def _batches(values: list[bytes], size: int) -> list[tuple[int, list[bytes]]]:
    return [(i, values[i : i + size]) for i in range(0, len(values), size)]


def _timed(
    step: Callable[[int, list[bytes]], object],
    batches: Sequence[tuple[int, list[bytes]]],
    min_s: float,
) -> float:
    """Events per second of ``step`` over the batches, cycling through them for at least ``min_s``."""
    n = 0
    start = time.perf_counter()
    for base, batch in cycle(batches):
        step(base, batch)
        n += len(batch)
        elapsed = time.perf_counter() - start
        if elapsed >= min_s:
            return n / elapsed
    raise AssertionError("unreachable: cycle() never ends")


def _pipeline_step(
    pipeline: Any, workload: Workload, totals: dict[str, float]
) -> Callable[[int, list[bytes]], None]:
    from streamer.pipeline import Message

    values, keys = workload.values, workload.keys

    def step(base: int, batch: list[bytes]) -> None:
        def origin(i: int) -> Message:
            return Message(values[base + i], keys[base + i], "bench", 0, base + i, None)

        result = pipeline.process(batch, origin)
        for stage, seconds in result.timings.items():
            totals[stage] = totals.get(stage, 0.0) + seconds
        totals["events"] = totals.get("events", 0.0) + len(batch)
        totals["n_alerts"] = totals.get("n_alerts", 0.0) + len(result.alerts)

    return step


def _cooldown_text(value: float | str | None) -> str:
    """The alert cooldown as the report's header gives it."""
    if value is None:
        return "default"
    return value if isinstance(value, str) else f"{value:g} s"


def _threshold_overrides(config: BenchConfig) -> dict[str, Any]:
    return {} if config.threshold_window is None else {"window": config.threshold_window}


def _events_overrides(config: BenchConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if config.alert_cooldown_s is not None:
        out["alert_cooldown_s"] = config.alert_cooldown_s
    if config.gate_z is not None:
        out["alert_gate_z"] = config.gate_z
    return out


def _stage_table(totals: dict[str, float], events: float) -> dict[str, float]:
    """Microseconds per event for each stage present."""
    return {s: round(totals[s] / events * 1e6, 4) for s in STAGES if s in totals and events}


def measure_in_process(
    workload: Workload, scorers: dict[str, Scorer], config: BenchConfig, batch_events: int
) -> dict[str, Any]:
    """Decode only and the pipeline per model kind, interleaved round by round on the same events."""
    import torch

    from streamer.config import EventSettings, ThresholdSettings
    from streamer.decode import Decoder
    from streamer.pipeline import Pipeline

    events = EventSettings(key_field=KEY_FIELD, time_field=TIME_FIELD, **_events_overrides(config))
    threshold = ThresholdSettings(**_threshold_overrides(config))
    decoder = Decoder(workload.features, events.max_message_bytes)
    batches = _batches(workload.values, batch_events)
    pipelines = {k: Pipeline(s, threshold, events) for k, s in scorers.items()}
    conv = scorers.get("conv")
    if conv is not None and events.novelty_on(conv.window, len(conv.features)):
        # novelty's cost side by side: the same conv model without it
        pipelines[CONV_WITHOUT_NOVELTY] = Pipeline(
            conv, threshold, events.model_copy(update={"novelty": False})
        )
    totals: dict[str, dict[str, float]] = {k: {} for k in pipelines}
    steps = {k: _pipeline_step(p, workload, totals[k]) for k, p in pipelines.items()}
    decode_rates: list[float] = []
    rates: dict[str, list[float]] = {k: [] for k in pipelines}
    order = [config.model, *(k for k in pipelines if k != config.model)]
    with _settled():
        for _ in range(config.rounds):
            decode_rates.append(_timed(lambda b, v: decoder.decode(v), batches, config.pass_s))
            for kind in order:
                rates[kind].append(_timed(steps[kind], batches, config.pass_s))
    decode = _median(decode_rates)
    out: dict[str, Any] = {
        "batch_events": batch_events,
        "decode_only_events_per_s": round(decode),
        "pipeline_events_per_s": {k: round(_median(v)) for k, v in rates.items()},
        "stages_us_per_event": {
            k: _stage_table(t, t.get("events", 0.0)) for k, t in totals.items()
        },
        "alert_rate": {
            k: round(t.get("n_alerts", 0.0) / max(1.0, t.get("events", 0.0)), 5)
            for k, t in totals.items()
        },
    }
    main = out["pipeline_events_per_s"][config.model]
    out["pipeline_to_decode_only"] = round(main / decode, 3)
    out["per_model_to_dense"] = {
        k: round(v / out["pipeline_events_per_s"]["dense"], 3)
        for k, v in out["pipeline_events_per_s"].items()
        if "dense" in out["pipeline_events_per_s"]
    }
    main_scorer = scorers[config.model]
    if main_scorer.device.type != "cpu" and callable(getattr(main_scorer, "submit", None)):
        # Decoding the next chunk while the device scores this one, against one pass per batch.
        serial = Pipeline(main_scorer, threshold, events, overlap_chunk=1 << 30)
        out["pipeline_events_per_s_without_overlap"] = round(
            _timed(_pipeline_step(serial, workload, {}), batches, config.pass_s)
        )
    if main_scorer.device.type == "cpu":
        # The intra-op thread count side by side: on a small model more threads mostly add waiting.
        by_threads: dict[str, int] = {}
        with _settled():
            for n in sorted({1, 2, config.threads}):
                torch.set_num_threads(n)
                by_threads[str(n)] = round(_timed(steps[config.model], batches, config.pass_s))
        torch.set_num_threads(config.threads)
        out["pipeline_events_per_s_by_torch_threads"] = by_threads
    return out


# Rows the array forest scores and learns at a time in its figure: the detector's batch size.
FOREST_BATCH = 5_000


def measure_hst(workload: Workload, config: BenchConfig) -> dict[str, Any]:
    """River HalfSpaceTrees (river's defaults: 10 trees, height 8, window 250), score_one then learn_one.

    Two figures: from the same event bytes as the pipeline (JSON decode, the features min-max scaled
    to [0, 1] with the normal rows' range as ``streamer.baselines`` does, score, learn), and the model
    alone on dicts prepared beforehand (its floor: no decoding, no scaling).
    """
    from river import anomaly

    from models.hst import HalfSpaceForest

    names = workload.features
    low = workload.normal.min(axis=0).astype(np.float64)
    span = np.maximum(workload.normal.max(axis=0) - low, 1e-9).tolist()
    low_l = low.tolist()
    warm = workload.normal[:500]

    def fresh() -> Any:
        hst = anomaly.HalfSpaceTrees(seed=config.seed)
        for row in np.clip((warm - low) / span, 0.0, 1.0).tolist():  # past the first window
            hst.learn_one(dict(zip(names, row, strict=True)))
        return hst

    def from_bytes(hst: Any) -> Callable[[bytes], None]:
        loads, clip = orjson.loads, min
        bounds = list(zip(names, low_l, span, strict=True))

        def step(value: bytes) -> None:
            event = loads(value)
            x = {n: clip(1.0, max(0.0, (event[n] - lo) / sp)) for n, lo, sp in bounds}
            hst.score_one(x)
            hst.learn_one(x)

        return step

    def model_only(hst: Any) -> Callable[[dict[str, float]], None]:
        def step(x: dict[str, float]) -> None:
            hst.score_one(x)
            hst.learn_one(x)

        return step

    head = workload.values[: min(len(workload), 50_000)]
    rows = np.array([[orjson.loads(v)[n] for n in names] for v in head[:20_000]], dtype=np.float64)
    dicts = [
        dict(zip(names, r, strict=True)) for r in np.clip((rows - low) / span, 0.0, 1.0).tolist()
    ]
    scaled = np.clip((rows - low) / span, 0.0, 1.0)

    def forest_rate() -> float:
        """The same trees (river's, from the same seed and warm-up) as arrays, batches of 5,000."""
        forest = HalfSpaceForest.from_river(fresh(), list(names))
        batches = [scaled[i : i + FOREST_BATCH] for i in range(0, len(scaled), FOREST_BATCH)]
        return _per_item(forest.prequential, batches, config.pass_s, per=len) if batches else 0.0

    rates: dict[str, list[float]] = {"bytes": [], "model": [], "forest": []}
    with _settled():
        for _ in range(config.rounds):
            rates["bytes"].append(_per_item(from_bytes(fresh()), head, config.pass_s))
            rates["model"].append(_per_item(model_only(fresh()), dicts, config.pass_s))
            rates["forest"].append(forest_rate())
    return {
        "hst_events_per_s": round(_median(rates["bytes"])),
        "hst_model_only_events_per_s": round(_median(rates["model"])),
        "hst_forest_events_per_s": round(_median(rates["forest"])),
    }


def _per_item(
    step: Callable[[Any], Any],
    items: Sequence[Any],
    min_s: float,
    per: Callable[[Any], int] | None = None,
) -> float:
    """Items a second (``per``: events a second, ``per(item)`` events an item), over at least
    ``min_s`` seconds of ``step`` on the items in turn."""
    start = time.perf_counter()
    done = 0
    for n, item in enumerate(cycle(items), 1):
        step(item)
        done += 1 if per is None else per(item)
        if per is not None or n % 256 == 0:
            elapsed = time.perf_counter() - start
            if elapsed >= min_s:
                return done / elapsed
    raise AssertionError("unreachable: cycle() never ends")


# ----------------------------------------------------------------------------------------- broker


def _produce_backlog(
    bootstrap: str, topic: str, workload: Workload
) -> tuple[float, dict[int, int]]:
    """Produce every event; the end offsets come from delivery reports (never from watermarks)."""
    from confluent_kafka import KafkaError, Producer

    end: dict[int, int] = {}
    errors: list[str] = []

    def on_delivery(err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
            return
        if msg.offset() + 1 > end.get(msg.partition(), 0):
            end[msg.partition()] = msg.offset() + 1

    producer = client(
        Producer,
        {
            "bootstrap.servers": bootstrap,
            "log.connection.close": False,
            "linger.ms": 5,
            "batch.num.messages": 10_000,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 200_000,
            "acks": "all",
        },
    )
    start = time.perf_counter()
    for value, key in zip(workload.values, workload.keys, strict=True):
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    if producer.flush(60.0) or errors:
        raise StreamerError(f"backlog not delivered: {errors[:3] or 'flush timed out'}")
    return len(workload) / (time.perf_counter() - start), end


def _raw_consume(
    bootstrap: str, topic: str, end: dict[int, int], batch_events: int, fetch_wait_ms: int
) -> float:
    """Read the backlog with nothing done per message but taking its value: the consume ceiling."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition

    consumer = client(
        Consumer,
        {
            "bootstrap.servers": bootstrap,
            "log.connection.close": False,
            "group.id": "bench-raw",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": fetch_wait_ms,
        },
    )
    value, error = Message.value, Message.error
    total = sum(end.values())
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in end])
        n, progress = 0, []
        deadline = time.monotonic() + 120
        while n < total and time.monotonic() < deadline:
            messages = consumer.consume(num_messages=batch_events, timeout=0.5)
            if any(map(error, messages)):
                raise KafkaException(next(m.error() for m in messages if m.error()))
            n += len(list(map(value, messages)))
            if messages:
                progress.append((time.perf_counter(), n))
        if n < total:
            raise StreamerError(f"raw consume read {n} of {total} events")
        return _sustained_rate(progress, total)
    finally:
        consumer.close()


def _sustained_rate(progress: Sequence[tuple[float, int]], total: int) -> float:
    """Events per second between the points where 10 % and 90 % of ``total`` were done.

    ``progress`` holds (time, events done so far) after each batch. Leaving out the first and last
    tenth keeps the start-up (partitions starting one by one, the first fetches) and the last batch's
    tail out of a figure meant to say how fast the stream is served.
    """
    low = next(p for p in progress if p[1] >= 0.1 * total)
    high = next(p for p in progress if p[1] >= 0.9 * total)
    if high[0] > low[0]:
        return (high[1] - low[1]) / (high[0] - low[0])
    return total / max(1e-9, progress[-1][0] - progress[0][0])  # too few batches to leave any out


@dataclass
class _Soak:
    """What the detector run records while it drains the backlog and then serves the offered load."""

    backlog: int
    drain_s: float = 0.0
    drain_progress: list[tuple[float, int]] = field(default_factory=list)
    drain_stages: dict[str, float] | None = None
    started: threading.Event | None = None
    rss_start_mb: float = 0.0
    rss_end_mb: float = 0.0
    rss_max_mb: float = 0.0
    live_stages: dict[str, float] | None = None
    live_events: int = 0
    cpu_percent: dict[str, float] | None = None  # per process over the soak (100 = one core)
    start_wall_s: float = 0.0  # wall clock when the load generator was told to go
    cpu_samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)  # wall s, CPU s
    error: str | None = None


def _committed(
    bootstrap: str, group: str, partitions: Sequence[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = client(
        Consumer, {"bootstrap.servers": bootstrap, "group.id": group, "log.connection.close": False}
    )
    try:
        got = consumer.committed([TopicPartition(t, p) for t, p in partitions], timeout=10)
        return {(tp.topic, tp.partition): tp.offset for tp in got if tp.offset >= 0}
    finally:
        consumer.close()


def measure_broker(
    workload: Workload, scorer: Scorer, config: BenchConfig, progress: Callable[[str], None]
) -> dict[str, Any]:
    """Produce, raw consume, detector drain and the soak at a fixed offered rate, on one broker."""
    import multiprocessing

    from streamer.broker import EmbeddedBroker
    from streamer.config import load_settings
    from streamer.loadgen import LoadPlan, run_load
    from streamer.runner import Detector

    n_features = len(workload.features)
    names = {k: f"bench-{k}-f{n_features}" for k in ("events", "live", "alerts", "dead")}
    group = f"bench-detector-f{n_features}"
    with EmbeddedBroker() as broker:
        broker.create_topics([names["events"]], partitions=3)
        broker.create_topics([names["live"]], partitions=config.soak_partitions)
        broker.create_topics([names["alerts"], names["dead"]], partitions=1)
        progress(f"F={n_features}: producing a backlog of {len(workload)} events")
        produce_rate, backlog_end = _produce_backlog(broker.bootstrap, names["events"], workload)
        overrides: dict[str, Any] = {
            "kafka": {
                "bootstrap_servers": broker.bootstrap,
                "group_id": group,
                "input_topics": [names["events"], names["live"]],
                "alert_topic": names["alerts"],
                "dead_letter_topic": names["dead"],
                "session_timeout_ms": 6000,
            },
            "model": {"reload_interval_s": 0, "device": config.device},
            "events": {
                "key_field": KEY_FIELD,
                "time_field": TIME_FIELD,
                # Through the broker every exceedance is published, so that each is a latency
                # sample: with the default 300 s cooldown the 64 sensors would give about 64, and
                # the rise gate (on for conv) would keep a few of those. Their costs are in the
                # in-process figures.
                "alert_cooldown_s": 0.0,
                "alert_gate_z": 0.0,
                **_events_overrides(config),
            },
            "threshold": _threshold_overrides(config),
            "log": {"level": "WARNING"},
        }
        if config.batch_events is not None:
            overrides.setdefault("batch", {})["max_events"] = config.batch_events
        if config.max_wait_ms is not None:
            overrides.setdefault("batch", {})["max_wait_ms"] = config.max_wait_ms
        settings = load_settings(None, overrides)
        progress(f"F={n_features}: raw consume")
        with _settled():
            raw_rate = _median(
                [
                    _raw_consume(
                        broker.bootstrap,
                        names["events"],
                        backlog_end,
                        settings.batch.max_events,
                        config.fetch_wait_ms,
                    )
                    for _ in range(config.rounds)
                ]
            )

        ctx = multiprocessing.get_context("spawn")
        go, finished = ctx.Event(), ctx.Event()
        parent, child = ctx.Pipe()
        plan = LoadPlan(
            bootstrap=broker.bootstrap,
            topic=names["live"],
            alert_topic=names["alerts"],
            values=workload.values,
            keys=workload.keys,
            rate=config.rate,
            seconds=config.seconds,
            fetch_wait_ms=config.fetch_wait_ms,
        )
        load = ctx.Process(target=run_load, args=(plan, go, finished, child), daemon=True)
        load.start()
        try:
            if not parent.poll(120) or parent.recv() != "ready":
                raise StreamerError("the load generator did not start")
            progress(
                f"F={n_features}: detector drain, then {config.seconds:g} s at {config.rate:g} events/s"
            )
            soak = _Soak(backlog=len(workload), started=threading.Event())
            detector = Detector(
                settings, scorer, consumer_overrides={"fetch.wait.max.ms": config.fetch_wait_ms}
            )
            stats = _run_detector(detector, soak, go, parent, config, load.pid)
            del detector  # its clients hold reference cycles: collected now, while the broker is up
            gc.collect()
            finished.set()
            report = _final_report(parent)
        finally:
            finished.set()
            load.join(10)
            if load.is_alive():
                load.terminate()
                load.join()
        # Every event of both topics (a partition that got no event has nothing to commit).
        end = {(names["events"], p): o for p, o in backlog_end.items()}
        end.update({(names["live"], p): o for p, o in report.end_offsets.items()})
        committed = _committed(broker.bootstrap, group, sorted(end))
        progress(f"F={n_features}: warm start")
        with _settled():
            warm_events, warm_s = _warm_start(
                settings, scorer, names["events"], sorted(backlog_end), config.fetch_wait_ms
            )

    lat = np.asarray(report.latencies_ms, dtype=np.float64)
    drain_events = soak.backlog
    drain = _sustained_rate(soak.drain_progress, drain_events) if soak.drain_progress else 0.0
    stages_drain = soak.drain_stages or {}
    live = soak.live_stages or {}
    return {
        "produce_events_per_s": round(produce_rate),
        "raw_consume_events_per_s": round(raw_rate),
        "end_to_end_events_per_s": round(drain),
        "end_to_end_to_raw_consume": round(drain / raw_rate, 3) if raw_rate else None,
        "end_to_end_whole_drain_events_per_s": round(drain_events / soak.drain_s)
        if soak.drain_s
        else None,
        "stages_us_per_event": {
            s: round(stages_drain[s] / drain_events * 1e6, 4) for s in STAGES if s in stages_drain
        },
        "live_stages_us_per_event": {
            s: round(live[s] / max(1, soak.live_events) * 1e6, 4) for s in STAGES if s in live
        },
        "offered_events_per_s": config.rate,
        "achieved_events_per_s": round(report.sent / report.send_s) if report.send_s else 0,
        "soak_s": config.seconds,
        "soak_partitions": config.soak_partitions,
        "latency_samples": int(lat.size),
        "p50_ms": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
        "max_ms": round(float(lat.max()), 2) if lat.size else None,
        "detect_p50_ms": _pct(report.detect_ms, 50),
        "detect_p99_ms": _pct(report.detect_ms, 99),
        "alerts_read": report.alerts,
        "events_total": stats.events,
        "committed_equals_end_offsets": committed == end,
        "warm_start_events": warm_events,
        "warm_start_s": round(warm_s, 4),
        "warm_start_events_per_s": round(warm_events / warm_s) if warm_s > 0 else None,
        "soak_cpu_percent": soak.cpu_percent,
        **_by_quarter(soak, report, config.seconds),
        "rss_start_mb": round(soak.rss_start_mb, 1),
        "rss_end_mb": round(soak.rss_end_mb, 1),
        "rss_max_during_soak_mb": round(soak.rss_max_mb, 1),
        "errors": [*report.errors, *([soak.error] if soak.error else [])],
    }


def _warm_start(
    settings: Any, scorer: Scorer, topic: str, partitions: list[int], fetch_wait_ms: int
) -> tuple[int, float]:
    """A second detector of the group, given the drained backlog's partitions (their ends
    committed): the records it reads again into its state first (streamer.warmstart, at most
    ``kafka.warm_start_events`` a partition) and the seconds that took."""
    from confluent_kafka import TopicPartition

    from streamer.runner import Detector

    detector = Detector(settings, scorer, consumer_overrides={"fetch.wait.max.ms": fetch_wait_ms})
    try:
        started = time.perf_counter()
        detector.warm_up([TopicPartition(topic, p) for p in partitions])
        return detector.stats.warm_events, time.perf_counter() - started
    finally:
        detector.consumer.close()
        detector.metrics.close()
        del detector
        gc.collect()


def _by_quarter(soak: _Soak, report: Any, seconds: float) -> dict[str, Any]:
    """p99 latency and the broker's CPU in each quarter of the soak (by the events' send time).

    A tail that grows from quarter to quarter is a cost that grows with the run: in the embedded
    broker, each fetch lists every batch stored in the partition, so its CPU per fetch grows with the
    log (Kafka finds the offset in an index instead).
    """
    start, quarter = soak.start_wall_s, seconds / 4
    sent = np.asarray(report.sent_s, dtype=np.float64)
    lat = np.asarray(report.latencies_ms, dtype=np.float64)
    detect = np.asarray(report.detect_ms, dtype=np.float64)  # the same samples, to detected_at
    p99: list[float | None] = []
    detect_p99: list[float | None] = []
    broker: list[float | None] = []
    samples = [(t, c["broker"]) for t, c in soak.cpu_samples if "broker" in c]
    for i in range(4):
        lo, hi = start + i * quarter, start + (i + 1) * quarter
        inside_quarter = (sent >= lo) & (sent < hi)
        p99.append(_pct(lat[inside_quarter].tolist(), 99) if lat.size else None)
        detect_p99.append(_pct(detect[inside_quarter].tolist(), 99) if detect.size else None)
        inside = [(t, c) for t, c in samples if lo <= t <= hi]
        if len(inside) < 2 and samples:  # a short soak (--quick): the samples around the quarter
            before = [s for s in samples if s[0] <= lo]
            after = [s for s in samples if s[0] >= hi]
            inside = [before[-1] if before else samples[0], after[0] if after else samples[-1]]
        if len(inside) >= 2 and inside[-1][0] > inside[0][0]:
            (t0, c0), (t1, c1) = inside[0], inside[-1]
            broker.append(round((c1 - c0) / (t1 - t0) * 100, 1))
        else:
            broker.append(None)
    return {
        "p99_ms_by_quarter": p99,
        "detect_p99_ms_by_quarter": detect_p99,
        "broker_cpu_percent_by_quarter": broker,
    }


def _pct(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if len(values) else None


def _final_report(parent: Any) -> Any:
    """The load generator's closing report (a send report the watcher did not take may come first)."""
    deadline = time.monotonic() + 60
    while parent.poll(max(0.0, deadline - time.monotonic())):
        message = parent.recv()
        if message[0] == "done":
            return message[1]
    raise StreamerError("the load generator sent no report")


class _CpuMeter:
    """CPU time of the detector (this process), the broker and the load generator since creation."""

    def __init__(self, load_pid: int | None) -> None:
        import psutil

        me = psutil.Process()
        self._procs = {"detector": me}
        brokers = [p for p in me.children() if "tansu" in p.name()]
        if brokers:
            self._procs["broker"] = brokers[0]
        if load_pid is not None:
            self._procs["load_generator"] = psutil.Process(load_pid)
        self._start = time.monotonic()
        self._cpu = {k: self._total(p) for k, p in self._procs.items()}

    @staticmethod
    def _total(proc: Any) -> float:
        t = proc.cpu_times()
        return float(t.user + t.system)

    def totals(self) -> dict[str, float]:
        """CPU seconds per process since creation."""
        return {k: self._total(p) - self._cpu[k] for k, p in self._procs.items()}

    def read(self) -> dict[str, float]:
        """Percent of one core per process since creation."""
        wall = max(1e-9, time.monotonic() - self._start)
        return {
            k: round((self._total(p) - self._cpu[k]) / wall * 100, 1)
            for k, p in self._procs.items()
        }


def _run_detector(
    detector: Any, soak: _Soak, go: Any, parent: Any, config: BenchConfig, load_pid: int | None
) -> RunStats:
    """Run the detector in this thread; a watcher thread ends the soak once every sent event is in."""
    assert soak.started is not None
    done = threading.Event()

    def on_batch(stats: RunStats) -> None:
        if soak.drain_stages is None:
            soak.drain_progress.append((time.perf_counter(), stats.events))
        if soak.drain_stages is None and stats.events >= soak.backlog:
            soak.drain_s = stats.active_s
            soak.drain_stages = dict(stats.stage_s)
            soak.rss_start_mb = soak.rss_max_mb = _rss_mb()
            soak.start_wall_s = time.time()
            assert soak.started is not None
            soak.started.set()
            go.set()

    def watch() -> None:
        assert soak.started is not None
        while not soak.started.wait(0.1):
            if done.is_set():
                return
        cpu = _CpuMeter(load_pid)
        deadline = time.monotonic() + config.seconds + 120
        target: int | None = None
        next_sample = 0.0
        while not done.is_set():
            soak.rss_max_mb = max(soak.rss_max_mb, _rss_mb())
            if time.monotonic() >= next_sample:
                soak.cpu_samples.append((time.time(), cpu.totals()))
                next_sample = time.monotonic() + 0.5
            if target is None and parent.poll(0):
                _, sent, _, _, errors = parent.recv()
                target = soak.backlog + sent
                if errors:
                    soak.error = f"load generator: {errors[:3]}"
            stats = detector.stats
            if target is not None and stats.events >= target:
                soak.cpu_percent = cpu.read()
                soak.rss_end_mb = _rss_mb()
                soak.live_events = stats.events - soak.backlog
                soak.live_stages = {
                    k: v - (soak.drain_stages or {}).get(k, 0.0) for k, v in stats.stage_s.items()
                }
                detector.stop()
                return
            if time.monotonic() > deadline:
                soak.error = f"soak did not finish: {stats.events} of {target} events processed"
                detector.stop()
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        return detector.run(on_batch=on_batch)
    finally:
        done.set()
        watcher.join()


# -------------------------------------------------------------------------------------------- GPU


GPU_MODES = {
    "fp32": ("fp32", False),
    "fp32_graph": ("fp32", True),
    "fp16": ("fp16", False),
    "fp16_graph": ("fp16", True),
}


def measure_gpu(
    workload: Workload, config: BenchConfig, batches: Sequence[int] = GPU_BATCHES
) -> dict[str, Any]:
    """Per model kind and batch size: ``Scorer.score`` throughput on the GPU in each mode (fp32 or fp16,
    eager or CUDA graph; raw numpy in, numpy out), the host-to-device copy's share of the fp32 time
    (pageable and pinned), and the bare forward pass on a batch already on the device (the scoring
    stage alone)."""

    out: dict[str, Any] = {}
    rng = np.random.default_rng(config.seed)
    for kind in KINDS:
        scorers = {
            mode: make_scorer(
                kind,
                workload,
                device="cuda",
                seed=config.seed,
                train_rows=config.train_rows,
                precision=precision,
                cuda_graph=graph,
            )
            for mode, (precision, graph) in GPU_MODES.items()
        }
        rows: dict[str, Any] = {}
        for b in batches:
            idx = rng.integers(0, len(workload.normal), b)
            x = workload.normal[idx]  # (B, F)
            if scorers["fp32"].window > 1:
                x = np.repeat(x[:, None, :], scorers["fp32"].window, axis=1)  # (B, W, F)
            # a GPU call takes micro- to milliseconds: a quarter of pass_s is thousands of calls
            x = np.ascontiguousarray(x, dtype=np.float32)
            rows[str(b)] = _gpu_row(scorers, x, config.pass_s / 4)
        out[kind] = rows
    return out


def _cuda_ms(fn: Callable[[], Any], min_s: float) -> float:
    """Mean milliseconds per call of ``fn``, synchronised, repeated for at least ``min_s``."""
    import torch

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        if n % 8 == 0:
            torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            if elapsed >= min_s:
                return elapsed / n * 1000


def _gpu_row(scorers: dict[str, Scorer], x: np.ndarray, min_s: float) -> dict[str, Any]:
    import torch

    b = len(x)
    base = scorers["fp32"]
    device = base.device
    row: dict[str, Any] = {}
    score_ms: dict[str, float] = {}
    for mode, scorer in scorers.items():
        score_ms[mode] = _cuda_ms(partial(scorer.score, x), min_s)
        row[f"score_{mode}_events_per_s"] = round(b / score_ms[mode] * 1000)
        options = scorer.gpu_options or {}
        if options.get("graph_error"):
            row[f"score_{mode}_graph_error"] = options["graph_error"]
    host = torch.from_numpy(x)
    pinned = host.pin_memory()
    pageable_ms = _cuda_ms(lambda: host.to(device), min_s / 2)
    pinned_ms = _cuda_ms(lambda: pinned.to(device, non_blocking=True), min_s / 2)
    row["h2d_share_pageable"] = round(pageable_ms / score_ms["fp32"], 3)
    row["h2d_share_pinned"] = round(pinned_ms / score_ms["fp32"], 3)
    scaler = base.scaler
    center = torch.from_numpy(scaler.center).to(device)
    scale = torch.from_numpy(scaler.scale).to(device)
    with torch.inference_mode():
        xs = ((pinned.to(device) - center) / scale).clamp_(-scaler.clip, scaler.clip)
        row["forward_fp32_events_per_s"] = round(
            b / _cuda_ms(lambda: base.model.anomaly_score(xs), min_s / 2) * 1000
        )
    return row


# ------------------------------------------------------------------------------------------ driver


def run_bench(
    config: BenchConfig, progress: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Every figure for every feature count; the headline keys describe the first feature count."""
    import torch

    from streamer.config import BatchSettings
    from streamer.logs import configure_logging

    if config.device == "cuda" and not torch.cuda.is_available():
        raise StreamerError(
            f"--device cuda: torch {torch.__version__} sees no CUDA device "
            f"(built with CUDA: {torch.version.cuda or 'no'}); run with --device cpu"
        )
    configure_logging("WARNING")
    torch.set_num_threads(config.threads)
    batch_events = config.batch_events or BatchSettings().max_events
    result: dict[str, Any] = {"machine": machine(), "config": asdict(config), "by_features": {}}
    for n_features in config.features:
        progress(f"F={n_features}: generating {config.events} events and {len(KINDS)} models")
        workload = make_workload(config.events, n_features, seed=config.seed)
        scorers = {
            k: make_scorer(
                k,
                workload,
                device=config.device,
                seed=config.seed,
                train_rows=config.train_rows,
                precision=config.precision,
                cuda_graph=config.cuda_graph,
            )
            for k in KINDS
        }
        progress(f"F={n_features}: in-process figures")
        figures: dict[str, Any] = {
            "in_process": measure_in_process(workload, scorers, config, batch_events)
        }
        figures["hst"] = measure_hst(workload, config)
        if config.broker:
            figures["broker"] = measure_broker(workload, scorers[config.model], config, progress)
        if config.device == "cuda":
            progress(f"F={n_features}: GPU scoring per model and batch size")
            figures["gpu"] = measure_gpu(workload, config)
        result["by_features"][str(n_features)] = figures
    result.update(_headline(result["by_features"][str(config.features[0])], config))
    result["rss_peak_mb"] = round(_peak_rss_mb(), 1)
    result["machine"]["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    return result


def _headline(figures: dict[str, Any], config: BenchConfig) -> dict[str, Any]:
    ip, hst = figures["in_process"], figures["hst"]
    broker = figures.get("broker", {})
    pipeline = ip["pipeline_events_per_s"][config.model]
    return {
        "decode_only_events_per_s": ip["decode_only_events_per_s"],
        "pipeline_events_per_s": pipeline,
        "pipeline_to_decode_only": ip["pipeline_to_decode_only"],
        "hst_events_per_s": hst["hst_events_per_s"],
        "hst_model_only_events_per_s": hst["hst_model_only_events_per_s"],
        "hst_forest_events_per_s": hst["hst_forest_events_per_s"],
        "pipeline_to_hst": round(pipeline / hst["hst_events_per_s"], 1),
        "pipeline_to_hst_model_only": round(pipeline / hst["hst_model_only_events_per_s"], 1),
        "raw_consume_events_per_s": broker.get("raw_consume_events_per_s"),
        "end_to_end_events_per_s": broker.get("end_to_end_events_per_s"),
        "p50_ms": broker.get("p50_ms"),
        "p99_ms": broker.get("p99_ms"),
        "max_ms": broker.get("max_ms"),
        "rss_start_mb": broker.get("rss_start_mb"),
        "rss_end_mb": broker.get("rss_end_mb"),
    }


# ------------------------------------------------------------------------------------------ report


def _k(rate: float | None) -> str:
    return "-" if rate is None else f"{rate / 1000:,.1f} k/s"


def format_report(result: dict[str, Any]) -> str:
    """A Markdown report: one table per feature count, each figure beside its ceiling."""
    m, c = result["machine"], result["config"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, load average {m['load_avg_1m']} -> "
        f"{m.get('load_avg_1m_end', '?')}; Python {m['python']}, torch {m['torch']} "
        f"({c['threads']} intra-op thread(s)); GPU: {m['gpu'] or 'none'}. Model: {c['model']}, "
        f"device {c['device']}. Threshold window: "
        f"{'default' if c.get('threshold_window') is None else c['threshold_window']}, alert "
        f"cooldown: {_cooldown_text(c.get('alert_cooldown_s'))}, "
        f"rise gate z: {'default' if c.get('gate_z') is None else c['gate_z']}.",
        "",
    ]
    for f, fig in result["by_features"].items():
        ip, hst, b = fig["in_process"], fig["hst"], fig.get("broker")
        decode = ip["decode_only_events_per_s"]
        pipe = ip["pipeline_events_per_s"]
        main = pipe[c["model"]]
        lines += [
            f"**F = {f} features** (batches of {ip['batch_events']} events)",
            "",
            "| figure | measured | ceiling / reference | ratio |",
            "| --- | --- | --- | --- |",
            f"| decode only (bytes to float matrix) | {_k(decode)} | - | - |",
            f"| pipeline in process, {c['model']} | {_k(main)} | decode only {_k(decode)} | "
            f"{ip['pipeline_to_decode_only']:.2f} |",
        ]
        for kind, rate in pipe.items():
            if kind != c["model"]:
                lines.append(
                    f"| pipeline in process, {kind} | {_k(rate)} | dense {_k(pipe.get('dense'))} | "
                    f"{ip['per_model_to_dense'].get(kind, 0):.2f} |"
                )
        lines += [
            f"| River HalfSpaceTrees from the same bytes (decode, scale, score, learn) | "
            f"{_k(hst['hst_events_per_s'])} | pipeline {_k(main)} | "
            f"pipeline is {main / hst['hst_events_per_s']:.1f}x |",
            f"| River HalfSpaceTrees alone (score, learn on ready dicts) | "
            f"{_k(hst['hst_model_only_events_per_s'])} | pipeline {_k(main)} | "
            f"pipeline is {main / hst['hst_model_only_events_per_s']:.1f}x |",
            f"| the same trees as arrays (models.hst, batches of {FOREST_BATCH:,}) | "
            f"{_k(hst['hst_forest_events_per_s'])} | river alone "
            f"{_k(hst['hst_model_only_events_per_s'])} | "
            f"{hst['hst_forest_events_per_s'] / hst['hst_model_only_events_per_s']:.1f}x river |",
        ]
        if b:
            lines += [
                f"| produce to the embedded broker | {_k(b['produce_events_per_s'])} | - | - |",
                f"| raw consume (no processing) | {_k(b['raw_consume_events_per_s'])} | - | - |",
                f"| end to end: consume, pipeline, alerts acked, offsets committed | "
                f"{_k(b['end_to_end_events_per_s'])} | raw consume {_k(b['raw_consume_events_per_s'])} | "
                f"{b['end_to_end_to_raw_consume']} |",
                f"| event -> alert latency p50 / p99 / max at {b['offered_events_per_s'] / 1000:g} k/s "
                f"offered, {b['soak_partitions']} partition(s) ({b['latency_samples']} alerts) | "
                f"{b['p50_ms']} / {b['p99_ms']} / "
                f"{b['max_ms']} ms | - | - |",
                "| p99 latency by quarter of the soak (to detected_at; broker CPU, % of a core) | "
                + " / ".join(
                    f"{p} ms ({d} ms; {'-' if c is None else f'{c} %'})"
                    for p, d, c in zip(
                        b.get("p99_ms_by_quarter", []),
                        b.get("detect_p99_ms_by_quarter", []),
                        b.get("broker_cpu_percent_by_quarter", []),
                        strict=False,
                    )
                )
                + " | - | - |",
                f"| warm start: {b['warm_start_events']} records read again into a new "
                f"detector's state ({b['warm_start_s']} s) | "
                f"{_k(b['warm_start_events_per_s'])} | end to end "
                f"{_k(b['end_to_end_events_per_s'])} | - |",
                f"| RSS at soak start / end / max ({b['soak_s']:g} s) | {b['rss_start_mb']} / "
                f"{b['rss_end_mb']} / {b['rss_max_during_soak_mb']} MB | - | - |",
            ]
        lines.append("")
        lines.append("Time per stage, microseconds per event:")
        lines.append("")
        header = "| where | " + " | ".join(STAGES) + " |"
        lines += [header, "|" + " --- |" * (len(STAGES) + 1)]
        for kind, stages in ip["stages_us_per_event"].items():
            lines.append(
                f"| in process, {kind} | "
                + " | ".join(str(stages.get(s, "-")) for s in STAGES)
                + " |"
            )
        if b:
            for label, stages in (
                ("broker drain", b["stages_us_per_event"]),
                ("broker soak", b["live_stages_us_per_event"]),
            ):
                lines.append(
                    f"| {label}, {c['model']} | "
                    + " | ".join(str(stages.get(s, "-")) for s in STAGES)
                    + " |"
                )
        if "pipeline_events_per_s_by_torch_threads" in ip:
            lines += [
                "",
                "Pipeline by torch intra-op threads: "
                + ", ".join(
                    f"{n}: {_k(r)}" for n, r in ip["pipeline_events_per_s_by_torch_threads"].items()
                ),
            ]
        if "gpu" in fig:
            lines += [
                "",
                "GPU scoring, Scorer.score from numpy to numpy (events/s; h2d = host-to-device copy"
                " / fp32 score time; fwd = bare fp32 forward on a batch already on the GPU):",
                "",
            ]
            lines += [
                "| model | batch | fp32 | fp32 graph | fp16 | fp16 graph | h2d pageable | h2d pinned | fwd |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            ]
            for kind, rows in fig["gpu"].items():
                for batch, r in rows.items():
                    modes = " | ".join(_k(r.get(f"score_{m}_events_per_s")) for m in GPU_MODES)
                    lines.append(
                        f"| {kind} | {batch} | {modes} | {r['h2d_share_pageable']} | "
                        f"{r['h2d_share_pinned']} | {_k(r['forward_fp32_events_per_s'])} |"
                    )
        if b and b["errors"]:
            lines += ["", f"Errors: {b['errors']}"]
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- CLI


def _int_list(value: str) -> tuple[int, ...]:
    try:
        items = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {value!r}"
        ) from None
    if not items:
        raise argparse.ArgumentTypeError("expected at least one feature count")
    return items


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``streamer bench`` to the CLI's subcommands."""
    p = sub.add_parser("bench", help="measure throughput, latency and memory, side by side")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--precision",
        choices=["fp32", "fp16"],
        default=None,
        help="GPU forward pass (default fp32)",
    )
    p.add_argument(
        "--no-cuda-graph",
        dest="cuda_graph",
        action="store_false",
        default=None,
        help="GPU: run the forward pass eagerly instead of replaying captured CUDA graphs",
    )
    p.add_argument(
        "--model", choices=list(KINDS), default="dense", help="model for the headline figures"
    )
    p.add_argument(
        "--features",
        type=_int_list,
        default=None,
        help="feature counts, comma-separated (default 16,38)",
    )
    p.add_argument(
        "--seconds", type=float, default=None, help="soak length at the offered rate (default 20)"
    )
    p.add_argument(
        "--rate", type=float, default=None, help="offered events/s in the soak (default 20000)"
    )
    p.add_argument(
        "--soak-partitions",
        type=positive_int,
        default=None,
        help="partitions of the soak's topic (default 1; the backlog's topic has 3)",
    )
    p.add_argument(
        "--events",
        type=int,
        default=None,
        help="generated events per feature count (default 200000)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="interleaved rounds of in-process figures (default 3)",
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="events per micro-batch (default: run's)"
    )
    p.add_argument("--max-wait-ms", type=int, default=None, help="batch wait (default: run's)")
    p.add_argument(
        "--fetch-wait-ms",
        type=int,
        default=None,
        help="fetch.wait.max.ms of the consumers on the embedded broker (default 10)",
    )
    p.add_argument(
        "--threshold-window",
        type=int,
        default=None,
        help="threshold.window (default: run's; 0 = all history)",
    )
    p.add_argument(
        "--alert-cooldown-s",
        type=cooldown_arg,
        default=None,
        help="events.alert_cooldown_s: auto or seconds (default: run's)",
    )
    p.add_argument(
        "--gate-z",
        type=gate_z_arg,
        default=None,
        help="events.alert_gate_z, the rise gate: auto, or a z (default: run's, auto; 0 = off)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default 1)")
    p.add_argument("--no-broker", action="store_true", help="in-process figures only")
    p.add_argument(
        "--quick", action="store_true", help="a smoke run: small and short, every figure"
    )
    p.add_argument("--seed", type=seed, default=0)
    p.set_defaults(func=cmd_bench)


def config_from(args: argparse.Namespace) -> BenchConfig:
    given = {
        "device": args.device,
        "precision": args.precision,
        "cuda_graph": args.cuda_graph,
        "model": args.model,
        "features": args.features,
        "seconds": args.seconds,
        "rate": args.rate,
        "soak_partitions": args.soak_partitions,
        "events": args.events,
        "rounds": args.rounds,
        "batch_events": args.batch_size,
        "max_wait_ms": args.max_wait_ms,
        "fetch_wait_ms": args.fetch_wait_ms,
        "threshold_window": args.threshold_window,
        "alert_cooldown_s": args.alert_cooldown_s,
        "gate_z": args.gate_z,
        "threads": args.threads,
        "broker": not args.no_broker,
        "seed": args.seed,
    }
    given = {k: v for k, v in given.items() if v is not None}
    return BenchConfig.quick(**given) if args.quick else BenchConfig(**given)


def cmd_bench(args: argparse.Namespace) -> int:
    config = config_from(args)

    def progress(text: str) -> None:
        print(f"[bench] {text}", file=sys.stderr, flush=True)

    result = run_bench(config, progress)
    if args.json:
        print(orjson.dumps(result, option=orjson.OPT_NON_STR_KEYS).decode())
    else:
        print(format_report(result))
    return 0
