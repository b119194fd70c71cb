"""The pipeline core on an in-memory source, with a scorer whose scores are known."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import ValidationError

import streamer.pipeline
from streamer.alerts import (
    MAX_ECHO_CHARS,
    MAX_KEY_BYTES,
    RECORDS,
    Alert,
    DeadLetter,
    ReasonCode,
    bound_key,
    json_schema,
    json_schemas,
    key_text,
    shrink,
)
from streamer.cli import main
from streamer.config import (
    DEFAULT_ALERT_CAP,
    GATED_ALERT_CAP,
    EventSettings,
    ThresholdSettings,
)
from streamer.gate import DEFAULT_GATE_Z, DEFAULT_LONG
from streamer.pipeline import Message, Pipeline

FEATURES = ("x", "y", "z")
NOW = datetime(2026, 1, 1, tzinfo=UTC)


class SquareScorer:
    """score = sum of squares; per-feature error = squares. Windowed when window > 1 (uses the last row)."""

    kind = "dense"
    name = "square"
    features = FEATURES

    def __init__(
        self, window: int = 1, version: str = "v1", train_scores: np.ndarray | None = None
    ) -> None:
        self.window = window
        self.version = version
        self.train_scores = np.linspace(0.0, 3.0, 1_000) if train_scores is None else train_scores
        self.seen: list[np.ndarray] = []

    def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.seen.append(x.copy())
        last = x if x.ndim == 2 else x[:, -1, :]
        err = (last.astype(np.float64) ** 2).astype(np.float32)
        return err.sum(axis=1).astype(np.float64), err


def message(i: int, payload: object, key: bytes | None = b"k", raw: bytes | None = None) -> Message:
    value = raw if raw is not None else orjson.dumps(payload)
    return Message(
        value=value, key=key, topic="in", partition=i % 2, offset=i, timestamp_ms=1_000 + i
    )


def make(scorer: SquareScorer | None = None, **events: object) -> Pipeline:
    return Pipeline(
        scorer or SquareScorer(),
        ThresholdSettings(q=0.99),
        EventSettings(**events),  # type: ignore[arg-type]
        now=lambda: NOW,
    )


def test_every_message_is_scored_or_dead_lettered() -> None:
    batch = [
        message(0, {"x": 0.1, "y": 0.1, "z": 0.1}),
        message(1, {}, raw=b"{oops"),
        message(2, {"x": 10.0, "y": 0.0, "z": 0.5, "id": "s-1"}),
        message(3, {"x": 1, "y": "2", "z": 3}),
        message(4, {"x": 0.2, "y": 0.0, "z": 0.0}),
    ]
    result = make().process_messages(batch)
    assert result.valid.tolist() == [0, 2, 4]
    assert result.dead_index == [1, 3]
    assert result.alert_mask.tolist() == [False, True, False]
    assert len(result.alerts) == 1 and len(result.dead_letters) == 2
    letter = DeadLetter.model_validate_json(result.dead_letters[0][1])
    assert letter.source.offset == 1 and "invalid JSON" in letter.reason
    assert letter.original_b64 == "e29vcHM="  # base64 of b"{oops"


def test_alert_carries_contributions_key_time_and_event() -> None:
    pipeline = make(key_field="id", time_field="ts", top_features=2, alert_gate_z=0)
    batch = [
        message(7, {"x": 3.0, "y": 1.0, "z": 0.0, "id": "sensor-9", "ts": "2026-01-01T00:00:00Z"})
    ]
    result = pipeline.process_messages(batch)
    key, value = result.alerts[0]
    alert = Alert.model_validate_json(value)
    assert key == b"sensor-9" and alert.key == "sensor-9"
    assert alert.event_time == "2026-01-01T00:00:00Z"
    assert alert.alert_id == "in:1:7"
    assert alert.source.timestamp_ms == 1_007
    assert alert.score == pytest.approx(10.0)
    assert [c.feature for c in alert.top_features] == ["x", "y"]
    assert [c.share for c in alert.top_features] == pytest.approx([0.9, 0.1])
    assert alert.top_features[0].value == 3.0
    assert alert.event == {
        "x": 3.0,
        "y": 1.0,
        "z": 0.0,
        "id": "sensor-9",
        "ts": "2026-01-01T00:00:00Z",
    }
    assert alert.detected_at == NOW
    assert alert.model.name == "square" and alert.q == 0.99


def test_kafka_key_is_used_when_no_key_field() -> None:
    result = make().process_messages([message(0, {"x": 5, "y": 0, "z": 0}, key=b"card-1")])
    assert result.alerts[0][0] == b"card-1"
    assert Alert.model_validate_json(result.alerts[0][1]).key == "card-1"


def test_large_events_are_echoed_truncated() -> None:
    pipeline = make(max_original_bytes=64)
    payload = {"x": 9.0, "y": 0, "z": 0, "note": "n" * 500}
    alert = Alert.model_validate_json(pipeline.process_messages([message(0, payload)]).alerts[0][1])
    assert alert.event is None
    assert alert.event_truncated is not None and len(alert.event_truncated) == 64


def test_dead_letter_original_is_bounded() -> None:
    pipeline = make(max_original_bytes=16)
    result = pipeline.process_messages([message(0, {}, raw=b"x" * 100)])
    letter = DeadLetter.model_validate_json(result.dead_letters[0][1])
    assert letter.truncated and letter.original_size == 100
    assert len(letter.original_b64) == len("eHh4eHh4eHh4eHh4eHh4eA==")


def test_long_keys_and_time_strings_are_bounded_in_every_record() -> None:
    """A key is echoed twice per record (its Kafka key and its JSON): one over MAX_KEY_BYTES is
    published as its digest, the same for every event of the entity; a long time string is cut."""
    pipeline = make(key_field="id", time_field="ts", alert_gate_z=0, alert_cooldown_s=0)
    long_id, long_kafka_key = "s" * 5_000, b"\x01" * 5_000
    batch = [
        message(0, {"x": 5, "y": 0, "z": 0, "id": long_id, "ts": "t" * 10_000}),
        message(1, {"x": 6, "y": 0, "z": 0, "id": long_id, "ts": 1}),
        message(2, {}, key=long_kafka_key, raw=b"{oops"),
    ]
    result = pipeline.process_messages(batch)
    digest = "sha256:" + hashlib.sha256(long_id.encode()).hexdigest()
    assert [k for k, _ in result.alerts] == [digest.encode()] * 2
    first = Alert.model_validate_json(result.alerts[0][1])
    assert first.key == digest and first.event_time == "t" * MAX_ECHO_CHARS
    ((key, value),) = result.dead_letters
    letter = DeadLetter.model_validate_json(value)
    assert key == b"sha256:" + hashlib.sha256(long_kafka_key).hexdigest().encode()
    assert letter.key == key.decode() and len(value) < 1_000
    # a key at the bound is kept as it came
    at_bound = "k" * MAX_KEY_BYTES
    alert = make(key_field="id", alert_gate_z=0).process_messages(
        [message(3, {"x": 5, "y": 0, "z": 0, "id": at_bound})]
    )
    assert alert.alerts[0][0] == at_bound.encode()


@pytest.mark.parametrize("key_field", ["id", None])
def test_per_entity_state_keeps_long_keys_as_their_digest(key_field: str | None) -> None:
    """Windows, the rise gate and the cooldown hold up to 100,000 entities: each long key is held as
    its digest, and that digest is the alert's key, so one entity stays one entity."""
    pipeline = make(SquareScorer(window=3), key_field=key_field, alert_gate_z=2, alert_cooldown_s=0)
    long_id = "é" * 600  # 600 characters, 1,200 bytes
    kafka_key = long_id.encode() if key_field is None else b"k"
    batch = [
        message(i, {"x": 0.1 * (i % 3), "y": 0, "z": 0, "id": long_id}, key=kafka_key)
        for i in range(50)
    ]
    pipeline.process_messages(batch)
    digest = "sha256:" + hashlib.sha256(long_id.encode()).hexdigest()
    held = list(pipeline._windows._history) if pipeline._windows else []
    assert held == ([digest] if key_field else [digest.encode()])
    result = pipeline.process_messages(
        [message(50, {"x": 9.0, "y": 9.0, "z": 9.0, "id": long_id}, key=kafka_key)]
    )
    assert [k for k, _ in result.alerts] == [digest.encode()]
    assert list(pipeline._windows._history) == held  # still one entity


