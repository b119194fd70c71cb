"""A labelled multi-sensor stream for demos, tests and benchmarks.

Each entity (a machine with one sensor box, key ``sensor-03``) is driven by a latent *load* with a
daily rhythm. Current, rpm and vibration follow the load, temperature follows it with a lag,
pressure follows temperature and voltage sags a little under load; every channel carries small
AR(1) noise. Normal readings therefore lie close to a two-dimensional manifold (load, lagged load)
that an autoencoder can learn, and every injected anomaly moves at least one channel well off it.

Anomaly kinds and magnitudes, in units of a channel's daily swing ``s`` (its peak-to-peak range
under the nominal load cycle; the noise standard deviation is ``noise * s``):

- ``spike``: one event, one or two channels moved by 0.8-1.2 ``s``.
- ``level_shift``: 10-30 events of one entity, one channel shifted by 0.7-1.0 ``s``.
- ``drift``: 15-30 events, one channel ramping from 60% of 0.8-1.1 ``s`` to all of it within the
  first 30% of the span, then holding.
- ``stuck``: 10-30 events, one channel frozen (no noise) at a latched reading 0.4-0.6 ``s``
  outside the entity's normal range while the other channels keep moving.
- ``broken_correlation``: 10-30 events, one channel mirrored around its centre (it falls when its
  partners rise) and pushed a further 0.35-0.5 ``s`` away.

A channel's marginal standard deviation is about 0.3 ``s``, so shifts are 2-4 sigma of the
channel's own spread and far more off the joint manifold: every labelled point sits at least
~0.35 ``s`` (about 12 noise sigmas at the default noise) from where the normal process would have
put it. Anomalies are planned up front: their labelled events add up to ``anomaly_rate`` of the
events after ``normal_prefix``, kinds are cycled so each appears once five anomalies fit, and per
entity they never overlap and are separated by at least 20 normal events.

Malformed messages (label 0, ``malformed=True``, kind ``malformed:<reason>``) replace well-formed
ones at ``malformed_rate``; they take a ``seq`` and a timestamp slot but no step of any entity.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson

from streamer.errors import DeliveryError

__all__ = [
    "ANOMALY_KINDS",
    "DEFAULT_FEATURES",
    "MALFORMED_KINDS",
    "ProduceReport",
    "SimConfig",
    "SimEvent",
    "generate",
    "normal_frame",
    "produce",
]

DEFAULT_FEATURES: tuple[str, ...] = (
    "temperature",
    "pressure",
    "vibration",
    "current",
    "voltage",
    "rpm",
)
ANOMALY_KINDS: tuple[str, ...] = ("spike", "level_shift", "drift", "stuck", "broken_correlation")
MALFORMED_KINDS: tuple[str, ...] = (
    "invalid_json",
    "invalid_utf8",
    "not_object",
    "missing_feature",
    "non_numeric",
    "null_value",
    "nan",
    "infinity",
)
OVERSIZE_KIND = "oversize"

# Span lengths (events of one entity) per anomaly kind, inclusive bounds.
_SPAN: dict[str, tuple[int, int]] = {
    "spike": (1, 1),
    "level_shift": (10, 30),
    "drift": (15, 30),
    "stuck": (10, 30),
    "broken_correlation": (10, 30),
}
_GAP = 20  # normal events of an entity between two of its anomalies, so windows stay apart
_NOISE_PHI = 0.6  # AR(1) coefficient of the measurement noise
_LOAD_PHI = 0.98  # AR(1) coefficient of the slow load wander
_LOAD_WANDER = 0.03  # stationary std of that wander, in load units


@dataclass(frozen=True)
class _Channel:
    """How one channel responds: value = offset + gain_load * load + gain_lag * lagged load."""

    offset: float
    gain_load: float
    gain_lag: float
    decimals: int


# Load and lagged load both range over roughly [0.2, 0.9]; the nominal daily swing is 0.6.
_CHANNELS: dict[str, _Channel] = {
    "temperature": _Channel(offset=45.0, gain_load=0.0, gain_lag=30.0, decimals=3),
    "pressure": _Channel(offset=2.0, gain_load=0.0, gain_lag=0.9, decimals=4),
    "vibration": _Channel(offset=1.25, gain_load=2.5, gain_lag=0.0, decimals=4),
    "current": _Channel(offset=6.0, gain_load=14.0, gain_lag=0.0, decimals=3),
    "voltage": _Channel(offset=231.0, gain_load=-6.0, gain_lag=0.0, decimals=3),
    "rpm": _Channel(offset=810.0, gain_load=990.0, gain_lag=0.0, decimals=2),
}
_SWING = 0.6  # nominal peak-to-peak of the load cycle


@dataclass(frozen=True)
class SimConfig:
    """Shape of the simulated plant and of what goes wrong in it.

    ``anomaly_rate`` is the fraction of the events after ``normal_prefix`` that carry label 1;
    ``period`` is the number of events per entity in one "day"; ``noise`` is the noise standard
    deviation as a fraction of each channel's daily swing; ``oversize_bytes`` adds an
    ``oversize`` malformed kind whose messages exceed that many bytes.
    """

    entities: int = 8
    features: tuple[str, ...] = DEFAULT_FEATURES
    anomaly_rate: float = 0.01
    malformed_rate: float = 0.0
    seed: int = 0
    period: int = 288
    noise: float = 0.03
    normal_prefix: int = 0
    oversize_bytes: int | None = None
    interval_ms: int = 300_000
    start: str = "2024-01-01T00:00:00Z"
    key_field: str = "sensor_id"
    time_field: str = "ts"

    def __post_init__(self) -> None:
        if not 1 <= self.entities <= 10_000:
            raise ValueError(f"entities must be in [1, 10000], got {self.entities}")
        if isinstance(self.features, str) or not isinstance(self.features, Sequence):
            raise ValueError("features must be a sequence of channel names")
        object.__setattr__(self, "features", tuple(self.features))
        unknown = [f for f in self.features if f not in _CHANNELS]
        if unknown:
            raise ValueError(f"unknown features {unknown}; known: {sorted(_CHANNELS)}")
        if len(self.features) < 2 or len(set(self.features)) != len(self.features):
            raise ValueError("features must name at least two distinct channels")
        if not 0.0 <= self.anomaly_rate < 0.5:
            raise ValueError(f"anomaly_rate must be in [0, 0.5), got {self.anomaly_rate}")
        if not 0.0 <= self.malformed_rate < 1.0:
            raise ValueError(f"malformed_rate must be in [0, 1), got {self.malformed_rate}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.period < 4:
            raise ValueError(f"period must be >= 4, got {self.period}")
        if not 0.0 <= self.noise <= 0.5:
            raise ValueError(f"noise must be in [0, 0.5], got {self.noise}")
        if self.normal_prefix < 0:
            raise ValueError(f"normal_prefix must be >= 0, got {self.normal_prefix}")
        if self.oversize_bytes is not None and self.oversize_bytes < 1:
            raise ValueError(f"oversize_bytes must be >= 1, got {self.oversize_bytes}")
        if self.interval_ms < 1:
            raise ValueError(f"interval_ms must be >= 1, got {self.interval_ms}")
        if not self.key_field or not self.time_field or self.key_field == self.time_field:
            raise ValueError("key_field and time_field must be distinct non-empty names")
        if {self.key_field, self.time_field, "seq"} & set(self.features):
            raise ValueError("key_field, time_field and 'seq' must not be feature names")
        _parse_start(self.start)

    @property
    def malformed_kinds(self) -> tuple[str, ...]:
        """The malformed reasons this configuration can emit."""
        return (*MALFORMED_KINDS, OVERSIZE_KIND) if self.oversize_bytes else MALFORMED_KINDS

    def entity_key(self, entity: int) -> str:
        """Kafka key (and ``key_field`` value) of an entity, e.g. ``sensor-03``."""
        width = max(2, len(str(self.entities - 1)))
        return f"sensor-{entity:0{width}d}"


@dataclass(frozen=True, slots=True)
class SimEvent:
    """One message of the stream with its ground truth."""

    key: str
    value: bytes
    label: int  # 1 anomalous, 0 normal (malformed messages are 0)
    kind: str  # "normal", an ANOMALY_KINDS entry, or "malformed:<reason>"
    seq: int
    malformed: bool


@dataclass(frozen=True)
class ProduceReport:
    """What :func:`produce` delivered: message count, per-partition end offsets, wall time, and how
    many of the messages sent carry label 1."""

    count: int
    end_offsets: dict[int, int]
    elapsed_s: float
    labelled: int = 0


def _parse_start(start: str) -> int:
    """Epoch milliseconds of an ISO-8601 start time (naive means UTC)."""
    try:
        dt = datetime.fromisoformat(start.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"start must be an ISO-8601 time, got {start!r}") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# --------------------------------------------------------------------------------------- process


@dataclass
class _Plant:
    """Per-entity constants, drawn from the config's seed so every stream of a config shares them."""

    base: np.ndarray  # (E,) mean load
    amp: np.ndarray  # (E,) half the daily load swing
    phase: np.ndarray  # (E,) phase of the daily cycle, radians
    offset: np.ndarray  # (E, F) channel offsets, calibration error included
    gain_load: np.ndarray  # (F,)
    gain_lag: np.ndarray  # (F,)
    swing: np.ndarray  # (F,) nominal daily swing s of each channel
    lo: np.ndarray  # (E, F) lowest normal value (noise-free) of each channel
    hi: np.ndarray  # (E, F) highest
    centre: np.ndarray  # (E, F) value at mean load


