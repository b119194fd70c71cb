"""The pipeline core: decode -> features -> score -> threshold -> alerts, one micro-batch at a time.

It knows nothing of where messages come from: Kafka in production, an in-memory list in evaluation and
tests. Every message of a batch ends in exactly one of two places: scored (alerted or not) or dead-lettered
with a reason.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any, Protocol

import numpy as np
import orjson
import structlog
from pydantic_core import PydanticSerializationError

from streamer.alerts import (
    MAX_ECHO_CHARS,
    MAX_KEY_BYTES,
    RESERVED_KEY_BYTES,
    RESERVED_KEY_PREFIXES,
    Alert,
    FeatureContribution,
    ModelRef,
    ReasonCode,
    Source,
    bound_key,
    bound_text,
    dead_letter,
    key_text,
    to_json,
)
from streamer.config import EventSettings, ThresholdSettings
from streamer.decode import DecodedBatch, Decoder, Rejection, concat
from streamer.dedup import AlertCooldown
from streamer.features import EntityWindows
from streamer.gate import AlertGate
from streamer.novelty import NoveltyMemory
from streamer.threshold import QuantileThreshold

log = structlog.get_logger(__name__)
# At most one `event_time_in_future` warning per this many seconds: a wrong clock sends many.
_FUTURE_WARNING_EVERY_S = 60.0
# Novelty compares rows in the model's scaled units, clipped at this many scales.
NOVELTY_CLIP = 1_000.0
# Entities whose windows are kept, at most (fewer where events.window_memory_mb says so).
MAX_WINDOW_ENTITIES = 100_000
# A windowed model's inputs are built and scored this many bytes of windows at a time: a batch of
# 5,000 events at window 256 and 256 features is 1.3 GB at once.
WINDOW_CHUNK_BYTES = 256 * 2**20
# The last this many messages are kept (by reference), so that a model swap can check the new model's
# features against what the stream carries now (Pipeline.swap_model); with fewer than
# RECENT_SAMPLE_MIN of them, the check does not judge.
RECENT_SAMPLE = 64
RECENT_SAMPLE_MIN = 16


class ScorerLike(Protocol):
    """What the pipeline needs of a model (``models.Scorer`` is the real one)."""

    kind: str
    name: str
    version: str
    features: tuple[str, ...]
    window: int
    train_scores: np.ndarray

    def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class PendingScores(Protocol):
    """Scores being computed on a device; ``result`` waits for them."""

    def result(self) -> tuple[np.ndarray, np.ndarray]: ...


def _async_submit(scorer: ScorerLike) -> Callable[[np.ndarray], PendingScores] | None:
    """The scorer's ``submit`` when it has one and runs on an accelerator, else None.

    ``submit(x)`` starts scoring (copy to the device, forward pass, copy back) and returns at once; on a
    CPU there is nothing to overlap with, so CPU scorers are always called synchronously.
    """
    submit = getattr(scorer, "submit", None)
    device = getattr(getattr(scorer, "device", None), "type", "cpu")
    return submit if callable(submit) and device != "cpu" else None


@dataclass(frozen=True, slots=True)
class Message:
    """One input message, whatever its source."""

    value: bytes | None
    key: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None


@dataclass(slots=True)
class BatchResult:
    """The outcome of one batch; score arrays have one entry per valid (scored) message."""

    n_messages: int
    valid: np.ndarray  # (V,) indices of scored messages in the batch
    scores: np.ndarray  # (V,) float64
    thresholds: np.ndarray  # (V,) threshold each score was compared with
    alert_mask: np.ndarray  # (V,) bool: the score exceeded its threshold
    published: np.ndarray  # (V,) bool: alerts published, after the per-key cooldown
    alerts: list[tuple[bytes | None, bytes]]  # (Kafka key, alert JSON), one per published row
    dead_letters: list[tuple[bytes | None, bytes]]  # (Kafka key, dead-letter JSON)
    dead_index: list[int] = field(default_factory=list)  # batch index of each dead letter
    dead_codes: list[str] = field(default_factory=list)  # reason_code of each dead letter
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


@dataclass(slots=True)
class _Alerting:
    """An event over the threshold: its row among the valid ones, message, parsed event and entity."""

    row: int
    message: Message
    event: dict[str, Any]
    entity: Hashable


_PLAIN_KEYS = frozenset({str, int})  # key field values used as they are (bool is not one)
# A str key of at most this many characters is at most MAX_KEY_BYTES in UTF-8 (4 bytes a character).
_SHORT_KEY_CHARS = MAX_KEY_BYTES // 4


def _bound_entity(key: Hashable) -> Hashable:
    """The entity key as the per-entity state and the records keep it: one over ``MAX_KEY_BYTES``
    becomes ``sha256:<hex>`` of its bytes (the same for every event of the entity), so that no key read
    from the network holds more than a kilobyte in the state of up to 100,000 entities; one that begins
    with a reserved prefix is encoded (``bound_key``), so that it is no other key's digest."""
    if isinstance(key, bytes):
        return bound_key(key)
    if isinstance(key, str) and (
        len(key) > _SHORT_KEY_CHARS or key.startswith(RESERVED_KEY_PREFIXES)
    ):
        return key_text(key.encode("utf-8", "surrogatepass"))
    return key


