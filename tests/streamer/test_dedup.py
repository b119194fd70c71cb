"""Per-key alert de-duplication: the sparse implementation against a plain event-by-event reference."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from streamer.dedup import AlertCooldown


def reference(cooldown: int, batches: list[list[tuple[bool, str]]]) -> list[list[bool]]:
    """Every event in order: an alert is published when its key has no quiet events left."""
    left: dict[str, int] = {}
    out = []
    for batch in batches:
        kept = []
        for alert, key in batch:
            n = left.get(key, 0)
            if alert and n == 0:
                kept.append(True)
                left[key] = cooldown
            else:
                kept.append(False)
                left[key] = max(0, n - 1)
        out.append(kept)
    return out


@given(
    st.integers(min_value=0, max_value=6),
    st.lists(st.lists(st.tuples(st.booleans(), st.sampled_from("abc")), max_size=12), max_size=5),
)
def test_sparse_cooldown_equals_event_by_event(
    cooldown: int, batches: list[list[tuple[bool, str]]]
) -> None:
    c = AlertCooldown(cooldown)
    got = [
        c.apply(np.array([a for a, _ in b], dtype=bool), [k for _, k in b]).tolist()
        for b in batches
    ]
    assert got == reference(cooldown, batches)


def test_quiet_keys_count_events_without_alerts_across_batches() -> None:
    c = AlertCooldown(3)
    assert c.apply(np.array([True]), ["a"]).tolist() == [True]
    assert c.active
    assert c.apply(np.array([False, True, False]), ["a", "a", "b"]).tolist() == [False, False, False]
    assert c.apply(np.array([True, True]), ["a", "b"]).tolist() == [False, True]  # a: 1 quiet left
    assert c.apply(np.array([True]), ["a"]).tolist() == [True]
