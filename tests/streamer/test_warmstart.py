from __future__ import annotations

from streamer.warmstart import warm_ranges


def test_warm_ranges_read_the_last_records_before_the_committed_offset() -> None:
    committed = {("t", 0): 500, ("t", 1): 50, ("t", 2): -1001, ("t", 3): 0, ("u", 0): 30}
    fed = {("t", 1): 40, ("u", 0): 35}
    assert warm_ranges(committed, fed, 100) == {("t", 0): (400, 500), ("t", 1): (40, 50)}
    # never committed (-1001), nothing before offset 0, and what was fed already: nothing to read
    assert warm_ranges(committed, {}, 1) == {
        ("t", 0): (499, 500),
        ("t", 1): (49, 50),
        ("u", 0): (29, 30),
    }
    assert warm_ranges(committed, {}, 0) == {}
