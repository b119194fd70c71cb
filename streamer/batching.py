"""Micro-batching: a batch closes when it holds ``max_events`` events (or ``max_bytes`` bytes), or
``max_wait_ms`` after its first one."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

_STOP_CHECK_S = 0.25  # longest a fetch waits before the stop request is looked at again


class MicroBatcher(Generic[T]):
    """Builds bounded batches from ``fetch(max_count, timeout_s)``, which returns at most ``max_count`` items.

    The batch under construction is ``pending``, so that a rebalance callback fired inside ``fetch`` can
    take out the messages of partitions this process no longer owns.
    """

    def __init__(
        self,
        fetch: Callable[[int, float], list[T]],
        max_events: int,
        max_wait_ms: int,
        clock: Callable[[], float] = time.monotonic,
        stopping: Callable[[], bool] = lambda: False,
        max_bytes: int | None = None,
        size: Callable[[list[T]], int] | None = None,
    ) -> None:
        """``size`` gives the bytes of a list of items; with it, a batch also closes once it holds
        ``max_bytes`` (it may pass that by what one fetch brings)."""
        if max_events < 1:
            raise ValueError(f"max_events must be positive, got {max_events}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must not be negative, got {max_wait_ms}")
        self._fetch = fetch
        self.max_events = max_events
        self.max_wait_s = max_wait_ms / 1000.0
        self._clock = clock
        self._stopping = stopping  # a stop request closes the batch at once, with what it holds
        if (max_bytes is None) != (size is None):
            raise ValueError("max_bytes and size go together")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes = max_bytes
        self._size = size
        self.pending: list[T] = []

    def next_batch(self, idle_timeout_s: float, limit: int | None = None) -> list[T]:
        """Wait up to ``idle_timeout_s`` for a first event, then fill the batch; [] when nothing came.

        A fetch blocks until it has ``count`` items or its timeout passes (librdkafka's ``consume``
        does), so the wait for the first event asks for one item: the batch's clock starts when the
        first event arrives, not when a full batch could have.
        """
        bound = self.max_events if limit is None else min(self.max_events, limit)
        if bound < 1:
            return []
        self.pending = []
        size = self._size
        room = math.inf if self.max_bytes is None else float(self.max_bytes)
        got = self._take(bound, 0.0)  # what is already buffered, without waiting
        if not got:
            got = self._take(1, idle_timeout_s)
        self.pending.extend(got)
        if self.pending:
            deadline = self._clock() + self.max_wait_s
            while True:
                if size is not None:
                    room -= size(got)
                if len(self.pending) >= bound or room <= 0 or self._stopping():
                    break
                left = min(deadline - self._clock(), _STOP_CHECK_S)
                if left <= 0:
                    break
                got = self._take(bound - len(self.pending), left)
                self.pending.extend(got)
        batch, self.pending = self.pending, []
        if len(batch) > bound:  # a fetch that broke its contract must not break ours
            raise AssertionError(f"batch of {len(batch)} exceeds its bound {bound}")
        return batch

    def _take(self, count: int, timeout_s: float) -> list[T]:
        items = self._fetch(count, timeout_s)
        if len(items) > count:
            raise AssertionError(f"fetch returned {len(items)} items for a request of {count}")
        return items

    def discard(self, drop: Callable[[T], bool]) -> int:
        """Remove pending items for which ``drop`` is true (in place); returns how many were removed."""
        before = len(self.pending)
        self.pending[:] = [item for item in self.pending if not drop(item)]
        return before - len(self.pending)
