"""What the detector publishes: alerts on the alert topic, dead letters on the dead-letter topic.

Both are pydantic models, so every record is validated before it is produced, and their JSON schema
(``streamer schema``) is the contract with the services that subscribe to the topics.

Schema evolution: every record carries ``schema_version``. A field may be added without changing it;
a change of a field's meaning or type, a field removed, or a value added to a closed set (a reason
code, a model kind) changes it. So the published schema allows properties it does not name, and
subscribers ignore them, while the records themselves are built strictly (``extra="forbid"``).
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

SCHEMA_VERSION = 1  # bump with the Literals below when a field changes (module docstring)
# Keys are echoed twice in every record (as its Kafka key and in its JSON), and a key is read from the
# network: one longer than this is published as "sha256:<hex digest>" of its bytes (stable per entity).
MAX_KEY_BYTES = 1_024
# The prefixes of keys that stand for others (a digest, an encoding): a key that begins with one itself
# is published encoded (``bound_key``), so that no key is published as another key's form.
RESERVED_KEY_PREFIXES = ("base64:", "sha256:")
RESERVED_KEY_BYTES = tuple(p.encode("ascii") for p in RESERVED_KEY_PREFIXES)
# Strings echoed from an event (its time field) are cut at this many characters.
MAX_ECHO_CHARS = 256


def _open_schema(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """A record's published schema: open to fields added later, and requiring only the fields its
    version had from the start (records written before a field was added carry the same version)."""
    schema["additionalProperties"] = True
    added = getattr(model, "ADDED_WITHIN_VERSION", ())
    if added and "required" in schema:
        schema["required"] = [name for name in schema["required"] if name not in added]


class _Record(BaseModel):
    # Strict where records are built, open where they are read: the schema's additionalProperties is
    # true, so a subscriber validating with it takes a field added later. Every field is written (none
    # is left out for being at its default), so the serialization schema requires them all, except
    # those added within the current version (ADDED_WITHIN_VERSION), which older records lack.
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra=_open_schema,
        json_schema_serialization_defaults_required=True,
    )
    ADDED_WITHIN_VERSION: ClassVar[tuple[str, ...]] = ()


class Source(_Record):
    """Where the event was read: enough to find it again in Kafka."""

    topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    timestamp_ms: int | None = Field(default=None, description="Kafka message timestamp")


class ModelRef(_Record):
    name: str
    version: str
    kind: Literal["dense", "conv", "vae", "hst", "pca"]


class FeatureContribution(_Record):
    """One feature's part in the reconstruction error."""

    feature: str
    value: float = Field(description="the event's value, in the event's units")
    error: float = Field(
        ge=0,
        description="this feature's squared reconstruction error (scaled units; dense and conv: "
        "divided by its typical error on held-back normal data)",
    )
    share: float = Field(ge=0, le=1, description="error / total error of the event")


SCORE_DESCRIPTION = (
    "the anomaly score: the model's reconstruction error; where novelty weighs it (events.novelty, "
    "on by default for windowed models of one feature), the error's square root times the "
    "novelty of the event's window over its key's typical novelty"
)


class Alert(_Record):
    """An event whose anomaly score exceeded the adaptive threshold."""

    schema_version: Literal[1] = 1
    alert_id: str = Field(
        description="'topic:partition:offset' of the event; stable across redelivery"
    )
    key: str | None = Field(
        description="entity key (key field, else the Kafka key), also the Kafka key; a Kafka key "
        "that is not UTF-8, or a key that begins with 'base64:' or 'sha256:', is given here as "
        f"'base64:' and its base64; a key over {MAX_KEY_BYTES} bytes is given as 'sha256:' and the "
        "hex digest of its UTF-8 bytes"
    )
    event_time: str | float | int | None = Field(
        description=f"time field of the event, else None (a string cut at {MAX_ECHO_CHARS} "
        "characters)"
    )
    source: Source
    score: float = Field(description=SCORE_DESCRIPTION)
    threshold: float
    q: float = Field(gt=0, lt=1)
    model: ModelRef
    top_features: list[FeatureContribution]
    rise: float | None = Field(
        default=None,
        description="the key's recent scores (their square roots) above its own history, in "
        "standard deviations (events.alert_gate_z); None with the gate off",
    )
    detected_at: datetime
    event: dict[str, Any] | None = Field(
        description="the original event, when within the size bound (and the alert within the "
        "topic's record size limit)"
    )
    event_truncated: str | None = Field(
        default=None, description="the first bytes of an event too large to echo whole"
    )


class ReasonCode(StrEnum):
    """Why a message was dead-lettered, for machines (``DeadLetter.reason`` says it for people)."""

    EMPTY = "empty"  # no bytes, or no value at all
    TOO_LARGE = "too_large"  # over events.max_message_bytes
    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"  # NaN and Infinity included: they are not JSON
    NOT_OBJECT = "not_object"  # JSON, but not an object
    MISSING_FEATURE = "missing_feature"
    NOT_NUMBER = "not_number"  # a feature that is a string, boolean, null, array or object
    NOT_FINITE = "not_finite"  # a feature beyond float32's range
    SCORE_NOT_FINITE = "score_not_finite"  # the model's score of the event overflowed
    UNREADABLE = "unreadable"  # the consumer could not read the record's batch (no bytes kept)