def _plant(config: SimConfig, rng: np.random.Generator) -> _Plant:
    e, feats = config.entities, config.features
    gain_load = np.array([_CHANNELS[f].gain_load for f in feats])
    gain_lag = np.array([_CHANNELS[f].gain_lag for f in feats])
    swing = np.abs(gain_load + gain_lag) * _SWING
    base = rng.uniform(0.48, 0.6, e)
    amp = rng.uniform(0.22, 0.3, e)
    phase = rng.uniform(0.0, 2 * np.pi, e)
    calib = rng.normal(0.0, 0.02, (e, len(feats))) * swing
    offset = np.array([_CHANNELS[f].offset for f in feats])[None, :] + calib
    low_load = base - amp - 2.5 * _LOAD_WANDER
    high_load = base + amp + 2.5 * _LOAD_WANDER
    gain = gain_load + gain_lag
    a = offset + np.outer(low_load, gain)
    b = offset + np.outer(high_load, gain)
    return _Plant(
        base=base,
        amp=amp,
        phase=phase,
        offset=offset,
        gain_load=gain_load,
        gain_lag=gain_lag,
        swing=swing,
        lo=np.minimum(a, b),
        hi=np.maximum(a, b),
        centre=offset + np.outer(base, gain),
    )


class _Process:
    """Normal readings of all entities, produced in chunks of rounds (one event per entity)."""

    def __init__(self, config: SimConfig, plant: _Plant, rng: np.random.Generator) -> None:
        self.config = config
        self.plant = plant
        self.rng = rng
        e, f = config.entities, len(config.features)
        self.step = 0
        self.wander = rng.normal(0.0, _LOAD_WANDER, e)
        self.noise = rng.normal(0.0, 1.0, (e, f))
        self.alpha = min(1.0, 8.0 / config.period)  # temperature lags load by ~1/8 of a day
        self.lagged = self._cycle(np.zeros(1))[0] + self.wander

    def _cycle(self, steps: np.ndarray) -> np.ndarray:
        p = self.plant
        angle = 2 * np.pi * steps[:, None] / self.config.period + p.phase[None, :]
        return p.base[None, :] + p.amp[None, :] * np.sin(angle)  # (R, E)

    def chunk(self, rounds: int) -> np.ndarray:
        """Next ``rounds`` rounds of noisy readings, shape (R, E, F), float64."""
        e, f = self.config.entities, len(self.config.features)
        p = self.plant
        cycle = self._cycle(np.arange(self.step, self.step + rounds, dtype=np.float64))
        wander_innov = self.rng.normal(0.0, _LOAD_WANDER * math.sqrt(1 - _LOAD_PHI**2), (rounds, e))
        noise_innov = self.rng.normal(0.0, math.sqrt(1 - _NOISE_PHI**2), (rounds, e, f))
        out = np.empty((rounds, e, f))
        scale = self.config.noise * p.swing
        for r in range(rounds):
            self.wander = _LOAD_PHI * self.wander + wander_innov[r]
            load = cycle[r] + self.wander
            self.lagged = self.lagged + self.alpha * (load - self.lagged)
            self.noise = _NOISE_PHI * self.noise + noise_innov[r]
            out[r] = (
                p.offset
                + load[:, None] * p.gain_load[None, :]
                + self.lagged[:, None] * p.gain_lag[None, :]
                + self.noise * scale[None, :]
            )
        self.step += rounds
        return out