def test_shrink_drops_the_echo_and_keeps_the_accounting() -> None:
    pipeline = make(alert_gate_z=0, max_original_bytes=4_096)
    result = pipeline.process_messages(
        [
            message(0, {"x": 5, "y": 0, "z": 0, "note": "n" * 2_000}),
            message(1, {}, raw=b"{" * 3_000),
        ]
    )
    alert_value, dead_value = result.alerts[0][1], result.dead_letters[0][1]
    alert = Alert.model_validate_json(shrink(alert_value) or b"")
    assert alert.event is None and alert.event_truncated is None
    assert alert.alert_id == "in:0:0" and alert.score == pytest.approx(25.0)
    letter = DeadLetter.model_validate_json(shrink(dead_value) or b"")
    assert letter.original_b64 == "" and letter.truncated and letter.original_size == 3_000
    assert "invalid JSON" in letter.reason and letter.source.offset == 1
    assert len(shrink(alert_value) or b"") < 1_000 and len(shrink(dead_value) or b"") < 1_000
    # nothing left to drop: None, and the caller reports the record as undeliverable
    assert shrink(shrink(alert_value) or b"") is None and shrink(b"not json") is None
    assert shrink(orjson.dumps({"offset": 1, "score": 2.0})) is None


def test_non_finite_scores_are_dead_lettered_not_thresholded() -> None:
    class Overflowing(SquareScorer):
        def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            s, e = super().score(x)
            s[0] = np.inf
            return s, e

    result = make(Overflowing()).process_messages(
        [message(0, {"x": 1, "y": 1, "z": 1}), message(1, {"x": 0, "y": 0, "z": 0})]
    )
    assert result.valid.tolist() == [1]
    assert "not finite" in DeadLetter.model_validate_json(result.dead_letters[0][1]).reason
    assert np.isfinite(result.thresholds).all()


def test_every_kind_of_bad_input_is_dead_lettered_with_its_code() -> None:
    """Dead letters said why only in words, with the values inside them ("feature 'y' is not a
    number but null"); each now has a code from a closed set, and the feature where there is one.
    Every code the pipeline core gives is here (``unreadable`` comes from the runner alone)."""

    class Overflowing(SquareScorer):
        def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            s, e = super().score(x)
            s[x[:, 0] == 7] = np.inf
            return s, e

    bad = {
        ReasonCode.EMPTY: (b"", None),
        ReasonCode.TOO_LARGE: (b'{"x": 1, "y": 1, "z": 1, "pad": "' + b"p" * 200 + b'"}', None),
        ReasonCode.INVALID_UTF8: (b'{"x": 1, "y": 1, "z": "\xff"}', None),
        ReasonCode.INVALID_JSON: (b'{"x": NaN, "y": 1, "z": 1}', None),
        ReasonCode.NOT_OBJECT: (b"[1, 2, 3]", None),
        ReasonCode.MISSING_FEATURE: (b'{"x": 1, "z": 1}', "y"),
        ReasonCode.NOT_NUMBER: (b'{"x": 1, "y": null, "z": 1}', "y"),
        ReasonCode.NOT_FINITE: (b'{"x": 1, "y": 1, "z": 1e39}', "z"),
        ReasonCode.SCORE_NOT_FINITE: (b'{"x": 7, "y": 1, "z": 1}', None),
    }
    assert set(bad) == set(ReasonCode) - {ReasonCode.UNREADABLE}
    good = message(0, {"x": 0.1, "y": 0.1, "z": 0.1})
    batch = [good] + [message(i + 1, {}, raw=raw) for i, (raw, _) in enumerate(bad.values())]
    result = make(Overflowing(), max_message_bytes=100).process_messages(batch)
    assert result.valid.tolist() == [0]
    letters = [DeadLetter.model_validate_json(v) for _, v in result.dead_letters]
    assert [(d.reason_code, d.feature) for d in letters] == list(
        zip(bad, [f for _, f in bad.values()], strict=True)
    )
    assert letters[6].reason == "feature 'y' is not a number but null"  # the words as they were
    assert all(orjson.loads(v)["reason_code"] in set(ReasonCode) for _, v in result.dead_letters)