class DeadLetter(_Record):
    """An input message that could not be scored, with the reason and the (bounded) original bytes."""

    ADDED_WITHIN_VERSION = ("reason_code", "feature")

    schema_version: Literal[1] = 1
    reason: str = Field(description="why, for people: the code's meaning with the values concerned")
    reason_code: ReasonCode | None = Field(
        default=None,
        description="why, as one of a closed set of codes (always written; absent or null only in "
        "dead letters written before codes were added)",
    )
    feature: str | None = Field(
        default=None,
        description="the feature concerned (missing_feature, not_number, not_finite), else null",
    )
    source: Source
    key: str | None = Field(
        description="the Kafka key as UTF-8 text, or 'base64:' and its base64 where it is not "
        "UTF-8 or begins with 'base64:' or 'sha256:'; a key over "
        f"{MAX_KEY_BYTES} bytes is given as 'sha256:' and the hex digest of its bytes"
    )
    original_b64: str = Field(
        description="base64 of the original bytes, at most the configured bound (none when the "
        "dead letter would exceed the topic's record size limit)"
    )
    original_size: int = Field(ge=0)
    truncated: bool
    dead_lettered_at: datetime


def bound_key(key: bytes | None) -> bytes | None:
    """The key as published: as it came; ``sha256:<hex>`` of it when over ``MAX_KEY_BYTES``; and
    ``base64:`` and its base64 when it begins with ``base64:`` or ``sha256:`` itself, so that a key
    such as ``sha256:<hex of another key>`` is not published as that other key's digest.

    >>> bound_key(b"sensor-03"), bound_key(b"sha256:ab")
    (b'sensor-03', b'base64:c2hhMjU2OmFi')
    """
    if key is None:
        return None
    if len(key) > MAX_KEY_BYTES:
        return b"sha256:" + hashlib.sha256(key).hexdigest().encode("ascii")
    if key.startswith(RESERVED_KEY_BYTES):
        return b"base64:" + base64.b64encode(key)
    return key


def bound_text(bounded: bytes | None) -> str | None:
    """A key that ``bound_key`` returned, as text: its UTF-8 text, else ``base64:`` and its base64."""
    if bounded is None:
        return None
    try:
        return bounded.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(bounded).decode("ascii")


def key_text(key: bytes | None) -> str | None:
    """The key as records give it, text that tells any two keys apart: a UTF-8 key as it is (one that
    begins with ``base64:`` or ``sha256:`` excepted), else ``base64:`` and the base64 of its bytes,
    and ``sha256:`` and the hex digest of a key over ``MAX_KEY_BYTES``.

    >>> key_text(b"sensor-03"), key_text(b"\\xff"), key_text(b"base64:/w==")
    ('sensor-03', 'base64:/w==', 'base64:YmFzZTY0Oi93PT0=')
    """
    return bound_text(bound_key(key))


def shrink(value: bytes) -> bytes | None:
    """A smaller form of a record that a topic refused as too large, or None if it has none.

    The alert loses its echo of the event (``event`` and ``event_truncated`` become null) and the dead
    letter its original bytes (``original_b64`` empty, ``truncated`` true); everything else stays, so
    the event is still accounted for and can be found again by its source coordinates.
    """
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError:
        try:  # a number orjson does not read (an integer past float64) must not block the shrink
            record = json.loads(value)
        except (ValueError, RecursionError):
            return None
    if not isinstance(record, dict):
        return None
    if "alert_id" in record and (record.get("event") or record.get("event_truncated")):
        record["event"] = record["event_truncated"] = None
    elif "reason" in record and record.get("original_b64"):
        record["original_b64"], record["truncated"] = "", True
    else:
        return None
    try:
        return orjson.dumps(record)
    except orjson.JSONEncodeError:
        return json.dumps(record, separators=(",", ":")).encode("ascii")


def dead_letter(
    code: ReasonCode,
    reason: str,
    source: Source,
    key: bytes | None,
    value: bytes | None,
    max_bytes: int,
    now: datetime,
    feature: str | None = None,
) -> bytes:
    """The dead-letter record for one message, as JSON bytes."""
    value = value or b""
    kept = value[:max_bytes]
    record = DeadLetter(
        reason=reason,
        reason_code=code,
        feature=feature,
        source=source,
        key=key_text(key),
        original_b64=base64.b64encode(kept).decode("ascii"),
        original_size=len(value),
        truncated=len(kept) < len(value),
        dead_lettered_at=now,
    )
    return to_json(record)


def to_json(record: BaseModel) -> bytes:
    """The record as compact JSON, by pydantic-core's serializer (one call, no intermediate dict)."""
    return record.__pydantic_serializer__.to_json(record)


# Documents what streamer.runner writes to the scores topic: built there as a plain dict, for speed;
# the tests validate what it writes against this model's schema.
class ScoreRecord(_Record):
    """One scored event on the optional scores topic; its Kafka key is the input message's Kafka key."""

    ADDED_WITHIN_VERSION = ("schema_version",)

    schema_version: Literal[1] = 1
    topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    score: float = Field(description=SCORE_DESCRIPTION)
    threshold: float | None = Field(
        description="the threshold the score was compared with; null while it is not yet finite"
    )
    alert: bool = Field(description="whether an alert was published for the event")


JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
RECORDS: dict[str, type[_Record]] = {
    "alert": Alert,
    "dead_letter": DeadLetter,
    "score": ScoreRecord,
}


def json_schemas() -> dict[str, Any]:
    """One self-contained JSON Schema document for every record the detector writes: valid input is
    any one of them, and each is ``#/$defs/<Model>`` (Alert, DeadLetter, ScoreRecord)."""
    _, top = models_json_schema(
        [(model, "serialization") for model in RECORDS.values()],
        title="ae-streamer output records",
    )
    defs = top["$defs"]
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": top["title"],
        "anyOf": [{"$ref": f"#/$defs/{model.__name__}"} for model in RECORDS.values()],
        "$defs": defs,
    }


def json_schema(record: str) -> dict[str, Any]:
    """The self-contained JSON Schema of one record kind: ``alert``, ``dead_letter`` or ``score``."""
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        **RECORDS[record].model_json_schema(mode="serialization"),
    }
