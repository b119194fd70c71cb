"""What the detector publishes: alerts on the alert topic, dead letters on the dead-letter topic.

Both are pydantic models, so every record is validated before it is produced, and their JSON schema
(``streamer schema``) is the contract with the services that subscribe to the topics.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1  # bump with the Literal below when a field changes meaning


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


class Alert(_Record):
    """An event whose anomaly score exceeded the adaptive threshold."""

    schema_version: Literal[1] = 1
    alert_id: str = Field(
        description="'topic:partition:offset' of the event; stable across redelivery"
    )
    key: str | None = Field(
        description="entity key (key field, else the Kafka key), also the Kafka key"
    )
    event_time: str | float | int | None = Field(description="time field of the event, else None")
    source: Source
    score: float
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
        description="the original event, when within the size bound"
    )
    event_truncated: str | None = Field(
        default=None, description="the first bytes of an event too large to echo whole"
    )


class DeadLetter(_Record):
    """An input message that could not be scored, with the reason and the (bounded) original bytes."""

    schema_version: Literal[1] = 1
    reason: str
    source: Source
    key: str | None = Field(description="the Kafka key, decoded as UTF-8 with replacement")
    original_b64: str = Field(
        description="base64 of the original bytes, at most the configured bound"
    )
    original_size: int = Field(ge=0)
    truncated: bool
    dead_lettered_at: datetime


def decode_key(key: bytes | None) -> str | None:
    return None if key is None else key.decode("utf-8", errors="replace")


def dead_letter(
    reason: str,
    source: Source,
    key: bytes | None,
    value: bytes | None,
    max_bytes: int,
    now: datetime,
) -> bytes:
    """The dead-letter record for one message, as JSON bytes."""
    value = value or b""
    kept = value[:max_bytes]
    record = DeadLetter(
        reason=reason,
        source=source,
        key=decode_key(key),
        original_b64=base64.b64encode(kept).decode("ascii"),
        original_size=len(value),
        truncated=len(kept) < len(value),
        dead_lettered_at=now,
    )
    return to_json(record)


def to_json(record: BaseModel) -> bytes:
    """The record as compact JSON, by pydantic-core's serializer (one call, no intermediate dict)."""
    return record.__pydantic_serializer__.to_json(record)


def json_schemas() -> dict[str, Any]:
    """The JSON schemas of both records, as documented in the README."""
    return {"alert": Alert.model_json_schema(), "dead_letter": DeadLetter.model_json_schema()}
