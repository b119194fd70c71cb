"""Bytes to a float matrix, a whole micro-batch at a time.

The fast path runs no Python code per message: ``map`` decodes every message with a msgspec decoder
typed for this model (each feature a JSON number, every other field skipped without building it), and
one ``np.array`` call converts all rows. A message that is empty, oversized, not JSON, not an object,
lacks a feature or holds a feature that is not a number fails that typed decode; its batch is then
retried in chunks, and only the chunks that fail again go message by message through orjson, naming
each failure. Rows whose values are not finite in float32 are masked out batch-wide and named. Every
message ends up either as a valid row or as a dead-letter reason (``Rejection``): nothing is dropped.

The parsed event itself (for an alert's echo and its field values as sent) is built only when asked
for, by ``DecodedBatch.event``, from the message's bytes: alerts are few, events many.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter, itemgetter
from typing import Any, NamedTuple, cast

import msgspec
import numpy as np
import orjson

from streamer.alerts import ReasonCode

_NUMERIC = (int, float)
_CHUNK = 256  # messages per retry of the fast path in a batch that holds a bad message


class Rejection(NamedTuple):
    """Why a message is not scored: its code, the reason in words, and the feature concerned if any."""

    code: ReasonCode
    reason: str
    feature: str | None = None


@dataclass(slots=True)
class DecodedBatch:
    """The valid rows of a batch and the reasons for the rest.

    ``x[i]`` is message ``valid[i]``'s features in model order and ``raw[i]`` its bytes; ``keys[i]`` the
    value of the decoder's key field (None where absent) when it has one; ``event(i)`` its parsed event.
    """

    x: np.ndarray  # (V, F) float32
    valid: np.ndarray  # (V,) int64 indices into the batch
    raw: list[bytes]  # (V,) the valid messages' bytes
    rejected: list[tuple[int, Rejection]]  # (index into the batch, why)
    keys: list[Any] | None = None  # (V,) with a key field
    objects: list[dict[str, Any]] | None = None  # (V,) parsed events, where a slow path made them
    features: tuple[str, ...] = ()  # the feature names, for an event no JSON reader can rebuild
    key_field: str | None = None  # the field ``keys`` holds, kept in such an event

    def event(self, i: int) -> dict[str, Any]:
        """Row ``i``'s parsed event (a JSON object), parsed now from its bytes if not parsed before."""
        if self.objects is not None:
            return self.objects[i]
        try:
            obj = orjson.loads(self.raw[i])
        except orjson.JSONDecodeError:
            obj = _lenient_loads(self.raw[i])
        return obj if type(obj) is dict else self.fallback_event(i)

    def fallback_event(self, i: int) -> dict[str, Any]:
        """Row ``i`` as far as the typed decoder read it (see ``_typed_event``)."""
        key = self.keys[i] if self.keys is not None else None
        return _typed_event(self.features, self.x[i].tolist(), self.key_field, key)

    def take(self, rows: np.ndarray) -> DecodedBatch:
        """Only ``rows`` (indices into the valid rows), in that order; ``rejected`` as it is."""
        idx = rows.tolist()
        return DecodedBatch(
            x=self.x[rows],
            valid=self.valid[rows],
            raw=[self.raw[j] for j in idx],
            rejected=self.rejected,
            keys=None if self.keys is None else [self.keys[j] for j in idx],
            objects=None if self.objects is None else [self.objects[j] for j in idx],
            features=self.features,
            key_field=self.key_field,
        )


