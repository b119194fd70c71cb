"""Bytes to a float matrix, a whole micro-batch at a time.

The fast path runs no Python code per message: ``map`` parses every message with orjson, checks that
each is an object, picks the feature fields with one ``itemgetter`` and converts all rows with a single
``np.array`` call. A batch that holds an empty, oversized, unparsable, non-object or incomplete message
is retried in chunks, and only the chunks that fail again go message by message, naming each failure.
Rows whose values are not numbers or not finite in float32 are masked out batch-wide and named. Every
message ends up either as a valid row or as a dead-letter reason: nothing is dropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import Any, cast

import numpy as np
import orjson

_NUMERIC = (int, float)
_CHUNK = 256  # messages per retry of the fast path in a batch that holds a bad message


@dataclass(slots=True)
class DecodedBatch:
    """The valid rows of a batch and the reasons for the rest.

    ``x[i]`` is message ``valid[i]``'s features in model order; ``objects[i]`` its parsed event.
    """

    x: np.ndarray  # (V, F) float32
    valid: np.ndarray  # (V,) int64 indices into the batch
    objects: list[dict[str, Any]]
    rejected: list[tuple[int, str]]  # (index into the batch, reason)


class Decoder:
    """Decodes JSON events carrying the model's numeric feature fields."""

    def __init__(self, features: Sequence[str], max_message_bytes: int) -> None:
        if not features:
            raise ValueError("a decoder needs at least one feature")
        if max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be positive, got {max_message_bytes}")
        self.features = tuple(features)
        self.max_message_bytes = max_message_bytes
        getter = itemgetter(*self.features)
        # itemgetter of one name returns a scalar; keep rows as tuples either way.
        self._pick = getter if len(self.features) > 1 else (lambda obj: (getter(obj),))

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

        Returns None as soon as any message is empty, oversized, not JSON, not an object or lacks a
        feature; the caller then decodes message by message. Non-numeric or non-finite values do not
        leave the fast path: ``_to_matrix`` masks their rows and ``_reject_rows`` names them.
        """
        if not values:
            return None
        try:
            present = cast("Sequence[bytes]", values)  # a None raises TypeError just below
            if max(map(len, present)) > self.max_message_bytes:
                return None
            objects: list[Any] = list(map(orjson.loads, present))  # JSONDecodeError on b"" too
            if set(map(type, objects)) != {dict}:
                return None
            rows: list[tuple[Any, ...]] = list(map(self._pick, objects))
        except (TypeError, KeyError, orjson.JSONDecodeError):
            return None
        x, ok = self._to_matrix(rows)
        valid = np.arange(len(rows), dtype=np.int64)
        if ok.all():
            return DecodedBatch(x=x, valid=valid, objects=objects, rejected=[])
        return self._reject_rows(x, ok, rows, valid.tolist(), objects, [])

    def _reject_rows(
        self,
        x: np.ndarray,
        ok: np.ndarray,
        rows: list[tuple[Any, ...]],
        valid: list[int],
        objects: list[dict[str, Any]],
        rejected: list[tuple[int, str]],
    ) -> DecodedBatch:
        """Drop the rows that ``_to_matrix`` masked out, recording why each was rejected."""
        for j in np.flatnonzero(~ok).tolist():
            rejected.append((valid[j], self._row_reason(rows[j])))
        keep = np.flatnonzero(ok)
        rejected.sort()
        return DecodedBatch(
            x=x[keep],
            valid=np.asarray([valid[j] for j in keep.tolist()], dtype=np.int64),
            objects=[objects[j] for j in keep.tolist()],
            rejected=rejected,
        )

    def _decode_each(self, values: Sequence[bytes | None]) -> DecodedBatch:
        rows: list[tuple[Any, ...]] = []
        valid: list[int] = []
        objects: list[dict[str, Any]] = []
        rejected: list[tuple[int, str]] = []
        loads, pick, limit = orjson.loads, self._pick, self.max_message_bytes
        for i, value in enumerate(values):
            if not value:
                rejected.append((i, "empty message"))
                continue
            if len(value) > limit:
                rejected.append((i, f"message of {len(value)} bytes exceeds the limit of {limit}"))
                continue
            try:
                obj = loads(value)
            except orjson.JSONDecodeError as exc:
                rejected.append((i, _json_reason(exc)))
                continue
            if type(obj) is not dict:
                rejected.append((i, f"not a JSON object but a JSON {_json_type(obj)}"))
                continue
            try:
                rows.append(pick(obj))
            except KeyError as exc:
                rejected.append((i, f"missing feature {exc.args[0]!r}"))
                continue
            valid.append(i)
            objects.append(obj)
        x, ok = self._to_matrix(rows)
        if not ok.all():
            return self._reject_rows(x, ok, rows, valid, objects, rejected)
        rejected.sort()
        return DecodedBatch(
            x=x, valid=np.asarray(valid, dtype=np.int64), objects=objects, rejected=rejected
        )

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

    def _row_reason(self, row: tuple[Any, ...]) -> str:
        for name, value in zip(self.features, row, strict=True):
            if type(value) not in _NUMERIC:
                return f"feature {name!r} is not a number but {_json_type(value)}"
            with np.errstate(over="ignore"):
                finite32 = math.isfinite(np.float32(value))
            if not math.isfinite(float(value)) or not finite32:
                return f"feature {name!r} is not finite in float32: {value!r}"
        raise AssertionError("row rejected without a reason")  # the mask and this check must agree


def concat(parts: Sequence[tuple[int, DecodedBatch]]) -> DecodedBatch:
    """One batch from consecutive parts, each given with the batch index of its first message."""
    return DecodedBatch(
        x=np.concatenate([p.x for _, p in parts]),
        valid=np.concatenate([p.valid + start for start, p in parts]),
        objects=[obj for _, p in parts for obj in p.objects],
        rejected=[(i + start, reason) for start, p in parts for i, reason in p.rejected],
    )


def _json_reason(exc: orjson.JSONDecodeError) -> str:
    msg = str(exc)
    if "utf-8" in msg.lower() or "surrogate" in msg.lower():
        return f"invalid UTF-8: {msg}"
    return f"invalid JSON: {msg}"


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