def test_windowed_scorer_gets_each_entitys_window() -> None:
    scorer = SquareScorer(window=3)
    pipeline = make(scorer, key_field="id")
    batch = [message(i, {"x": float(i), "y": 0, "z": 0, "id": "ab"[i % 2]}) for i in range(6)]
    pipeline.process_messages(batch[:3])
    pipeline.process_messages(batch[3:])
    windows = np.concatenate(scorer.seen)[:, :, 0]  # (6, 3) x values
    np.testing.assert_array_equal(
        windows,
        [[0, 0, 0], [1, 1, 1], [0, 0, 2], [1, 1, 3], [0, 2, 4], [1, 3, 5]],
    )


def test_swap_model_resets_threshold_and_keeps_windows_when_inputs_match() -> None:
    pipeline = make(SquareScorer(window=2), alert_gate_z=0)  # the gate's reset: its own test
    pipeline.process_messages([message(0, {"x": 1.0, "y": 0, "z": 0})])
    new = SquareScorer(window=2, version="v2", train_scores=np.linspace(0, 100, 1_000))
    pipeline.swap_model(new)
    assert pipeline.scorer is new and pipeline.threshold.get() > 90
    pipeline.process_messages([message(1, {"x": 2.0, "y": 0, "z": 0})])
    np.testing.assert_array_equal(new.seen[-1][0, :, 0], [1.0, 2.0])  # history carried over
    alerts = pipeline.process_messages([message(2, {"x": 20.0, "y": 0, "z": 0})]).alerts
    assert Alert.model_validate_json(alerts[0][1]).model.version == "v2"


class _OtherFeatures(SquareScorer):
    features = ("x", "y", "w")


def test_a_model_whose_features_the_stream_lacks_is_refused_and_one_that_fits_is_not() -> None:
    """A swap to a model needing field w, which the events do not carry, would dead-letter every event
    from then on: it is refused, and the running model goes on; once the events carry w, it fits."""
    pipeline = make(alert_gate_z=0)
    old = pipeline.scorer
    pipeline.process_messages([message(i, {"x": 0.1, "y": 0.2, "z": 0.3}) for i in range(100)])
    new = _OtherFeatures(version="v2")
    with pytest.raises(
        ValueError, match=r"reads 64 and the new one would read 0 \(64 x missing_feature 'w'\)"
    ):
        pipeline.swap_model(new)
    assert pipeline.scorer is old
    result = pipeline.process_messages([message(100, {"x": 0.1, "y": 0.2, "z": 0.3})])
    assert len(result.scores) == 1 and not result.dead_letters  # still scoring
    # the last 64 events, across batches: 40 with w of 64 is more than half of what the old reads
    for i in range(40):
        pipeline.process_messages([message(101 + i, {"x": 0.1, "y": 0.2, "z": 0.3, "w": 0.0})])
    pipeline.swap_model(new)
    assert pipeline.scorer is new


def test_the_swap_check_does_not_judge_on_a_handful_of_events() -> None:
    """One stray event without w in a batch of its own must not refuse a model that fits the stream,
    nor would a model be judged on it before the stream has shown enough."""
    pipeline = make(alert_gate_z=0)
    with_w = {"x": 0.1, "y": 0.2, "z": 0.3, "w": 0.0}
    pipeline.process_messages([message(i, with_w) for i in range(30)])
    pipeline.process_messages([message(30, {"x": 0.1, "y": 0.2, "z": 0.3})])  # the last batch
    pipeline.swap_model(_OtherFeatures(version="v2"))
    assert pipeline.scorer.version == "v2"
    early = make(alert_gate_z=0)
    early.process_messages([message(i, {"x": 0.1, "y": 0.2, "z": 0.3}) for i in range(5)])
    early.swap_model(_OtherFeatures(version="v2"))  # 5 events: too few to judge
    assert early.scorer.version == "v2"


def test_empty_batch() -> None:
    result = make().process_messages([])
    assert result.n_messages == 0 and not result.alerts and not result.dead_letters


def test_alert_cooldown_publishes_one_alert_per_key_within_its_period() -> None:
    """Every event over the threshold stays an alert decision; per entity, alerts within the cooldown
    (in Kafka timestamps) after a published one are not published. The entity is the key field when
    configured, else the Kafka key."""
    hot = {"x": 9.0, "y": 9.0, "z": 9.0}
    for by_field in (True, False):
        events = {"key_field": "id"} if by_field else {}
        pipeline = make(alert_cooldown_s=3.0, **events)
        published: list[int] = []
        for lo in (0, 4):  # two batches: the quiet period carries over
            batch = [
                Message(
                    value=orjson.dumps({**hot, **({"id": f"e{i % 2}"} if by_field else {})}),
                    key=b"same" if by_field else f"e{i % 2}".encode(),
                    topic="in",
                    partition=0,
                    offset=i,
                    timestamp_ms=1_000 * i,  # one event a second
                )
                for i in range(lo, lo + 4)
            ]
            result = pipeline.process_messages(batch)
            assert result.alert_mask.all()
            assert len(result.alerts) == int(result.published.sum())
            published += [lo + k for k, p in enumerate(result.published.tolist()) if p]
        # e0 at 0 s, quiet until 3 s: 2 s suppressed, 4 s published, 6 s suppressed; e1 likewise
        assert published == [0, 1, 4, 5], by_field
    pipeline = make(alert_cooldown_s=0)
    result = pipeline.process_messages([message(i, hot) for i in range(3)])
    assert len(result.alerts) == 3