def _needs_entities(scorer: ScorerLike, gate: AlertGate | None) -> bool:
    return scorer.window > 1 or gate is not None


_INT64 = range(-(2**63), 2**64)  # the integers orjson reads as int; beyond, as float


def _all_int64(keys: list[Any]) -> bool:
    """Whether every int among ``keys`` (str and int) fits 64 bits; at C speed when all are ints."""
    try:
        return min(keys) in _INT64 and max(keys) in _INT64
    except TypeError:  # str and int mixed
        return all(k in _INT64 for k in keys if type(k) is int)


def _plain(key: str | int) -> Hashable:
    """A str or int key as the alert path sees it in the event orjson parsed: an integer beyond 64 bits
    as the float orjson makes of it (msgspec, on the fast path, keeps it exact)."""
    if type(key) is int and key not in _INT64:
        try:
            return str(float(key))
        except OverflowError:
            return _text(key)
    return key


def _text(value: Any) -> str:
    """A JSON value as JSON text, an object's keys sorted: ``{"site":0}``, ``true``, ``[1,"b"]``, as a
    subscriber writes the value it reads (Python's spelling was ``{'site': 0}``, ``True``). A value
    nothing can write (nesting past Python's recursion, an integer past its digit limit) is named by
    its type alone. A number beyond float64 (read as inf) is "inf", not JSON's null."""
    if type(value) is float and not math.isfinite(value):
        return str(value)
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except orjson.JSONEncodeError:  # an integer beyond 64 bits, nesting beyond orjson's 255
        pass
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (RecursionError, ValueError):
        return f"<{type(value).__name__} that cannot be written as JSON>"
    try:  # as orjson reads it (an integer beyond 64 bits as a float), whichever parser read it
        return orjson.dumps(orjson.loads(text), option=orjson.OPT_SORT_KEYS).decode()
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):  # past float64, or nesting past 255
        return text


def entity_of(obj: dict[str, Any], key_field: str | None, kafka_key: bytes | None) -> Hashable:
    """An event's entity, as the detector keys its windows, rise gate and cooldown (and ``streamer
    train`` groups a conv model's windows): its ``key_field`` value when present (a str or an int as
    it is, anything else as its JSON text), else its Kafka key; bounded (``_bound_entity``)."""
    value = obj.get(key_field) if key_field is not None else None
    if value is None:
        return _bound_entity(kafka_key)
    return _bound_entity(_plain(value) if type(value) in _PLAIN_KEYS else _text(value))


