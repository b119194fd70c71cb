from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streamer.batching import MicroBatcher


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_source(arrivals: list[int], clock: FakeClock, step_s: float):
    """Each fetch returns up to `count` of the next chunk and advances the clock by step_s."""
    queue = list(arrivals)
    counter = iter(range(10**9))

    def fetch(count: int, timeout_s: float) -> list[int]:
        clock.now += min(step_s, timeout_s)
        if not queue:
            return []
        take = min(count, queue[0])
        queue[0] -= take
        if queue[0] == 0:
            queue.pop(0)
        return [next(counter) for _ in range(take)]

    return fetch


@given(
    st.lists(st.integers(min_value=0, max_value=50), max_size=30),
    st.integers(min_value=1, max_value=40),
    st.integers(min_value=0, max_value=100),
    st.one_of(st.none(), st.integers(min_value=1, max_value=60)),
)
def test_a_batch_never_exceeds_its_bound_and_nothing_is_lost(
    arrivals: list[int], max_events: int, max_wait_ms: int, limit: int | None
) -> None:
    clock = FakeClock()
    batcher = MicroBatcher(make_source(arrivals, clock, 0.01), max_events, max_wait_ms, clock)
    got: list[int] = []
    for _ in range(sum(arrivals) + len(arrivals) + 2):
        batch = batcher.next_batch(0.5, limit)
        assert len(batch) <= max_events
        if limit is not None:
            assert len(batch) <= limit
        got.extend(batch)
    assert got == list(range(sum(arrivals)))


def test_batch_closes_after_max_wait_from_first_event() -> None:
    clock = FakeClock()
    batcher = MicroBatcher(make_source([1] * 100, clock, 0.01), 1_000, 35, clock)
    batch = batcher.next_batch(1.0)
    # first event after 10 ms, then one per 10 ms until 35 ms after it
    assert 3 <= len(batch) <= 5


def test_discard_removes_pending_items_in_place() -> None:
    batcher: MicroBatcher[int] = MicroBatcher(lambda n, t: [], 10, 0)
    batcher.pending.extend([1, 2, 3, 4])
    assert batcher.discard(lambda i: i % 2 == 0) == 2
    assert batcher.pending == [1, 3]


@given(
    st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=30),
    st.integers(min_value=1, max_value=60),
    st.integers(min_value=1, max_value=300),
)
def test_a_batch_closes_once_it_holds_max_bytes(
    arrivals: list[int], max_events: int, max_bytes: int
) -> None:
    """Items of 1-100 bytes (item i is i % 100 + 1): a batch passes max_bytes by at most what its
    last fetch brought, holds at most max_events, and every item comes out once, in order."""
    clock = FakeClock()

    def size(items: list[int]) -> int:
        return sum(i % 100 + 1 for i in items)

    fetched: list[list[int]] = []
    source = make_source(arrivals, clock, 0.001)

    def fetch(count: int, timeout_s: float) -> list[int]:
        got = source(count, timeout_s)
        fetched.append(got)
        return got

    batcher = MicroBatcher(fetch, max_events, 1_000, clock, max_bytes=max_bytes, size=size)
    got: list[int] = []
    for _ in range(sum(arrivals) + len(arrivals) + 2):
        before = len(fetched)
        batch = batcher.next_batch(0.5)
        assert len(batch) <= max_events
        if batch:
            last = next(f for f in reversed(fetched[before:]) if f)
            assert size(batch) - size(last) < max_bytes  # it was still open before its last fetch
        got.extend(batch)
    assert got == list(range(sum(arrivals)))


def test_a_byte_bound_closes_a_batch_before_max_events() -> None:
    clock = FakeClock()
    batcher = MicroBatcher(make_source([1] * 30, clock, 0.001), 30, 1_000, clock)
    assert len(batcher.next_batch(0.5)) == 30
    clock = FakeClock()
    small = MicroBatcher(
        make_source([1] * 30, clock, 0.001), 30, 1_000, clock, max_bytes=10, size=len
    )
    assert len(small.next_batch(0.5)) == 10