class Decoder:
    """Decodes JSON events carrying the model's numeric feature fields."""

    def __init__(
        self, features: Sequence[str], max_message_bytes: int, key_field: str | None = None
    ) -> None:
        """``key_field``: a field whose value (any JSON type, None where absent) each row also keeps."""
        if not features:
            raise ValueError("a decoder needs at least one feature")
        if max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be positive, got {max_message_bytes}")
        self.features = tuple(features)
        self.max_message_bytes = max_message_bytes
        # A key field that is one of the features is not decoded as a key: the typed decoder reads it
        # as a float (30.0 where the event, and orjson, have 30), so such keys come from the events.
        self.key_field = key_field = None if key_field in self.features else key_field
        getter = itemgetter(*self.features)
        # itemgetter of one name returns a scalar; keep rows as tuples either way.
        self._pick = getter if len(self.features) > 1 else (lambda obj: (getter(obj),))
        # The typed decoder: attribute names are positional (any JSON name is allowed), renamed to
        # the fields' names in JSON. float fields take JSON numbers only: no bool, string or null.
        attrs = [f"f{i}" for i in range(len(self.features))]
        spec: list[Any] = [(a, float) for a in attrs]
        rename = dict(zip(attrs, self.features, strict=True))
        if key_field is not None:
            spec.append(("key", Any, None))
            rename["key"] = key_field
        event_type = msgspec.defstruct("Event", spec, rename=rename, gc=False)
        self._typed = msgspec.json.Decoder(event_type)
        # The features alone, for a message whose key field the typed decoder refuses (a number
        # beyond float64, say): whether a message is scored does not depend on the key field.
        features_type = msgspec.defstruct("Features", spec[: len(attrs)], rename=rename, gc=False)
        self._typed_features = msgspec.json.Decoder(features_type)
        if len(spec) == len(attrs):
            self._typed_row: Any = msgspec.structs.astuple
        elif len(attrs) > 1:
            self._typed_row = attrgetter(*attrs)
        else:
            only = attrgetter("f0")
            self._typed_row = lambda e: (only(e),)
        self._typed_key: Any = None if key_field is None else attrgetter("key")

    def decode(self, values: Sequence[bytes | None]) -> DecodedBatch:
        """Decode a batch: the fast path when every message parses to an object with all features;
        else chunk by chunk, so that one bad message sends only its chunk down the message-by-message
        path that names each failure."""
        fast = self._decode_clean(values)
        if fast is not None:
            return fast
        if len(values) <= _CHUNK:
            return self._decode_each(values)
        parts = []
        for start in range(0, len(values), _CHUNK):
            chunk = values[start : start + _CHUNK]
            parts.append((start, self._decode_clean(chunk) or self._decode_each(chunk)))
        return concat(parts)

    def _decode_clean(self, values: Sequence[bytes | None]) -> DecodedBatch | None:
        """The common case at C speed: ``map`` over the whole batch, no Python code per message.

        Returns None as soon as any message is empty, oversized, not JSON, not an object, lacks a
        feature or has one that is not a number; the caller then decodes message by message. Values
        beyond float32 do not leave the fast path: their rows are masked out and named.
        """
        if not values:
            return None
        try:
            present = cast("Sequence[bytes]", values)  # a None raises TypeError just below
            if max(map(len, present)) > self.max_message_bytes:
                return None
            events = list(map(self._typed.decode, present))
            # msgspec skips the fields it was not asked for without checking their UTF-8; orjson, and
            # so the slow path, rejects invalid UTF-8 anywhere. Every message here is a whole JSON
            # object, starting and ending in ASCII, so checking them joined checks each one.
            b"".join(present).decode("utf-8")
        except (TypeError, msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            # (ValidationError is a DecodeError; RecursionError: nesting deeper than msgspec reads)
            return None
        rows: list[tuple[Any, ...]] = list(map(self._typed_row, events))
        keys = None if self._typed_key is None else list(map(self._typed_key, events))
        with np.errstate(over="ignore"):  # every value is a float here; beyond float32 is inf
            x = np.array(rows, dtype=np.float32).reshape(len(rows), len(self.features))
        ok = np.isfinite(x).all(axis=1)
        valid = np.arange(len(rows), dtype=np.int64)
        batch = DecodedBatch(
            x=x,
            valid=valid,
            raw=list(present),
            rejected=[],
            keys=keys,
            features=self.features,
            key_field=self.key_field,
        )
        if ok.all():
            return batch
        for j in np.flatnonzero(~ok).tolist():
            batch.rejected.append((j, self._row_reason(rows[j])))
        return batch.take(np.flatnonzero(ok))

    def _keys(self, objects: list[dict[str, Any]]) -> list[Any] | None:
        if self.key_field is None:
            return None
        return list(map(dict.get, objects, [self.key_field] * len(objects)))

    def _decode_each(self, values: Sequence[bytes | None]) -> DecodedBatch:
        rows: list[tuple[Any, ...]] = []
        valid: list[int] = []
        raw: list[bytes] = []
        objects: list[dict[str, Any]] = []
        rejected: list[tuple[int, Rejection]] = []
        loads, pick, limit = orjson.loads, self._pick, self.max_message_bytes
        for i, value in enumerate(values):
            if not value:
                rejected.append((i, Rejection(ReasonCode.EMPTY, "empty message")))
                continue
            if len(value) > limit:
                reason = f"message of {len(value)} bytes exceeds the limit of {limit}"
                rejected.append((i, Rejection(ReasonCode.TOO_LARGE, reason)))
                continue
            try:
                obj = loads(value)
            except orjson.JSONDecodeError as exc:
                typed = self._typed_one(value)
                if typed is None:
                    rejected.append((i, _json_reason(exc)))
                    continue
                # What the fast path accepts is accepted here too, whatever the batch around it:
                # msgspec skips the fields it does not need more leniently than orjson reads them.
                obj, row = typed
                rows.append(row)
                valid.append(i)
                raw.append(value)
                objects.append(obj)
                continue
            if type(obj) is not dict:
                reason = f"not a JSON object but a JSON {_json_type(obj)}"
                rejected.append((i, Rejection(ReasonCode.NOT_OBJECT, reason)))
                continue
            try:
                rows.append(pick(obj))
            except KeyError as exc:
                name = exc.args[0]
                rejected.append(
                    (i, Rejection(ReasonCode.MISSING_FEATURE, f"missing feature {name!r}", name))
                )
                continue
            valid.append(i)
            raw.append(value)
            objects.append(obj)
        x, ok = self._to_matrix(rows)
        batch = DecodedBatch(
            x=x,
            valid=np.asarray(valid, dtype=np.int64),
            raw=raw,
            rejected=rejected,
            keys=self._keys(objects),
            objects=objects,
            features=self.features,
            key_field=self.key_field,
        )
        if not ok.all():
            for j in np.flatnonzero(~ok).tolist():
                rejected.append((valid[j], self._row_reason(rows[j])))
            batch = batch.take(np.flatnonzero(ok))
        rejected.sort()
        return batch

    def _typed_one(self, value: bytes) -> tuple[dict[str, Any], tuple[Any, ...]] | None:
        """A message orjson refused, read for its features as the fast path reads them: its event and
        row, or None if the fast path refuses it too (as it does anything that is not valid UTF-8)."""
        try:
            row = msgspec.structs.astuple(self._typed_features.decode(value))
            value.decode("utf-8")
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            return None
        obj = _lenient_loads(value)
        if type(obj) is not dict:
            key = None
            if self._typed_key is not None:
                with contextlib.suppress(msgspec.DecodeError, RecursionError):
                    key = self._typed_key(self._typed.decode(value))
            obj = _typed_event(self.features, row, self.key_field, key)
        return obj, row

    def _to_matrix(self, rows: list[tuple[Any, ...]]) -> tuple[np.ndarray, np.ndarray]:
        """Rows to a float32 matrix and a per-row validity mask (numeric and finite in float32)."""
        n_features = len(self.features)
        if not rows:
            return np.empty((0, n_features), dtype=np.float32), np.ones(0, dtype=bool)
        # One pass over all values at C speed: bool is not numeric here, and neither is a numeric string.
        if set(map(type, chain.from_iterable(rows))) <= {int, float}:
            # Straight to float32: each value is rounded once, as np.float32(value) rounds it.
            with np.errstate(over="ignore"):  # beyond float32 is inf: the row is masked out
                x = np.array(rows, dtype=np.float32)
            return x, cast(np.ndarray, np.isfinite(x).all(axis=1))
        numeric = np.fromiter(
            (all(type(v) in _NUMERIC for v in row) for row in rows), dtype=bool, count=len(rows)
        )
        x64 = np.zeros((len(rows), n_features), dtype=np.float64)
        if numeric.any():
            x64[numeric] = np.array(
                [r for r, ok in zip(rows, numeric, strict=True) if ok], dtype=np.float64
            )
        with np.errstate(over="ignore"):  # values beyond float32 become inf and are rejected below
            x = x64.astype(np.float32)
        return x, numeric & np.isfinite(x).all(axis=1)

    def _row_reason(self, row: tuple[Any, ...]) -> Rejection:
        for name, value in zip(self.features, row, strict=True):
            if type(value) not in _NUMERIC:
                reason = f"feature {name!r} is not a number but {_json_type(value)}"
                return Rejection(ReasonCode.NOT_NUMBER, reason, name)
            with np.errstate(over="ignore"):
                finite32 = math.isfinite(np.float32(value))
            if not math.isfinite(float(value)) or not finite32:
                reason = f"feature {name!r} is not finite in float32: {value!r}"
                return Rejection(ReasonCode.NOT_FINITE, reason, name)
        raise AssertionError("row rejected without a reason")  # the mask and this check must agree


def concat(parts: Sequence[tuple[int, DecodedBatch]]) -> DecodedBatch:
    """One batch from consecutive parts, each given with the batch index of its first message."""
    batches = [p for _, p in parts]
    keyed = all(p.keys is not None for p in batches)
    parsed = all(p.objects is not None for p in batches)
    return DecodedBatch(
        x=np.concatenate([p.x for p in batches]),
        valid=np.concatenate([p.valid + start for start, p in parts]),
        raw=[r for p in batches for r in p.raw],
        rejected=[(i + start, reason) for start, p in parts for i, reason in p.rejected],
        keys=[k for p in batches for k in p.keys or ()] if keyed else None,
        objects=[o for p in batches for o in p.objects or ()] if parsed else None,
        features=next((p.features for p in batches if p.features), ()),
        key_field=next((p.key_field for p in batches if p.key_field), None),
    )


def _typed_event(
    features: Sequence[str], row: Sequence[Any], key_field: str | None, key: Any
) -> dict[str, Any]:
    """An event as far as the typed decoder read it, for one that no JSON reader rebuilds (nesting
    deeper than Python's recursion allows): its features, and its key field where it has one."""
    obj: dict[str, Any] = dict(zip(features, row, strict=True))
    if key_field is not None and key is not None:
        obj[key_field] = key
    return obj


def _parse_int(text: str) -> int | float:
    """An integer as Python's json reads it, or, past its 4,300-digit limit, as a float (inf)."""
    return int(text) if len(text) <= 4_300 else float(text)


def _lenient_loads(raw: bytes) -> Any:
    """The event as Python's json reads it, for what the typed decoder accepts and orjson does not: a
    number beyond float64 (inf), an integer of any length, nesting deeper than orjson's limit. None
    where it cannot (nesting deeper than Python's recursion allows)."""
    try:
        return json.loads(raw, parse_int=_parse_int)
    except (ValueError, RecursionError):
        return None


def _json_reason(exc: orjson.JSONDecodeError) -> Rejection:
    msg = str(exc)
    if "utf-8" in msg.lower() or "surrogate" in msg.lower():
        return Rejection(ReasonCode.INVALID_UTF8, f"invalid UTF-8: {msg}")
    return Rejection(ReasonCode.INVALID_JSON, f"invalid JSON: {msg}")


def _json_type(value: Any) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        type(None): "null",
        int: "number",
        float: "number",
    }.get(type(value), type(value).__name__)
