"""Per-key alert de-duplication in event time, against a plain reference."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamer.dedup import AlertCooldown


def reference(cooldown_ms: float, batches: list[list[tuple[str, int]]]) -> list[list[bool]]:
    last: dict[str, float] = {}  # key -> time of its last published alert
    out = []
    for batch in batches:
        kept = []
        for key, t in batch:
            # quiet within one cooldown after its last alert; a time more than an hour (or a
            # cooldown) before that alert is a clock set back: published, the quiet period starts there
            jump = max(3_600_000.0, cooldown_ms)
            ok = key not in last or not last[key] - jump <= t < last[key] + cooldown_ms
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


@pytest.mark.parametrize("jump_s", [-86_400.0, -7_200.0, -1.7e9])
def test_a_clock_that_jumps_back_does_not_silence_its_entity(jump_s: float) -> None:
    """The quiet period was measured in the old time: after a clock set back a day (or a device
    reset to 1970, counting on), every later alert of the entity was suppressed until the new time
    caught up, 1 alert of 145 in a day of one every 10 minutes."""
    now = 1.7e12
    c = AlertCooldown(300.0)
    assert c.apply(["pump"], [now]) == [True]
    later = [now + jump_s * 1000.0 + 600_000.0 * i for i in range(1, 145)]
    assert sum(c.apply(["pump"] * len(later), later)) == len(later)
    assert c.apply(["pump"], [later[-1] + 1_000.0]) == [False]  # the rule itself holds after


def test_two_clocks_minutes_apart_still_share_one_quiet_period() -> None:
    """Treating every time more than a cooldown back as a clock reset let two interleaved clocks
    (producers 10 minutes apart, or a partition catching up) reset each other's quiet period: 1,440
    alerts published of 1,440 (two hours, an alert every 5 s), where one clock gives 24."""
    start = 1.7e12
    one = [start + 5_000.0 * i for i in range(1_440)]
    two = [t - (600_000.0 if i % 2 else 0.0) for i, t in enumerate(one)]
    counts = [
        sum(AlertCooldown(300.0, escalation=8.0).apply(["pump"] * 1_440, times, [1.0] * 1_440))
        for times in (one, two)
    ]
    assert counts == [24, 24]


def test_state_carries_across_batches_and_is_bounded() -> None:
    c = AlertCooldown(1.0, max_keys=2)
    assert c.apply(["a"], [0.0]) == [True]
    assert c.apply(["a", "b"], [500.0, 600.0]) == [False, True]
    assert c.apply(["a"], [1_000.0]) == [True]
    assert c.apply(["c"], [1_100.0]) == [True]  # three keys: the least recently alerted (b) goes
    assert c.apply(["b"], [1_200.0]) == [True]  # b was forgotten, so it may alert again


def test_an_alert_that_escalates_breaks_through_the_cooldown() -> None:
    c = AlertCooldown(10.0, escalation=4.0)
    keys = ["a", "a", "a", "b", "a", "a"]
    times = [0.0, 1_000.0, 2_000.0, 2_500.0, 3_000.0, 12_500.0]
    scores = [1.0, 3.9, 4.0, 100.0, 15.0, 0.5]
    # a: 1.0 published; 3.9 < 4 x 1.0 suppressed; 4.0 published, quiet again until 12 s, now against
    # 4.0; b has its own history; 15 < 4 x 4.0 suppressed; at 12.5 s the quiet period is over
    assert c.apply(keys, times, scores) == [True, False, True, True, False, True]
    # without escalation the same alerts follow the plain cooldown
    plain = AlertCooldown(10.0)
    assert plain.apply(keys, times, scores) == [True, False, False, True, False, True]
    assert AlertCooldown(10.0).apply(keys, times) == AlertCooldown(10.0).apply(keys, times, scores)


def test_escalation_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="escalation"):
        AlertCooldown(1.0, escalation=0.5)
    with pytest.raises(ValueError, match="scores"):
        AlertCooldown(1.0, escalation=2.0).apply(["a"], [0.0])
    with pytest.raises(ValueError, match="scores"):
        AlertCooldown(1.0).apply(["a", "b"], [0.0, 1.0], [1.0])
    assert AlertCooldown(0.0, escalation=2.0).apply(["a", "a"], [0.0, 1.0]) == [True, True]


def test_nothing_escalates_past_an_alert_scored_zero_or_less() -> None:
    c = AlertCooldown(10.0, escalation=2.0)
    assert c.apply(["a", "a", "b", "b"], [0.0, 1.0, 0.0, 1.0], [0.0, 5.0, -1.0, 5.0]) == [
        True,
        False,
        True,
        False,
    ]