def test_gate_publishes_a_keys_sustained_rise_and_not_its_lone_outliers() -> None:
    """Scores over the threshold stay alert decisions; the gate publishes those of a key whose recent
    scores stand out from its own history, and each published alert says by how much (``rise``).

    The long statistics start from the prior (the held-back scores) and forget it over about the long
    span: at the default 3,000 events the rise is published from its sixth event, at 1,000 from its
    second (the longer span cost this; NAB gained, see streamer.gate)."""
    rng = np.random.default_rng(3)
    normal = rng.normal(0.0, 0.3, (3_000, 3))

    def run(gate_z: float, long: int = DEFAULT_LONG) -> tuple[list[int], list[Alert]]:
        pipeline = make(
            key_field="id", alert_cooldown_s=0, alert_gate_z=gate_z, alert_gate_long=long
        )
        rows = [dict(zip(FEATURES, r, strict=True)) for r in normal.tolist()]
        rows[1_000] = {"x": 2.0, "y": 0.0, "z": 0.0}  # a lone outlier: over the threshold
        for i in range(2_000, 2_020):  # a sustained rise, each event about as far out
            rows[i] = {"x": 2.0, "y": 0.0, "z": 0.0}
        batch = [message(i, {**r, "id": "s1"}) for i, r in enumerate(rows)]
        published, alerts = [], []
        for lo in range(0, len(batch), 500):
            result = pipeline.process_messages(batch[lo : lo + 500])
            assert result.alert_mask[result.published].all()  # only alert decisions are published
            published += (lo + np.flatnonzero(result.published)).tolist()
            alerts += [Alert.model_validate_json(v) for _, v in result.alerts]
        return published, alerts

    off, alerts_off = run(0.0)
    on, alerts_on = run(2.0)
    assert 1_000 in off and 1_000 not in on
    # published once the short mean has risen
    assert set(range(2_005, 2_020)) <= set(on) and 2_004 not in on
    assert set(range(2_001, 2_020)) <= set(run(2.0, long=1_000)[0])
    assert set(on) < set(off)
    assert all(a.rise is None for a in alerts_off)
    assert all(a.rise is not None and a.rise >= 2.0 for a in alerts_on)


def test_alert_cap_auto_follows_the_gate() -> None:
    """Where the rise gate chooses what is published (a windowed model), alerting scores lift the
    threshold with a headroom of 50 %; elsewhere 5 %. An explicit cap holds for any model."""
    assert make().threshold.alert_cap == DEFAULT_ALERT_CAP == 1.05
    windowed = make(SquareScorer(window=4))
    assert windowed.threshold.alert_cap == GATED_ALERT_CAP == 1.5
    assert make(SquareScorer(window=4), alert_gate_z=0).threshold.alert_cap == DEFAULT_ALERT_CAP
    assert make(alert_gate_z=3.0).threshold.alert_cap == GATED_ALERT_CAP  # gate on: the gated cap
    windowed.swap_model(SquareScorer())  # the threshold is made anew for the new model
    assert windowed.threshold.alert_cap == DEFAULT_ALERT_CAP
    fixed = Pipeline(
        SquareScorer(window=4), ThresholdSettings(alert_cap=1.2), EventSettings(), now=lambda: NOW
    )
    assert fixed.threshold.alert_cap == 1.2
    assert ThresholdSettings(alert_cap=1.2).cap(gated=False) == 1.2


def test_gate_spans_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="alert_gate_short"):
        EventSettings(alert_gate_short=50, alert_gate_long=50)


def test_gate_auto_is_on_for_windowed_models_only() -> None:
    assert make().gate is None  # a model of single events: one event can be the whole incident
    windowed = make(SquareScorer(window=4))
    assert windowed.gate is not None and windowed.gate.z == DEFAULT_GATE_Z
    assert (
        make(alert_gate_z=3.0).gate is not None
        and make(SquareScorer(window=4), alert_gate_z=0).gate is None
    )
    windowed.swap_model(SquareScorer())  # the gate follows the model
    assert windowed.gate is None


def test_swap_model_restarts_the_gate_from_the_new_scores() -> None:
    pipeline = make(alert_gate_z=2.0)
    pipeline.process_messages([message(i, {"x": 1.0, "y": 0, "z": 0}) for i in range(10)])
    assert pipeline.gate is not None and len(pipeline.gate) == 1
    pipeline.swap_model(SquareScorer(version="v2", train_scores=np.linspace(0, 100, 1_000)))
    assert pipeline.gate is not None and len(pipeline.gate) == 0
    # 150 is over the new threshold (99), but one such score lifts the short mean of the new scores
    # (mean 50, sd 29) by 0.6 sd only; from the old model's scores it would be a rise of over 100 sd
    result = pipeline.process_messages([message(10, {"x": 150**0.5, "y": 0, "z": 0})])
    assert result.alert_mask.all() and not result.published.any()


def test_a_model_that_cannot_score_leaves_the_running_one_in_place() -> None:
    class Broken(SquareScorer):
        def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            raise RuntimeError("expected scalar type Float but found Double")

    pipeline = make(alert_gate_z=0)
    old_scorer, old_threshold, old_decoder = pipeline.scorer, pipeline.threshold, pipeline.decoder
    with pytest.raises(RuntimeError, match="Double"):
        pipeline.swap_model(Broken(version="v2"))
    assert pipeline.scorer is old_scorer and pipeline.threshold is old_threshold
    assert pipeline.decoder is old_decoder
    result = pipeline.process_messages([message(0, {"x": 5, "y": 0, "z": 0})])
    assert len(result.alerts) == 1  # still scoring with the old model


