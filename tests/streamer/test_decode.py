from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamer.alerts import ReasonCode
from streamer.decode import Decoder

FEATURES = ("a", "b")


def decode(values: list[bytes | None], limit: int = 1000):
    return Decoder(FEATURES, limit).decode(values)


def test_valid_rows_keep_order_and_values() -> None:
    out = decode([b'{"a": 1, "b": 2.5, "other": "x"}', b'{"b": -1, "a": 0.25}'])
    np.testing.assert_array_equal(out.x, np.array([[1.0, 2.5], [0.25, -1.0]], dtype=np.float32))
    assert out.valid.tolist() == [0, 1]
    assert out.rejected == []
    assert out.event(0) == {"a": 1, "b": 2.5, "other": "x"}  # as sent, parsed on demand
    assert out.raw == [b'{"a": 1, "b": 2.5, "other": "x"}', b'{"b": -1, "a": 0.25}']


def test_key_field_is_kept_per_row_on_both_paths() -> None:
    values: list[bytes | None] = [
        b'{"a": 1, "b": 2, "id": "s1"}',
        b'{"a": 1, "b": 2, "id": 7}',
        b'{"a": 1, "b": 2}',
        b'{"a": 1, "b": 2, "id": {"x": 1}}',
    ]
    decoder = Decoder(FEATURES, 1000, key_field="id")
    fast = decoder.decode(values)
    slow = decoder.decode([*values, b"broken"])  # one bad message: message by message
    assert fast.objects is None and slow.objects is not None
    assert fast.keys == slow.keys == ["s1", 7, None, {"x": 1}]
    # a key field that is a feature is left to the parsed events: the typed decoder reads it as a
    # float (1.0 where orjson, and so the alert, has 1)
    as_feature = Decoder(FEATURES, 1000, key_field="a")
    assert as_feature.key_field is None and as_feature.decode(values[:1]).keys is None
    assert [fast.event(i) for i in range(4)] == [slow.event(i) for i in range(4)]
    assert Decoder(FEATURES, 1000).decode(values).keys is None


def test_fast_path_rejects_what_orjson_rejects_in_fields_it_skips() -> None:
    """Invalid UTF-8 in a field no model reads is still invalid UTF-8, as message by message."""
    out = decode(
        [
            b'{"a": 1, "b": 2}',
            b'{"a": 1, "b": 2, "note": "\xff\xfe"}'.decode("unicode_escape").encode("latin-1"),
        ]
    )
    assert out.valid.tolist() == [0] and "invalid UTF-8" in out.rejected[0][1].reason


def test_event_of_a_message_orjson_cannot_read_falls_back() -> None:
    """A number beyond float64 in a skipped field passes the typed decoder; its event still parses."""
    out = decode([b'{"a": 1, "b": 2, "big": 1e400}'])
    assert out.valid.tolist() == [0]
    event = out.event(0)
    assert event["a"] == 1 and event["big"] == float("inf")


E, B, J, U = (
    ReasonCode.EMPTY,
    ReasonCode.INVALID_JSON,
    ReasonCode.NOT_NUMBER,
    ReasonCode.INVALID_UTF8,
)


@pytest.mark.parametrize(
    ("value", "reason", "code", "feature"),
    [
        (None, "empty message", E, None),
        (b"", "empty message", E, None),
        (b"{not json", "invalid JSON", B, None),
        (b'{"a": 1, "b": \xff}', "invalid UTF-8", U, None),
        (b"\xff\xfe\x00", "invalid UTF-8", U, None),
        (b"[1, 2]", "not a JSON object but a JSON array", ReasonCode.NOT_OBJECT, None),
        (b'"text"', "not a JSON object but a JSON string", ReasonCode.NOT_OBJECT, None),
        (b'{"a": 1}', "missing feature 'b'", ReasonCode.MISSING_FEATURE, "b"),
        (b'{"a": "1.5", "b": 2}', "feature 'a' is not a number but string", J, "a"),
        (b'{"a": true, "b": 2}', "feature 'a' is not a number but boolean", J, "a"),
        (b'{"a": null, "b": 2}', "feature 'a' is not a number but null", J, "a"),
        (b'{"a": [1], "b": 2}', "feature 'a' is not a number but array", J, "a"),
        (b'{"a": NaN, "b": 2}', "invalid JSON", B, None),
        (b'{"a": Infinity, "b": 2}', "invalid JSON", B, None),
        (b'{"a": 1e400, "b": 2}', "invalid JSON", B, None),
        (
            b'{"a": 1e39, "b": 2}',
            "feature 'a' is not finite in float32",
            ReasonCode.NOT_FINITE,
            "a",
        ),
        (
            b'{"a": 1, "b": 2, "pad": "' + b"x" * 2000 + b'"}',
            "exceeds the limit of 1000",
            ReasonCode.TOO_LARGE,
            None,
        ),
    ],
)
def test_each_bad_message_is_rejected_with_its_reason(
    value: bytes | None, reason: str, code: ReasonCode, feature: str | None
) -> None:
    """Each with its code and the feature concerned, beside the reason in words: a subscriber had
    only the words, with the values inside them, to tell kinds apart."""
    out = decode([b'{"a": 1, "b": 2}', value, b'{"a": 3, "b": 4}'])
    assert out.valid.tolist() == [0, 2]
    assert len(out.rejected) == 1
    index, got = out.rejected[0]
    assert index == 1
    assert reason in got.reason
    assert (got.code, got.feature) == (code, feature)


def test_single_feature_rows_are_tuples() -> None:
    out = Decoder(["a"], 100).decode([b'{"a": 3}', b'{"a": "x"}'])
    assert out.x.shape == (1, 1)
    assert out.rejected[0][0] == 1


json_values = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
    st.booleans(),
    st.none(),
)


@given(
    st.lists(
        st.one_of(
            st.dictionaries(st.sampled_from(["a", "b", "c"]), json_values), st.binary(max_size=20)
        )
    )
)
def test_every_message_is_either_valid_or_rejected(items: list[object]) -> None:
    values = [orjson.dumps(i) if isinstance(i, dict) else i for i in items]
    out = decode(values)
    rejected = [i for i, _ in out.rejected]
    assert sorted(out.valid.tolist() + rejected) == list(range(len(values)))
    assert len(out.x) == len(out.valid) == len(out.raw)
    assert [values[i] for i in out.valid.tolist()] == out.raw
    assert np.isfinite(out.x).all()
    for row, i in zip(out.x, out.valid, strict=True):
        obj = orjson.loads(values[i])
        for value, name in zip(row, FEATURES, strict=True):
            assert type(obj[name]) in (int, float)
            assert math.isclose(float(value), float(np.float32(obj[name])), rel_tol=0, abs_tol=0)


def test_decoder_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match="at least one feature"):
        Decoder([], 10)
    with pytest.raises(ValueError, match="max_message_bytes"):
        Decoder(["a"], 0)