def _echo(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The event as an alert echoes it: plain JSON that any reader takes, or None where it is not.
    Only an event the lenient parser read can hold what is not (streamer.decode): an integer beyond
    64 bits, past float64's range unreadable by orjson or a float64 reader (and by then it would
    also stop the alert's shrinking), or a number beyond float64 (inf, written as null here)."""
    try:
        return orjson.loads(orjson.dumps(obj))
    except (orjson.JSONEncodeError, orjson.JSONDecodeError):
        return None


def _alert_key(entity: Hashable) -> tuple[str | None, bytes | None]:
    """An alert's ``key`` and its Kafka key, from its (bounded) entity: the Kafka key is the entity's
    bytes, and its text tells any two Kafka keys apart (``key_text``)."""
    if entity is None:
        return None, None
    if isinstance(entity, bytes):
        return bound_text(entity), entity
    text = entity if isinstance(entity, str) else str(entity)
    return text, text.encode("utf-8")  # JSON readers here refuse lone surrogates


def _bound_entities(keys: list[Hashable]) -> list[Hashable]:
    """``_bound_entity`` over a batch's keys; a length check and a search for the reserved prefixes at
    C speed when none is long or reserved."""
    try:
        longest = max(map(len, filter(None, keys)), default=0)  # type: ignore[arg-type]
    except TypeError:  # ints among them
        longest = max((len(k) for k in keys if isinstance(k, str | bytes)), default=0)
    if longest <= _SHORT_KEY_CHARS and not _any_reserved(keys):
        return keys
    return [_bound_entity(k) for k in keys]


def _any_reserved(keys: list[Hashable]) -> bool:
    """Whether a key may begin with a reserved prefix: at C speed, a search of all the keys joined
    when all are str or all bytes (which may find one inside a key too: the caller then checks each);
    else key by key, where there are any str or bytes among the ints."""
    present: list[Any] = list(filter(None, keys))
    try:
        text = "\n".join(present)
        return any(p in text for p in RESERVED_KEY_PREFIXES)
    except TypeError:
        pass
    try:
        raw = b"\n".join(present)
        return any(p in raw for p in RESERVED_KEY_BYTES)
    except TypeError:
        pass
    if set(map(type, present)) <= {int}:
        return False
    return any(
        k.startswith(RESERVED_KEY_PREFIXES)
        if type(k) is str
        else type(k) is bytes and k.startswith(RESERVED_KEY_BYTES)
        for k in present
    )


def _shifted(origin: Callable[[int], Message], start: int) -> Callable[[int], Message]:
    """``origin`` for a chunk of a batch that begins at message ``start``."""
    return lambda i: origin(start + i)


def _shifted_keys(
    message_keys: Callable[[], Sequence[bytes | None]] | None, start: int
) -> Callable[[], Sequence[bytes | None]] | None:
    """``message_keys`` for a chunk of a batch that begins at message ``start``."""
    if message_keys is None:
        return None
    return lambda: message_keys()[start:]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _units(scorer: ScorerLike) -> tuple[np.ndarray, np.ndarray] | None:
    """The scorer's scaler centre and scale, where it has them."""
    scaler = getattr(scorer, "scaler", None)
    center, scale = getattr(scaler, "center", None), getattr(scaler, "scale", None)
    return None if center is None or scale is None else (center, scale)


def _same_units(a: ScorerLike, b: ScorerLike) -> bool:
    """Whether two scorers scale rows alike (so that novelty's kept rows mean the same)."""
    ua, ub = _units(a), _units(b)
    if ua is None or ub is None:
        return ua is ub
    return all(np.array_equal(x, y) for x, y in zip(ua, ub, strict=True))


def _novelty_units(center: np.ndarray, scale: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Rows in the model's scaled units, clipped at NOVELTY_CLIP scales. Unclipped, one reading
    of 1e6 scored 8.75e6 and its 1,000 events of swollen gate variance hid the next incident; the
    model's own clip, 50, flattened NAB's large anomalies (conv's NAB 60.8, against 61.5 at 1,000)."""
    c, s = np.asarray(center, dtype=np.float32), np.asarray(scale, dtype=np.float32)

    def units(x: np.ndarray) -> np.ndarray:
        return np.clip((x - c) / s, -NOVELTY_CLIP, NOVELTY_CLIP)

    return units


class Pipeline:
    """Scores micro-batches with one model and an adaptive threshold; swaps models between batches."""

    def __init__(
        self,
        scorer: ScorerLike,
        threshold: ThresholdSettings,
        events: EventSettings,
        *,
        now: Callable[[], datetime] = _utc_now,
        overlap_chunk: int = 2_048,
    ) -> None:
        """``overlap_chunk``: with a scorer that scores asynchronously on a GPU (``submit``), batches
        are decoded and scored in chunks of this many messages, the next chunk decoded while the
        device scores the current one."""
        if overlap_chunk < 1:
            raise ValueError(f"overlap_chunk must be positive, got {overlap_chunk}")
        self.overlap_chunk = overlap_chunk
        self.threshold_settings = threshold
        self.events = events
        self._now = now
        self._windows: EntityWindows | None = None
        self._novelty: NoveltyMemory | None = None
        self.scorer = scorer
        self.threshold = self._new_threshold(scorer)
        self.cooldown = AlertCooldown(
            events.cooldown_s(scorer.window, len(scorer.features)), events.alert_escalation
        )
        self._future_warned_at = -_FUTURE_WARNING_EVERY_S
        self._recent: deque[bytes | None] = deque(maxlen=RECENT_SAMPLE)
        self.gate = self._new_gate(scorer)
        self.decoder = self._new_decoder(scorer, self.gate)
        self._windows = self._new_windows(scorer)
        self._novelty = self._new_novelty(scorer)

    def swap_model(self, scorer: ScorerLike) -> None:
        """Switch to a new model between batches; the threshold and the gate restart from its score
        distribution.

        Entity windows hold raw values, so they carry over when features and window length are
        unchanged; novelty's rows hold the model's scaled units, so they carry over only when the
        scaler is unchanged too (else the history starts again).
        Everything the new model needs is built, and one all-zero input scored (it must give one
        finite score), before anything is switched: if any of it fails, the exception leaves the
        running model and its state as they were. A model of other features must also be able to
        read the stream: of the last ``RECENT_SAMPLE`` messages (when there are at least
        ``RECENT_SAMPLE_MIN``), it must decode at least half as many as the running model does (a
        model that needs a field the events do not carry would dead-letter every event from the
        swap on).
        """
        same_inputs = (
            scorer.features == self.scorer.features and scorer.window == self.scorer.window
        )
        threshold = self._new_threshold(scorer)
        gate = self._new_gate(scorer)
        decoder = self._new_decoder(scorer, gate)
        if scorer.features != self.scorer.features:
            self._check_fit(decoder)
        windows = self._windows if same_inputs else self._new_windows(scorer)
        novelty = (
            self._novelty
            if same_inputs and _same_units(self.scorer, scorer)
            else self._new_novelty(scorer)
        )
        shape = (
            (1, len(scorer.features))
            if scorer.window <= 1
            else (1, scorer.window, len(scorer.features))
        )
        scores, _ = scorer.score(np.zeros(shape, dtype=np.float32))
        if len(scores) != 1:
            raise ValueError(f"the new model gave {len(scores)} scores for one input")
        if not np.isfinite(scores).all():
            raise ValueError(f"the new model scored an all-zero input {scores[0]}")
        self.scorer, self.threshold, self.gate, self.decoder = scorer, threshold, gate, decoder
        self._windows, self._novelty = windows, novelty
        self.cooldown.set_period(self.events.cooldown_s(scorer.window, len(scorer.features)))

    def _check_fit(self, decoder: Decoder) -> None:
        """Raise if ``decoder`` (a new model's) reads under half of what the running one reads of the
        recent messages."""
        if len(self._recent) < RECENT_SAMPLE_MIN:
            return
        recent = list(self._recent)
        now = len(self.decoder.decode(recent).valid)
        new = decoder.decode(recent)
        if 2 * len(new.valid) >= now:
            return
        # by code and feature: a reason's words may hold an event's values, which do not belong in
        # the service's log
        reasons = Counter(
            f"{why.code}" + (f" {why.feature!r}" if why.feature else "") for _, why in new.rejected
        ).most_common(3)
        raise ValueError(
            f"the new model's features do not fit the stream: of the last {len(recent)} "
            f"events, the running model reads {now} and the new one would read {len(new.valid)} "
            f"({'; '.join(f'{n} x {reason}' for reason, n in reasons)})"
        )

    def _seed_scores(self, scorer: ScorerLike) -> np.ndarray:
        """The held-back scores on the pipeline's scale: their roots where novelty weighs scores
        (sqrt(error) x a weight about 1 when nothing is new)."""
        train = np.asarray(scorer.train_scores, dtype=np.float64)
        if self.events.novelty_on(scorer.window, len(scorer.features)):
            return np.sqrt(np.maximum(train, 0.0))
        return train

    def _new_threshold(self, scorer: ScorerLike) -> QuantileThreshold:
        t = self.threshold_settings
        return QuantileThreshold(
            t.q,
            window=t.window,
            update_on_alert=t.update_on_alert,
            initial_scores=self._seed_scores(scorer),
            alert_cap=t.cap(gated=self.events.gated(scorer.window)),
        )

    def _new_gate(self, scorer: ScorerLike) -> AlertGate | None:
        e = self.events
        z = e.gate_z(windowed=scorer.window > 1)
        if not z:
            return None
        return AlertGate.from_scores(
            z, self._seed_scores(scorer), short=e.alert_gate_short, long=e.alert_gate_long
        )

    @property
    def _needs_entities(self) -> bool:
        """Whether every row's entity is needed on the hot path: for windows and for the gate."""
        return _needs_entities(self.scorer, self.gate)

    def _new_decoder(self, scorer: ScorerLike, gate: AlertGate | None) -> Decoder:
        """Each event's key field is decoded only when every row's entity is needed (the decoder
        leaves out a key field that is one of the features; those entities come from the events)."""
        key = self.events.key_field if _needs_entities(scorer, gate) else None
        return Decoder(scorer.features, self.events.max_message_bytes, key_field=key)

    def _new_windows(self, scorer: ScorerLike) -> EntityWindows | None:
        if scorer.window <= 1:
            return None
        w, f = scorer.window, len(scorer.features)
        budget = self.events.window_memory_mb * 2**20
        entities = max(1, min(MAX_WINDOW_ENTITIES, budget // ((w - 1) * f * 4)))
        if entities < MAX_WINDOW_ENTITIES:
            log.warning(
                "entity_windows_capped",
                entities=entities,
                window=w,
                features=f,
                window_memory_mb=self.events.window_memory_mb,
            )
        return EntityWindows(w, f, max_entities=entities)

    def _new_novelty(self, scorer: ScorerLike) -> NoveltyMemory | None:
        w, f = scorer.window, len(scorer.features)
        if not self.events.novelty_on(w, f):
            return None
        history = self.events.novelty_history
        budget = self.events.window_memory_mb * 2**20
        entities = max(
            1, min(MAX_WINDOW_ENTITIES, budget // NoveltyMemory.bytes_per_entity(w, f, history))
        )
        if entities < MAX_WINDOW_ENTITIES:
            log.warning("novelty_entities_capped", entities=entities, novelty_history=history)
        units = _units(scorer)
        transform = None if units is None else _novelty_units(*units)
        return NoveltyMemory(
            w,
            f,
            history=history,
            max_entities=entities,
            transform=transform,
            seasonal=self.events.novelty_seasonal,
        )

    def _window_chunk_rows(self) -> int:
        """Rows whose windows are built and scored at a time (all of a batch, for the usual sizes)."""
        w, f = self.scorer.window, len(self.scorer.features)
        return max(1, WINDOW_CHUNK_BYTES // (w * f * 4))

    def process_messages(self, messages: Sequence[Message]) -> BatchResult:
        """Process an in-memory batch (evaluation, tests)."""
        return self.process(
            [m.value for m in messages],
            messages.__getitem__,
            message_keys=lambda: [m.key for m in messages],
        )

    def process(
        self,
        values: Sequence[bytes | None],
        origin: Callable[[int], Message],
        message_keys: Callable[[], Sequence[bytes | None]] | None = None,
    ) -> BatchResult:
        """Process one batch: ``values`` are the message bytes, ``origin(i)`` describes message ``i``.

        ``origin`` is called only for the few messages that become alerts or dead letters, so no
        per-message object is built on the hot path. ``message_keys()``, when given, returns every
        message's Kafka key at once: the entities of a windowed model when events carry no key field.
        """
        timings: dict[str, float] = {}
        self._recent.extend(values[-RECENT_SAMPLE:])
        if message_keys is not None:
            message_keys = cache(message_keys)  # one list of keys for the batch, sliced per chunk
        submit = _async_submit(self.scorer)
        if submit is not None and len(values) > self.overlap_chunk:
            decoded, scores, per_feature, entities = self._overlapped(
                values, origin, message_keys, submit, timings
            )
        else:
            decoded, scores, per_feature, entities = self._in_one_pass(
                values, origin, message_keys, timings
            )
        if self._novelty is not None and len(scores):
            t = time.perf_counter()
            assert entities is not None  # a windowed model always works out its rows' entities
            scores = self._novelty.weigh(scores, decoded.x, entities)
            timings["novelty"] = time.perf_counter() - t
        t3 = time.perf_counter()

        rejected = list(decoded.rejected)
        finite = np.isfinite(scores)
        if not finite.all():  # a model that overflows on an input must not poison the threshold
            bad = np.flatnonzero(~finite)
            why = Rejection(ReasonCode.SCORE_NOT_FINITE, "anomaly score is not finite")
            rejected.extend((int(decoded.valid[j]), why) for j in bad)
            rejected.sort()
            keep = np.flatnonzero(finite)
            decoded = decoded.take(keep)
            decoded.rejected = rejected
            scores, per_feature = scores[keep], per_feature[keep]
            if entities is not None:
                entities = [entities[j] for j in keep.tolist()]
        thresholds, alert_mask = self.threshold.decide(scores)
        t4 = time.perf_counter()
        timings["threshold"] = t4 - t3
        candidates, rise = alert_mask, None
        if self.gate is not None:
            rise = self.gate.zscores(scores, entities or [])
            candidates = alert_mask & (rise >= self.gate.z)
            t5 = time.perf_counter()
            timings["gate"] = t5 - t4
            t4 = t5

        # Each event over the threshold and through the gate: its message, parsed event and entity,
        # worked out once for both the cooldown and the alert.
        alerting = [self._alerting(origin, decoded, j) for j in np.flatnonzero(candidates).tolist()]
        kept = self._cooldown(alerting, scores)
        published = np.zeros_like(alert_mask)
        published[[a.row for a in kept]] = True
        alerts = self._build_alerts(kept, scores, per_feature, thresholds, rise)
        dead = self._build_dead_letters(origin, rejected)
        timings["alerts"] = time.perf_counter() - t4
        return BatchResult(
            n_messages=len(values),
            valid=decoded.valid,
            scores=scores,
            thresholds=thresholds,
            alert_mask=alert_mask,
            published=published,
            alerts=alerts,
            dead_letters=dead,
            dead_index=[i for i, _ in rejected],
            dead_codes=[str(why.code) for _, why in rejected],
            timings=timings,
        )

    def _alerting(
        self, origin: Callable[[int], Message], decoded: DecodedBatch, row: int
    ) -> _Alerting:
        index = int(decoded.valid[row])
        obj = decoded.event(row)
        return _Alerting(row, origin(index), obj, self._entity(origin, index, obj))

    def _cooldown(self, alerting: list[_Alerting], scores: np.ndarray) -> list[_Alerting]:
        """The alerts to publish: per entity, none within the cooldown after the last one published
        unless it escalates (streamer.dedup), by the Kafka timestamp (else the processing time).

        A timestamp more than one cooldown ahead of this host's clock is taken as the processing
        time: trusted, one event from a wrong clock (or a hostile producer) stamped in 2100 would
        mute its entity's alerts until then."""
        if not alerting or self.cooldown.cooldown_ms == 0:
            return alerting
        now_ms = self._now().timestamp() * 1000.0
        latest = now_ms + self.cooldown.cooldown_ms
        times, ahead = [], []
        for a in alerting:
            ts = a.message.timestamp_ms
            if ts is None or ts < 0:
                times.append(now_ms)
            elif ts > latest:
                times.append(now_ms)
                ahead.append(ts)
            else:
                times.append(float(ts))
        if ahead and time.monotonic() >= self._future_warned_at + _FUTURE_WARNING_EVERY_S:
            self._future_warned_at = time.monotonic()
            log.warning(
                "event_time_in_future",
                alerts=len(ahead),
                max_ahead_s=round((max(ahead) - now_ms) / 1000.0, 1),
                using="processing time for the alert cooldown",
            )
        keep = self.cooldown.apply(
            [a.entity for a in alerting], times, [float(scores[a.row]) for a in alerting]
        )
        return [a for a, k in zip(alerting, keep, strict=True) if k]

    def _model_input(
        self,
        decoded: DecodedBatch,
        origin: Callable[[int], Message],
        message_keys: Callable[[], Sequence[bytes | None]] | None,
    ) -> tuple[np.ndarray, list[Hashable] | None]:
        """The rows themselves, or for a windowed model each row's entity window (B, W, F); and each
        row's entity, worked out once for the windows and the gate (None when neither needs it)."""
        if not self._needs_entities or not len(decoded.x):
            return decoded.x, None
        entities = _bound_entities(self._entities(origin, decoded, message_keys))
        if self._windows is None:
            return decoded.x, entities
        return self._windows.windows(decoded.x, entities), entities

    def _no_scores(self) -> tuple[np.ndarray, np.ndarray]:
        return np.empty(0, dtype=np.float64), np.empty(
            (0, len(self.scorer.features)), dtype=np.float32
        )

    def _in_one_pass(
        self,
        values: Sequence[bytes | None],
        origin: Callable[[int], Message],
        message_keys: Callable[[], Sequence[bytes | None]] | None,
        timings: dict[str, float],
    ) -> tuple[DecodedBatch, np.ndarray, np.ndarray, list[Hashable] | None]:
        """Decode the whole batch, then one forward pass over it (a windowed model's in chunks of
        bounded size: one, for the usual sizes)."""
        t0 = time.perf_counter()
        decoded = self.decoder.decode(values)
        t1 = time.perf_counter()
        timings["decode"] = t1 - t0
        if self._windows is not None and len(decoded.x):
            return self._in_window_chunks(decoded, origin, message_keys, timings)
        x, entities = self._model_input(decoded, origin, message_keys)
        t2 = time.perf_counter()
        scores, per_feature = self.scorer.score(x) if len(x) else self._no_scores()
        timings["features"] = t2 - t1
        timings["score"] = time.perf_counter() - t2
        return decoded, scores, per_feature, entities

    def _in_window_chunks(
        self,
        decoded: DecodedBatch,
        origin: Callable[[int], Message],
        message_keys: Callable[[], Sequence[bytes | None]] | None,
        timings: dict[str, float],
    ) -> tuple[DecodedBatch, np.ndarray, np.ndarray, list[Hashable] | None]:
        """Windows built and scored ``_window_chunk_rows()`` rows at a time, in arrival order, so
        that every event sees the same window as in one pass and memory stays bounded."""
        assert self._windows is not None
        t0 = time.perf_counter()
        entities = _bound_entities(self._entities(origin, decoded, message_keys))
        features_s, score_s = time.perf_counter() - t0, 0.0
        rows = self._window_chunk_rows()
        results = []
        for i in range(0, len(decoded.x), rows):
            t1 = time.perf_counter()
            x = self._windows.windows(decoded.x[i : i + rows], entities[i : i + rows])
            t2 = time.perf_counter()
            results.append(self.scorer.score(x))
            features_s, score_s = features_s + t2 - t1, score_s + time.perf_counter() - t2
        timings["features"], timings["score"] = features_s, score_s
        scores = np.concatenate([s for s, _ in results])
        per_feature = np.concatenate([e for _, e in results])
        return decoded, scores, per_feature, entities

    def _overlapped(
        self,
        values: Sequence[bytes | None],
        origin: Callable[[int], Message],
        message_keys: Callable[[], Sequence[bytes | None]] | None,
        submit: Callable[[np.ndarray], PendingScores],
        timings: dict[str, float],
    ) -> tuple[DecodedBatch, np.ndarray, np.ndarray, list[Hashable] | None]:
        """Chunk by chunk: while the device scores chunk k, the CPU decodes chunk k + 1.

        Windows are built chunk after chunk in arrival order, so every event sees the same window as
        in one pass. ``score`` counts only the time spent starting work and waiting for results.
        """
        decode_s = features_s = score_s = 0.0
        parts: list[tuple[int, DecodedBatch]] = []
        results: list[tuple[np.ndarray, np.ndarray]] = []
        entities: list[Hashable] = []
        pending: PendingScores | None = None
        chunk = self.overlap_chunk
        if self._windows is not None:
            chunk = min(chunk, self._window_chunk_rows())
        for start in range(0, len(values), chunk):
            t0 = time.perf_counter()
            part = self.decoder.decode(values[start : start + chunk])
            t1 = time.perf_counter()
            x, part_entities = self._model_input(
                part, _shifted(origin, start), _shifted_keys(message_keys, start)
            )
            if part_entities is not None:
                entities.extend(part_entities)
            t2 = time.perf_counter()
            if pending is not None:
                results.append(pending.result())  # the previous chunk, scored while we decoded
            pending = submit(x) if len(x) else None
            if pending is None:
                results.append(self._no_scores())
            parts.append((start, part))
            decode_s, features_s = decode_s + t1 - t0, features_s + t2 - t1
            score_s += time.perf_counter() - t2
        t3 = time.perf_counter()
        if pending is not None:
            results.append(pending.result())
        timings["decode"], timings["features"] = decode_s, features_s
        timings["score"] = score_s + time.perf_counter() - t3
        scores = np.concatenate([s for s, _ in results])
        per_feature = np.concatenate([e for _, e in results])
        return concat(parts), scores, per_feature, entities if self._needs_entities else None

    def _entity(
        self, origin: Callable[[int], Message], index: int, obj: dict[str, Any]
    ) -> Hashable:
        """The event's entity: its key field when configured and present, else the Kafka message key."""
        key_field = self.events.key_field
        if key_field is not None and obj.get(key_field) is not None:
            return entity_of(obj, key_field, None)
        return _bound_entity(origin(index).key)

    def _entities(
        self,
        origin: Callable[[int], Message],
        decoded: DecodedBatch,
        message_keys: Callable[[], Sequence[bytes | None]] | None = None,
    ) -> list[Hashable]:
        """Every row's entity, as ``_entity`` defines it (but not yet bounded: the caller bounds the
        batch's keys at once), without parsing any event: from the key field's values (at C speed
        when all are str or int) or from the messages' Kafka keys."""
        keys = decoded.keys
        if self.events.key_field is not None and keys is not None:
            try:
                "".join(keys)  # all str, the usual case: checked at C speed
                return keys
            except TypeError:
                pass
            types = set(map(type, keys))
            if types <= _PLAIN_KEYS and (int not in types or _all_int64(keys)):
                return keys
            valid = decoded.valid.tolist()
            return [
                _plain(k) if type(k) in _PLAIN_KEYS else (origin(i).key if k is None else _text(k))
                for i, k in zip(valid, keys, strict=True)
            ]
        valid = decoded.valid.tolist()
        if self.events.key_field is None:
            if message_keys is not None:
                kafka = message_keys()
                return [kafka[i] for i in valid]
            return [origin(i).key for i in valid]
        return [self._entity(origin, i, decoded.event(j)) for j, i in enumerate(valid)]

    def _build_alerts(
        self,
        published: list[_Alerting],
        scores: np.ndarray,
        per_feature: np.ndarray,
        thresholds: np.ndarray,
        rise: np.ndarray | None,
    ) -> list[tuple[bytes | None, bytes]]:
        if not published:
            return []
        rows = np.array([a.row for a in published], dtype=np.intp)
        scorer, events = self.scorer, self.events
        features = scorer.features
        model = ModelRef(name=scorer.name, version=scorer.version, kind=scorer.kind)  # type: ignore[arg-type]
        # Below, records are built with model_construct: every field comes from this code with its
        # type already right (the event is a parsed JSON object), and validating ~10 models per alert
        # cost more than the rest of the alert. The schema tests validate what is produced.
        errors = per_feature[rows].astype(np.float64)  # (A, F)
        totals = errors.sum(axis=1, keepdims=True)
        shares = np.divide(errors, totals, out=np.zeros_like(errors), where=totals > 0)
        k = min(events.top_features, len(features))
        top = np.argsort(-errors, axis=1, kind="stable")[:, :k]  # (A, k)
        now = self._now()
        out: list[tuple[bytes | None, bytes]] = []
        for a, alerting in enumerate(published):
            j, msg, obj, entity = alerting.row, alerting.message, alerting.event, alerting.entity
            # the entity is bounded already (_entity): a long key is its digest
            key_str, kafka_key = _alert_key(entity)
            contributions = [
                FeatureContribution.model_construct(
                    feature=features[f],
                    value=float(obj[features[f]]),  # as sent, not its float32 copy
                    error=float(errors[a, f]),
                    share=min(1.0, float(shares[a, f])),
                )
                for f in top[a].tolist()
            ]
            raw = msg.value or b""
            echo = _echo(obj) if len(raw) <= events.max_original_bytes else None
            alert = Alert.model_construct(
                alert_id=f"{msg.topic}:{msg.partition}:{msg.offset}",
                key=key_str,
                event_time=self._event_time(obj),
                source=Source.model_construct(
                    topic=msg.topic,
                    partition=msg.partition,
                    offset=msg.offset,
                    timestamp_ms=msg.timestamp_ms,
                ),
                score=float(scores[j]),
                threshold=float(thresholds[j]),
                q=self.threshold.q,
                model=model,
                top_features=contributions,
                rise=None if rise is None else float(rise[j]),
                detected_at=now,
                event=echo,
                event_truncated=None
                if echo is not None
                else raw[: events.max_original_bytes].decode("utf-8", "replace"),
            )
            try:
                record = to_json(alert)
            except (PydanticSerializationError, RecursionError):
                # A guard: `_echo` passes only what orjson writes (nesting within 255), which
                # pydantic writes too; were the echo to fail, the alert goes out without it.
                text = raw[: events.max_original_bytes].decode("utf-8", "replace")
                record = to_json(alert.model_copy(update={"event": None, "event_truncated": text}))
            out.append((kafka_key, record))
        return out

    def _event_time(self, obj: dict[str, Any]) -> str | float | int | None:
        if self.events.time_field is None:
            return None
        value = obj.get(self.events.time_field)
        if value is None or type(value) is float or (type(value) is int and value in _INT64):
            return value
        if type(value) is int:  # beyond 64 bits: the float orjson reads (on the fast path too)
            try:
                return float(value)
            except OverflowError:  # beyond float64: no reader takes it as a number
                pass
        # true is no time (it was written 1.0): it goes out as its JSON text
        return (value if isinstance(value, str) else _text(value))[:MAX_ECHO_CHARS]

    def _build_dead_letters(
        self, origin: Callable[[int], Message], rejected: list[tuple[int, Rejection]]
    ) -> list[tuple[bytes | None, bytes]]:
        if not rejected:
            return []
        now = self._now()
        out = []
        for i, why in rejected:
            msg = origin(i)
            source = Source(
                topic=msg.topic,
                partition=msg.partition,
                offset=msg.offset,
                timestamp_ms=msg.timestamp_ms,
            )
            out.append(
                (
                    bound_key(msg.key),
                    dead_letter(
                        why.code,
                        why.reason,
                        source,
                        msg.key,
                        msg.value,
                        self.events.max_original_bytes,
                        now,
                        why.feature,
                    ),
                )
            )
        return out