def _streams(seed: int) -> list[np.random.Generator]:
    # 0 plant, 1 stream dynamics, 2 anomaly schedule, 3 anomaly details, 4 malformed, 5 training,
    # 6 entity order: apart, so a stream with anomalies differs from its anomaly-free twin only
    # on labelled events
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(7)]


# -------------------------------------------------------------------------------------- anomalies


@dataclass
class _Anomaly:
    kind: str
    entity: int
    start: int  # entity step of the first labelled event
    length: int
    channels: tuple[int, ...] = ()
    values: tuple[float, ...] = ()  # per channel: magnitude (signed) or latched value
    extra: dict[str, float] = field(default_factory=dict)


def _plan(
    config: SimConfig, rounds: int, rng: np.random.Generator, detail: np.random.Generator
) -> dict[int, list[_Anomaly]]:
    """Anomalies per entity, sorted by start, covering ~anomaly_rate of the post-prefix events."""
    first = math.ceil(config.normal_prefix / config.entities)
    avail = rounds - first
    if config.anomaly_rate == 0 or avail <= 0:
        return {}
    target = config.anomaly_rate * avail * config.entities
    kinds: list[str] = []
    lengths: list[int] = []
    order = list(ANOMALY_KINDS)
    while sum(lengths) < target:
        if len(kinds) % len(order) == 0:
            rng.shuffle(order)
        kind = order[len(kinds) % len(order)]
        lo, hi = _SPAN[kind]
        length = int(rng.integers(lo, hi + 1))
        # The last one may overshoot the target by at most half its length, else it is left out (the
        # first too: on a short stream one long anomaly would be far more than the rate asks for).
        if sum(lengths) + length - target > length / 2:
            break
        kinds.append(kind)
        lengths.append(length)
    owners = rng.integers(0, config.entities, len(kinds))
    plan: dict[int, list[_Anomaly]] = {}
    for ent in range(config.entities):
        mine = [i for i in range(len(kinds)) if owners[i] == ent]
        if not mine:
            continue
        span = [lengths[i] for i in mine]
        free = avail - sum(span) - _GAP * len(mine)
        while free < 0 and mine:  # too dense for this entity: drop the last ones
            mine.pop()
            span.pop()
            free = avail - sum(span) - _GAP * len(mine)
        cuts = np.sort(rng.integers(0, free + 1, len(mine)))
        at = first + _GAP // 2
        items = []
        used = 0
        for j, i in enumerate(mine):
            start = at + int(cuts[j]) + used
            items.append(_detail(kinds[i], ent, start, lengths[i], config, detail))
            used += lengths[i] + _GAP
        plan[ent] = items
    return plan