def test_an_event_stamped_far_in_the_future_does_not_mute_its_entity() -> None:
    """One event from a wrong clock, stamped in 2100, set the entity's quiet period to 2100 + 300 s:
    every later alert of that entity was suppressed (bar one scoring 8 times as much)."""
    clock = [NOW]
    pipeline = Pipeline(
        SquareScorer(),
        ThresholdSettings(q=0.99),
        EventSettings(key_field="id", alert_gate_z=0),  # cooldown 300 s, escalation 8: defaults
        now=lambda: clock[0],
    )

    def event(i: int, x: float, at: datetime) -> Message:
        value = orjson.dumps({"id": "pump-7", "x": x, "y": 0, "z": 0})
        return Message(value, b"pump-7", "in", 0, i, int(at.timestamp() * 1000))

    wrong = datetime(2100, 1, 1, tzinfo=UTC)
    assert len(pipeline.process_messages([event(0, 3.0, wrong)]).alerts) == 1
    published = []
    for i in range(1, 4):  # 10 minutes apart, each stamped as it happens
        clock[0] = NOW + timedelta(minutes=10 * i)
        result = pipeline.process_messages([event(i, 5.0, clock[0])])
        assert result.alert_mask.all()
        published.append(len(result.alerts))
    assert published == [1, 1, 1]
    # Within the cooldown of its last alert the entity is still quiet: the rule itself holds.
    clock[0] += timedelta(minutes=1)
    assert not pipeline.process_messages([event(9, 5.0, clock[0])]).alerts


def test_windows_are_built_a_chunk_at_a_time_with_the_same_scores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch of 5,000 events at window 256 and 256 features built 1.3 GB of windows at once."""
    rng = np.random.default_rng(0)
    batch = [
        message(i, {"x": float(v[0]), "y": float(v[1]), "z": float(v[2])}, key=b"k%d" % (i % 7))
        for i, v in enumerate(rng.normal(size=(500, 3)))
    ]
    whole = make(SquareScorer(window=4), alert_gate_z=0).process_messages(batch)
    monkeypatch.setattr(streamer.pipeline, "WINDOW_CHUNK_BYTES", 37 * 4 * 3 * 4)  # 37 rows
    scorer = SquareScorer(window=4)
    pipeline = make(scorer, alert_gate_z=0)
    chunked = pipeline.process_messages(batch)
    assert [len(x) for x in scorer.seen] == [37] * 13 + [19]
    assert np.array_equal(chunked.scores, whole.scores)
    assert np.array_equal(chunked.alert_mask, whole.alert_mask)
    assert np.array_equal(np.concatenate(scorer.seen)[:, :, 0][:40], _windows_of(batch, 4)[:40])


def _windows_of(batch: list[Message], w: int) -> np.ndarray:
    """Each event's window of x values within its key, padded with the key's first value."""
    seen: dict[bytes | None, list[float]] = {}
    out = []
    for m in batch:
        xs = seen.setdefault(m.key, [])
        xs.append(orjson.loads(m.value)["x"])
        out.append(([xs[0]] * w + xs)[-w:])
    return np.asarray(out, dtype=np.float32)


def test_entity_windows_are_bounded_by_memory_as_well_as_by_count() -> None:
    """Window W, F features: (W - 1) x F x 4 bytes an entity; 100,000 of them at window 4,096 and
    4,096 features, both allowed in a checkpoint, would be 6.7 TB."""
    assert make(SquareScorer(window=4))._windows.max_entities == 100_000  # type: ignore[union-attr]
    small = make(SquareScorer(window=4), window_memory_mb=1)
    assert small._windows.max_entities == 2**20 // (3 * 3 * 4)  # type: ignore[union-attr]


def test_a_model_that_scores_nan_leaves_the_running_one_in_place() -> None:
    """It would have dead-lettered every event as 'score is not finite' and never alerted again."""

    class Diverged(SquareScorer):
        def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            scores, errors = super().score(x)
            return np.full_like(scores, np.nan), errors

    pipeline = make(alert_gate_z=0)
    old_scorer = pipeline.scorer
    with pytest.raises(ValueError, match="all-zero input nan"):
        pipeline.swap_model(Diverged(version="v2"))
    assert pipeline.scorer is old_scorer
    result = pipeline.process_messages([message(0, {"x": 5, "y": 0, "z": 0})])
    assert len(result.alerts) == 1 and not result.dead_letters


def _as_text(key: bytes | None) -> str | None:
    """The documented text form of a Kafka key: UTF-8, else ``base64:`` and its base64."""
    if key is None:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(key).decode("ascii")


_any_json = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=8),
        st.just("é" * 700),  # a key over MAX_KEY_BYTES in UTF-8
    ),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)
_event = st.fixed_dictionaries(
    {"x": st.floats(-1e3, 1e3), "y": st.floats(-5, 5), "z": st.integers(-3, 3)},
    optional={"id": _any_json, "ts": _any_json},
)


@given(
    st.lists(
        st.tuples(
            st.one_of(_event, st.binary(max_size=30)),
            st.one_of(st.none(), st.binary(max_size=8), st.just(b"\x00" * 2_000)),
        ),
        min_size=1,
        max_size=40,
    ),
    st.sampled_from([0.0, 300.0]),
)
def test_any_input_is_scored_or_dead_lettered_and_every_record_is_valid(
    items: list[tuple[object, bytes | None]], cooldown: float
) -> None:
    """Any key and time values (nested, huge, of any type), any Kafka key, any bytes: the pipeline
    with entity windows, the rise gate and the cooldown never raises, accounts for every message,
    and every record it builds validates against its schema and stays small."""
    pipeline = make(
        SquareScorer(window=3),
        key_field="id",
        time_field="ts",
        alert_gate_z=1.0,
        alert_cooldown_s=cooldown,
    )
    batch = [
        message(i, payload, key=key, raw=payload if isinstance(payload, bytes) else None)
        for i, (payload, key) in enumerate(items)
    ]
    result = pipeline.process_messages(batch)
    assert sorted(result.valid.tolist() + result.dead_index) == list(range(len(batch)))
    for key, value in result.alerts:
        alert = Alert.model_validate_json(value)
        assert alert.key == _as_text(key)
        assert len(value) < 20_000 and (key is None or len(key) <= MAX_KEY_BYTES)
    for key, value in result.dead_letters:
        DeadLetter.model_validate_json(value)
        assert len(value) < 20_000 and (key is None or len(key) <= MAX_KEY_BYTES)


def test_kafka_keys_that_are_not_utf8_stay_distinct_entities_in_alerts() -> None:
    """Two entities whose Kafka keys differ only in bytes that are not UTF-8 get two alert keys: the
    alert's Kafka key is the input's key, its text the key's base64 (a lossy decode gave both
    '\\ufffd\\x00\\x01')."""
    keys = [b"\xff\x00\x01", b"\xfe\x00\x01"]
    batch = [message(i, {"x": 50.0, "y": 0, "z": 0}, key=k) for i, k in enumerate(keys)]
    batch.append(message(2, {}, key=keys[0], raw=b"{oops"))
    result = make().process_messages(batch)
    assert [k for k, _ in result.alerts] == keys
    texts = [Alert.model_validate_json(v).key for _, v in result.alerts]
    assert texts == ["base64:/wAB", "base64:/gAB"]
    assert DeadLetter.model_validate_json(result.dead_letters[0][1]).key == "base64:/wAB"


_LONG = b"k" * 2_000
_LONG_DIGEST = b"sha256:" + hashlib.sha256(_LONG).hexdigest().encode()


def test_no_two_kafka_keys_share_a_published_key() -> None:
    """b'\\xff' and the text key 'base64:/w==' were both published as 'base64:/w==', and the text key
    'sha256:<hex>' as a long key's digest (one entity too in the cooldown, windows and gate). A key
    that begins with a reserved prefix is now encoded; every ordinary key is as it was."""
    keys = [b"\xff", b"base64:/w==", _LONG, _LONG_DIGEST, b"sha256:", b"sensor-03", "é".encode()]
    texts = [key_text(k) for k in keys]
    assert len(set(texts)) == len(keys)
    assert texts[0] == "base64:/w==" and texts[2] == _LONG_DIGEST.decode()
    assert texts[5:] == ["sensor-03", "é"]  # ordinary keys unchanged
    assert [bound_key(k) for k in (b"sensor-03", b"base64", b"x-sha256:1")] == [
        b"sensor-03",
        b"base64",
        b"x-sha256:1",
    ]
    # through the pipeline, with the cooldown on: four entities, four alerts, four keys
    batch = [message(i, {"x": 50.0, "y": 0, "z": 0}, key=k) for i, k in enumerate(keys[:4])]
    result = make(alert_gate_z=0).process_messages(batch)
    alerts = [Alert.model_validate_json(v) for _, v in result.alerts]
    assert [a.key for a in alerts] == texts[:4]
    assert len({k for k, _ in result.alerts}) == 4  # their Kafka keys are distinct too


@pytest.mark.parametrize("key_field", ["id", None])
def test_a_key_that_looks_like_a_digest_is_another_entity(key_field: str | None) -> None:
    """A key field (or Kafka key) 'sha256:<hex of a long key>' shared the long key's state: with the
    cooldown on, the second alert was muted as the same entity's, under the same key."""
    long_id, digest = _LONG.decode(), _LONG_DIGEST.decode()
    ids = [long_id, digest, "base64:" + base64.b64encode(b"\x01").decode(), "plain"]
    batch = [
        message(
            i, {"x": 50.0, "y": 0, "z": 0, "id": v}, key=v.encode() if key_field is None else b"k"
        )
        for i, v in enumerate(ids)
    ]
    result = make(key_field=key_field, alert_gate_z=0).process_messages(batch)
    alerted = [Alert.model_validate_json(v).key for _, v in result.alerts]
    assert len(alerted) == 4 and len(set(alerted)) == 4
    assert alerted[0] == digest and alerted[3] == "plain"


