"""Per-key alert de-duplication in event time, against a plain reference."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streamer.dedup import AlertCooldown


def reference(cooldown_ms: float, batches: list[list[tuple[str, int]]]) -> list[list[bool]]:
    last: dict[str, float] = {}  # key -> time of its last published alert
    out = []
    for batch in batches:
        kept = []
        for key, t in batch:
            ok = key not in last or t >= last[key] + cooldown_ms
            if ok:
                last[key] = t
            kept.append(ok)
        out.append(kept)
    return out


@given(
    st.integers(min_value=0, max_value=5),
    st.lists(
        st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 20_000)), max_size=10),
        max_size=5,
    ),
)
def test_cooldown_equals_reference(cooldown_s: int, batches: list[list[tuple[str, int]]]) -> None:
    c = AlertCooldown(float(cooldown_s))
    got = [c.apply([k for k, _ in b], [float(t) for _, t in b]) for b in batches]
    if cooldown_s == 0:
        assert all(all(b) for b in got)
    else:
        assert got == reference(cooldown_s * 1000.0, batches)


def test_state_carries_across_batches_and_is_bounded() -> None:
    c = AlertCooldown(1.0, max_keys=2)
    assert c.apply(["a"], [0.0]) == [True]
    assert c.apply(["a", "b"], [500.0, 600.0]) == [False, True]
    assert c.apply(["a"], [1_000.0]) == [True]
    assert c.apply(["c"], [1_100.0]) == [True]  # three keys: the least recently alerted (b) goes
    assert c.apply(["b"], [1_200.0]) == [True]  # b was forgotten, so it may alert again