def _detail(
    kind: str, entity: int, start: int, length: int, config: SimConfig, rng: np.random.Generator
) -> _Anomaly:
    f = len(config.features)
    sign = float(rng.choice([-1.0, 1.0]))
    if kind == "spike":
        n = int(rng.integers(1, 3)) if f > 1 else 1
        chans = tuple(int(c) for c in rng.choice(f, n, replace=False))
        mags = tuple(float(rng.choice([-1.0, 1.0]) * rng.uniform(0.8, 1.2)) for _ in chans)
        return _Anomaly(kind, entity, start, length, chans, mags)
    chan = (int(rng.integers(0, f)),)
    if kind == "level_shift":
        return _Anomaly(kind, entity, start, length, chan, (sign * rng.uniform(0.7, 1.0),))
    if kind == "drift":
        return _Anomaly(kind, entity, start, length, chan, (sign * rng.uniform(0.8, 1.1),))
    if kind == "stuck":
        return _Anomaly(kind, entity, start, length, chan, (sign * rng.uniform(0.4, 0.6),))
    # broken_correlation: a channel with partners (anything but voltage, unless only voltage is left)
    partners = [i for i, name in enumerate(config.features) if name != "voltage"] or list(range(f))
    chan = (int(rng.choice(partners)),)
    return _Anomaly(kind, entity, start, length, chan, (rng.uniform(0.35, 0.5),))