@given(st.lists(st.tuples(st.sampled_from([b"", b"base64:", b"sha256:"]), st.binary(max_size=12))))
def test_key_text_tells_any_two_keys_apart(parts: list[tuple[bytes, bytes]]) -> None:
    keys = {prefix + rest for prefix, rest in parts}
    assert len({key_text(k) for k in keys}) == len(keys)


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_an_alerting_event_nested_deeper_than_the_writer_goes_is_published_without_its_echo() -> (
    None
):
    """A 546-byte event with a field nested 260 deep, which alerts: the alert used to raise
    PydanticSerializationError (maximum depth) out of the pipeline, on every restart."""
    raw = b'{"x":100,"y":1,"z":1,"id":"s1","ts":"t1","n":' + _nested(260) + b"}"
    result = make(key_field="id", time_field="ts").process_messages([message(0, {}, raw=raw)])
    assert result.valid.tolist() == [0] and len(result.alerts) == 1
    alert = Alert.model_validate_json(result.alerts[0][1])
    assert (alert.key, alert.event_time, alert.event) == ("s1", "t1", None)
    assert alert.event_truncated == raw.decode()


@pytest.mark.parametrize(
    "extra",
    [
        b'"other":1e400',  # beyond float64 in a field the model does not read
        b'"other":' + b"9" * 4_400,  # past Python's 4,300-digit integer limit
        b'"other":' + _nested(1_000),  # deeper than msgspec reads (RecursionError)
        b'"id":1e400',  # the key field itself beyond float64
    ],
    ids=["inf", "long-int", "deep", "inf-key"],
)
@pytest.mark.parametrize("gate", [0.0, 2.0])
def test_whether_an_event_is_scored_does_not_depend_on_its_neighbours_or_the_gate(
    extra: bytes, gate: float
) -> None:
    """The fast path reads only the fields it needs; the message-by-message path, which a malformed
    neighbour sends the batch down, used to refuse (or raise on) what the fast path had scored."""
    raw = b'{"x":30,"y":1,"z":1,"ts":"t1",' + extra + b"}"
    if not extra.startswith(b'"id"'):
        raw = raw[:-1] + b',"id":"s1"}'
    for neighbour in (b'{"x":0.1,"y":0.1,"z":0.1}', b"{oops"):
        pipeline = make(key_field="id", time_field="ts", alert_gate_z=gate)
        result = pipeline.process_messages([message(0, {}, raw=raw), message(1, {}, raw=neighbour)])
        assert 0 in result.valid.tolist(), neighbour
        assert 0 not in result.dead_index
        alert = Alert.model_validate_json(result.alerts[0][1])
        assert alert.event_time == "t1"
        assert alert.key == ("inf" if extra.startswith(b'"id"') else "s1")