def _apply(a: _Anomaly, j: int, x: np.ndarray, plant: _Plant) -> None:
    """Distort the readings ``x`` (F,) of the ``j``-th event of anomaly ``a`` in place."""
    ent = a.entity
    for c, v in zip(a.channels, a.values, strict=True):
        s = plant.swing[c]
        if a.kind in ("spike", "level_shift"):
            x[c] += v * s
        elif a.kind == "drift":
            ramp = max(1.0, 0.3 * a.length)
            x[c] += v * s * (0.6 + 0.4 * min(1.0, j / ramp))
        elif a.kind == "stuck":
            x[c] = plant.hi[ent, c] + v * s if v > 0 else plant.lo[ent, c] + v * s
        else:  # broken_correlation
            d = x[c] - plant.centre[ent, c]
            x[c] = plant.centre[ent, c] - d - math.copysign(v * s, d if d != 0 else 1.0)


# -------------------------------------------------------------------------------------- malformed


def _malformed(
    reason: str,
    key: str,
    seq: int,
    ts: str,
    x: np.ndarray,
    config: SimConfig,
    rng: np.random.Generator,
) -> bytes:
    feats = config.features
    record: dict[str, Any] = {config.key_field: key, config.time_field: ts, "seq": seq}
    record.update({f: round(float(v), 3) for f, v in zip(feats, x, strict=True)})
    victim = feats[int(rng.integers(0, len(feats)))]
    if reason == "invalid_json":
        whole = orjson.dumps(record)
        return whole[: int(rng.integers(1, len(whole) - 1))]  # truncated mid-message
    if reason == "invalid_utf8":
        return orjson.dumps(record)[:-1] + b',"note":"\xff\xfe\xfd"}'
    if reason == "not_object":
        return orjson.dumps([record[f] for f in feats])
    if reason == "missing_feature":
        del record[victim]
        return orjson.dumps(record)
    if reason == "non_numeric":
        record[victim] = "n/a"
        return orjson.dumps(record)
    if reason == "null_value":
        record[victim] = None
        return orjson.dumps(record)
    if reason in ("nan", "infinity"):
        # Strict JSON has no NaN/Infinity; lenient decoders (Python's json) yield non-finite floats.
        record[victim] = "__NONFINITE__"
        literal = b"NaN" if reason == "nan" else b"Infinity"
        return orjson.dumps(record).replace(b'"__NONFINITE__"', literal)
    if reason == OVERSIZE_KIND:
        assert config.oversize_bytes is not None
        record["padding"] = "x" * config.oversize_bytes
        return orjson.dumps(record)
    raise AssertionError(f"unknown malformed reason {reason}")


# --------------------------------------------------------------------------------------- generate


def generate(n_events: int, config: SimConfig) -> Iterator[SimEvent]:
    """Yield ``n_events`` labelled messages, deterministic for a given config (seed included).

    Rounds of one event per entity follow each other, the entity order shuffled in every round;
    ``seq`` counts all events from 0 and the timestamp advances ``interval_ms / entities`` per event.
    """
    if n_events < 0:
        raise ValueError(f"n_events must be >= 0, got {n_events}")
    plant_rng, dyn_rng, sched_rng, detail_rng, bad_rng, _, order_rng = _streams(config.seed)
    plant = _plant(config, plant_rng)
    e = config.entities
    bad_mask = bad_rng.random(n_events) < config.malformed_rate
    n_good = n_events - int(bad_mask.sum())
    rounds = math.ceil(n_good / e)
    plan = _plan(config, n_good // e, sched_rng, detail_rng)
    pending = {ent: list(items) for ent, items in plan.items()}
    start_ms = _parse_start(config.start)
    step_ms = config.interval_ms / e
    keys = [config.entity_key(i) for i in range(e)]
    kinds = config.malformed_kinds
    process = _Process(config, plant, dyn_rng)
    feats = config.features
    decimals = [_CHANNELS[f].decimals for f in feats]

    chunk_rounds = 1024
    seq = 0
    good = 0
    block = np.empty((0, e, len(feats)))
    block_start = 0
    while seq < n_events:
        ts = _iso(start_ms + int(seq * step_ms))
        if bad_mask[seq]:
            reason = kinds[int(bad_rng.integers(0, len(kinds)))]
            ent = int(bad_rng.integers(0, e))
            x = plant.centre[ent]
            value = _malformed(reason, keys[ent], seq, ts, x, config, bad_rng)
            yield SimEvent(keys[ent], value, 0, f"malformed:{reason}", seq, True)
            seq += 1
            continue
        rnd, pos = divmod(good, e)
        if pos == 0:
            order = order_rng.permutation(e)
            if rnd - block_start >= len(block):
                block_start = rnd
                block = process.chunk(min(chunk_rounds, rounds - rnd))
        ent = int(order[pos])
        x = block[rnd - block_start, ent].copy()
        kind, label = "normal", 0
        queue = pending.get(ent)
        if queue and queue[0].start <= rnd:
            a = queue[0]
            _apply(a, rnd - a.start, x, plant)
            kind, label = a.kind, 1
            if rnd - a.start + 1 >= a.length:
                queue.pop(0)
        record: dict[str, Any] = {config.key_field: keys[ent], config.time_field: ts, "seq": seq}
        for f, v, d in zip(feats, x, decimals, strict=True):
            record[f] = round(float(v), d)
        yield SimEvent(keys[ent], orjson.dumps(record), label, kind, seq, False)
        seq += 1
        good += 1


def normal_frame(n_events: int, config: SimConfig) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Anomaly-free readings for training: X (N, F) float32, feature names, entity keys (N,).

    Same plant (entities, levels, phases) as :func:`generate` for this config, but an independent
    noise and ordering stream, so the model never trains on the very events it is tested on.
    Rows come in the stream's round order, so one entity's rows are consecutive in time.
    """
    if n_events < 0:
        raise ValueError(f"n_events must be >= 0, got {n_events}")
    plant_rng, *_, train_rng, _ = _streams(config.seed)
    plant = _plant(config, plant_rng)
    e = config.entities
    rounds = math.ceil(n_events / e)
    process = _Process(config, plant, train_rng)
    readings = process.chunk(rounds) if rounds else np.empty((0, e, len(config.features)))
    order = (
        np.stack([train_rng.permutation(e) for _ in range(rounds)])
        if rounds
        else np.empty((0, e), int)
    )
    rows = readings[np.arange(rounds)[:, None], order]  # (R, E, F) in event order
    decimals = np.array([_CHANNELS[f].decimals for f in config.features])
    x = rows.reshape(-1, len(config.features))[:n_events]
    x = np.stack([np.round(x[:, i], d) for i, d in enumerate(decimals)], axis=1) if len(x) else x
    keys = np.array([config.entity_key(i) for i in range(e)])
    return x.astype(np.float32), list(config.features), keys[order.reshape(-1)[:n_events]]


# ---------------------------------------------------------------------------------------- produce


class _Producer(Protocol):
    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any) -> None: ...
    def poll(self, timeout: float) -> int: ...
    def flush(self, timeout: float) -> int: ...


_PRODUCER_DEFAULTS: dict[str, Any] = {
    "linger.ms": 5,
    "batch.num.messages": 10_000,
    "batch.size": 1_000_000,
    "queue.buffering.max.messages": 200_000,
    "acks": "all",
    # An unreachable broker fails the run within a minute, however many events are queued
    # (librdkafka's default is 5 minutes a message).
    "message.timeout.ms": 60_000,
}


def produce(
    bootstrap: str,
    topic: str,
    events: Iterable[SimEvent],
    rate: float | None = None,
    labels_out: Path | None = None,
    producer_config: dict[str, Any] | None = None,
    *,
    producer: _Producer | None = None,
    flush_timeout_s: float = 30.0,
) -> ProduceReport:
    """Send ``events`` to ``topic`` keyed by entity, optionally paced to ``rate`` events/s.

    Pacing follows a schedule (event i is due at start + i / rate) and sleeps only when more than
    5 ms ahead of it, so it costs no per-message sleep. Every delivery report is checked: the first
    error is raised as :class:`DeliveryError` once the producer is flushed. ``labels_out`` gets one
    JSON line per delivered event with the topic, partition and offset the broker assigned.
    ``producer`` replaces the confluent-kafka Producer (tests).
    """
    if rate is not None and not rate > 0:
        raise ValueError(f"rate must be > 0 events/s, got {rate}")
    from confluent_kafka import KafkaException

    client: Any = producer
    if client is None:
        from confluent_kafka import Producer

        from streamer.kafka_io import client as make_client

        conf = {**_PRODUCER_DEFAULTS, **(producer_config or {}), "bootstrap.servers": bootstrap}
        client = make_client(Producer, conf)  # librdkafka's lines as structlog events, rate-limited
    end_offsets: dict[int, int] = {}
    errors: list[str] = []
    delivered = 0
    sink = labels_out.open("wb") if labels_out is not None else None

    def report(event: SimEvent) -> Any:
        def on_delivery(err: Any, msg: Any) -> None:
            nonlocal delivered
            if err is not None:
                errors.append(f"seq {event.seq}: {err}")
                return
            delivered += 1
            part, off = msg.partition(), msg.offset()
            end_offsets[part] = max(end_offsets.get(part, 0), off + 1)
            if sink is not None:
                line = {
                    "topic": msg.topic(),
                    "partition": part,
                    "offset": off,
                    "key": event.key,
                    "seq": event.seq,
                    "label": event.label,
                    "kind": event.kind,
                }
                sink.write(orjson.dumps(line) + b"\n")

        return on_delivery

    count = labelled = 0
    started = time.monotonic()
    try:
        for event in events:
            if rate is not None:
                ahead = started + count / rate - time.monotonic()
                if ahead > 0.005:
                    time.sleep(ahead)
            while True:
                try:
                    client.produce(
                        topic, value=event.value, key=event.key.encode(), on_delivery=report(event)
                    )
                    break
                except BufferError:
                    client.poll(0.05)  # local queue full: serve delivery reports, then retry
                    if errors:
                        break
                except KafkaException as exc:  # e.g. a topic the broker does not have
                    raise DeliveryError(f"cannot produce to {topic!r}: {exc.args[0]}") from None
            if errors:
                break
            count += 1
            labelled += event.label
            client.poll(0)
            if errors:
                break
        remaining = client.flush(flush_timeout_s)
    finally:
        if sink is not None:
            sink.close()
    if errors:
        raise DeliveryError(f"{len(errors)} message(s) to {topic!r} failed, first: {errors[0]}")
    if remaining:
        raise DeliveryError(
            f"{remaining} message(s) to {topic!r} not delivered after flush: is {bootstrap} "
            "reachable, and does the topic exist?"
        )
    if delivered != count:
        raise DeliveryError(f"{count} produced to {topic!r} but {delivered} delivery reports")
    return ProduceReport(
        count=count,
        end_offsets=end_offsets,
        elapsed_s=time.monotonic() - started,
        labelled=labelled,
    )