def test_an_echo_with_an_integer_past_float64_goes_out_as_text_and_can_still_shrink() -> None:
    """The echo kept a 320-digit integer exactly: orjson and float64 readers could not read the
    alert, and `shrink` (which re-reads it) could not make it smaller, so a topic that refused the
    alert as too large stopped the detector on it at every restart."""
    raw = b'{"x":30,"y":1,"z":1,"id":"s1","n":1' + b"0" * 320 + b"}"
    result = make(key_field="id", alert_gate_z=0).process_messages([message(0, {}, raw=raw)])
    record = result.alerts[0][1]
    alert = orjson.loads(record)  # every reader takes it
    assert alert["event"] is None and alert["event_truncated"] == raw.decode()
    smaller = shrink(record)
    assert smaller is not None and orjson.loads(smaller)["event_truncated"] is None
    # An alert written before, with the integer in its echo, shrinks too.
    old = record.replace(b'"event":null', b'"event":' + raw, 1)
    smaller = shrink(old)
    assert smaller is not None and b'"event":null' in smaller and len(smaller) < len(old)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "true"),
        ({"site": 0, "a": [1, "b"]}, '{"a":[1,"b"],"site":0}'),
        ([1, "b"], '[1,"b"]'),
    ],
)
def test_a_key_field_that_is_not_a_string_or_number_is_keyed_by_its_json_text(
    value: object, text: str
) -> None:
    """Python's spelling went out ("True", "{'site': 0}"): a subscriber that keys by the event's JSON
    value could not match it, and one object with its fields in another order was another entity."""
    pipeline = make(key_field="id", time_field="ts", alert_gate_z=0, alert_cooldown_s=0)
    reordered = dict(reversed(list(value.items()))) if isinstance(value, dict) else value
    batch = [
        message(i, {"x": 30, "y": 1, "z": 1, "id": v, "ts": value})
        for i, v in enumerate((value, reordered))
    ]
    alerts = [Alert.model_validate_json(r) for _, r in pipeline.process_messages(batch).alerts]
    assert [a.key for a in alerts] == [text, text]
    assert [k for k, _ in pipeline.process_messages(batch).alerts] == [text.encode()] * 2
    assert alerts[0].event_time == text


@pytest.mark.parametrize("neighbour", [b'{"x":0,"y":0,"z":0}', b"{oops"])
def test_an_event_time_past_64_bits_is_a_float_and_past_float64_its_text(neighbour: bytes) -> None:
    """Past float64 it was written as a 320-digit number no float64 reader takes; either decode path
    (a malformed neighbour sends the batch down the lenient one) gives the same."""
    pipeline = make(time_field="ts", alert_gate_z=0, alert_cooldown_s=0)
    batch = [
        message(i, {}, raw=b'{"x":30,"y":1,"z":1,"ts":' + str(t).encode() + b"}")
        for i, t in enumerate((10**30, 10**320))
    ]
    result = pipeline.process_messages([*batch, message(2, {}, raw=neighbour)])
    times = [orjson.loads(r)["event_time"] for _, r in result.alerts]
    assert times == [1e30, str(10**320)[:MAX_ECHO_CHARS]]  # text is cut, as every echo


def test_swap_to_a_windowed_model_decodes_the_key_field_as_a_fresh_pipeline_does() -> None:
    """The new decoder was built from the old model's needs: after dense -> conv, no key field, so
    every event was parsed again in Python to find its entity."""
    pipeline = make(key_field="id")
    assert pipeline.decoder.key_field is None  # dense without the gate needs no entity per row
    pipeline.swap_model(SquareScorer(window=3, version="v2"))
    fresh = make(SquareScorer(window=3), key_field="id")
    assert pipeline.decoder.key_field == fresh.decoder.key_field == "id"


@pytest.mark.parametrize(
    ("key_field", "raw", "entity"),
    [
        ("x", b'{"x":30,"y":1,"z":1}', 30),  # the key field is a feature: msgspec read 30.0
        (
            "id",
            b'{"x":30,"y":1,"z":1,"id":123456789012345678901234567890}',
            "1.2345678901234568e+29",
        ),
        (  # msgspec kept the nested int exact, orjson read a float: two entities
            "id",
            b'{"x":30,"y":1,"z":1,"id":{"k":1000000000000000000000000000000}}',
            '{"k":1e+30}',
        ),
    ],
    ids=["key-is-a-feature", "int-beyond-64-bits", "nested-int-beyond-64-bits"],
)
def test_an_events_entity_is_the_same_on_both_decode_paths_and_in_its_alert(
    key_field: str, raw: bytes, entity: object
) -> None:
    """The gate's and windows' entity came from msgspec on the fast path and from orjson on the slow
    one, which a malformed neighbour picks: '30.0' or 30, an exact int or a float."""
    for neighbour in (b'{"x":0.1,"y":0.1,"z":0.1}', b"{oops"):
        pipeline = make(SquareScorer(window=3), key_field=key_field)
        batch = [message(0, {}, raw=raw), message(1, {}, raw=neighbour)]
        decoded = pipeline.decoder.decode([m.value for m in batch])
        assert pipeline._entities(batch.__getitem__, decoded)[0] == entity, neighbour
        result = pipeline.process_messages(batch)
        assert Alert.model_validate_json(result.alerts[0][1]).key == str(entity)


# `streamer schema`: one self-contained JSON Schema document for the records subscribers read, and
# what the detector writes validates against it (jsonschema, draft 2020-12).
def _schema_records() -> tuple[list[dict], list[dict]]:
    """Alerts and dead letters from a batch with the awkward cases: a truncated echo, keys that are
    not UTF-8 or too long, key fields that are objects or booleans, malformed messages."""
    pipeline = Pipeline(
        SquareScorer(),
        ThresholdSettings(q=0.99),
        EventSettings(key_field="id", time_field="ts", alert_gate_z=0, alert_cooldown_s=0),
    )
    events = [
        ({"x": 30, "y": 1, "z": 1, "id": "s1", "ts": "2026-01-01T00:00:00Z"}, b"k"),
        ({"x": 30, "y": 1, "z": 1, "note": "n" * 9_000}, b"\xff\xfe"),
        ({"x": 30, "y": 1, "z": 1, "id": {"site": 1}, "ts": True}, b"k" * 3_000),
        ({"x": 30, "y": 1, "z": 1, "id": False, "ts": 1.5e30}, None),
    ]
    batch = [Message(orjson.dumps(e), k, "in", 0, i, 1_000) for i, (e, k) in enumerate(events)]
    batch += [
        Message(b"{oops", b"\xff" * 2_000, "in", 1, 0, None),
        Message(orjson.dumps({"x": "hot"}), None, "in", 1, 1, 5),
        Message(None, b"k", "in", 1, 2, 5),
    ]
    result = pipeline.process_messages(batch)
    assert len(result.alerts) == 4 and len(result.dead_letters) == 3
    return [orjson.loads(v) for _, v in result.alerts], [
        orjson.loads(v) for _, v in result.dead_letters
    ]


def test_the_document_is_one_schema_that_holds_every_record_kind() -> None:
    """It was {"alert": ..., "dead_letter": ...}: as a schema it took anything, and the $refs inside
    each part pointed at a root without $defs."""
    document = json_schemas()
    Draft202012Validator.check_schema(document)
    validator = Draft202012Validator(document)
    alerts, dead = _schema_records()
    for record in alerts + dead:
        validator.validate(record)
    score = {
        "schema_version": 1,
        "topic": "in",
        "partition": 0,
        "offset": 3,
        "score": 0.5,
        "threshold": None,
        "alert": False,
    }
    validator.validate(score)
    for wrong in ({"not": "an alert"}, {**alerts[0], "score": "high"}, {**score, "alert": 1}):
        assert not validator.is_valid(wrong)


@pytest.mark.parametrize("kind", ["alert", "dead_letter", "score"])
def test_the_published_schema_takes_fields_added_later_and_requires_the_version(kind: str) -> None:
    """The schemas said additionalProperties: false, so a subscriber validating with them would have
    refused every record once a field was added (as reason_code was); schema_version was not
    required, and score records had none. Records are still built strictly."""
    alerts, dead = _schema_records()
    score = {"schema_version": 1, "topic": "in", "partition": 0, "offset": 3, "score": 0.5}
    record = {
        "alert": alerts[0],
        "dead_letter": dead[0],
        "score": {**score, "threshold": None, "alert": False},
    }[kind]
    model = RECORDS[kind]
    for schema in (json_schema(kind), json_schemas()):
        validator = Draft202012Validator(schema)
        assert validator.is_valid({**record, "added_later": [1]})
        if "source" in record:
            assert validator.is_valid({**record, "source": {**record["source"], "added_later": 1}})
        without_version = {k: v for k, v in record.items() if k != "schema_version"}
        # score records had no version before it was added: theirs is optional (absent means 1)
        assert validator.is_valid(without_version) == (kind == "score")
        assert not validator.is_valid({**record, "schema_version": 2})
    assert model.model_validate(record).schema_version == 1
    with pytest.raises(ValidationError, match="added_later"):
        model.model_validate({**record, "added_later": 1})


def test_records_written_before_fields_were_added_still_validate() -> None:
    """Dead letters before reason_code and feature, and score records before schema_version, carry
    version 1 too (or none): the published schema and the models must still take them."""
    _, dead = _schema_records()
    old_dead = {k: v for k, v in dead[0].items() if k not in ("reason_code", "feature")}
    old_score = {"topic": "in", "partition": 0, "offset": 3, "score": 0.5, "threshold": None}
    old_score["alert"] = False
    for kind, record in (("dead_letter", old_dead), ("score", old_score)):
        for schema in (json_schema(kind), json_schemas()):
            errors = [e.message for e in Draft202012Validator(schema).iter_errors(record)]
            assert not errors, (kind, errors)
        assert RECORDS[kind].model_validate(record).schema_version == 1
    assert DeadLetter.model_validate(old_dead).reason_code is None
    # but what the detector writes now always has them
    assert dead[0]["reason_code"] is not None and "feature" in dead[0]


@pytest.mark.parametrize("kind", ["alert", "dead_letter", "score"])
def test_each_record_kind_has_a_schema_of_its_own(
    kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["schema", kind]) == 0
    schema = orjson.loads(capsys.readouterr().out)
    assert schema == json_schema(kind)
    validator = Draft202012Validator(schema)
    alerts, dead = _schema_records()
    mine = {"alert": alerts, "dead_letter": dead, "score": []}[kind]
    others = {"alert": dead, "dead_letter": alerts, "score": alerts + dead}[kind]
    assert all(validator.is_valid(r) for r in mine)
    assert not any(validator.is_valid(r) for r in others)


def test_the_cooldown_is_auto_by_novelty_and_follows_a_swap() -> None:
    """auto: 120 s where novelty weighs the scores (NAB's best with it), else 300 s (its best
    without): here a windowed model of three features, which auto leaves without novelty."""
    assert EventSettings().alert_cooldown_s == "auto"
    single = make()
    assert single.cooldown.cooldown_ms == 300_000
    assert make(SquareScorer(window=4)).cooldown.cooldown_ms == 300_000
    assert make(SquareScorer(window=4), novelty=True).cooldown.cooldown_ms == 120_000
    forced = make(novelty=True)  # novelty needs windows: a model of single events has none
    forced.swap_model(SquareScorer(window=4, version="v2"))
    assert forced.cooldown.cooldown_ms == 120_000
    assert make(alert_cooldown_s=7).cooldown.cooldown_ms == 7_000
    with pytest.raises(ValueError, match="alert_cooldown_s"):
        EventSettings(alert_cooldown_s="often")  # type: ignore[arg-type]
