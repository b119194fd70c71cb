"""Model inputs from decoded rows: the rows themselves, or for windowed models the window ending at each event.

Windows are kept per entity (sensor id, card id). An entity's first ``W - 1`` events are scored with a
window padded at the front by repeating the entity's first event, so no event is held back or dropped.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


class EntityWindows:
    """The last ``window - 1`` rows of every entity, bounded to ``max_entities`` (least recently seen go)."""

    def __init__(self, window: int, n_features: int, max_entities: int = 100_000) -> None:
        if window < 2:
            raise ValueError(f"window must be at least 2, got {window}")
        if n_features < 1:
            raise ValueError(f"n_features must be positive, got {n_features}")
        if max_entities < 1:
            raise ValueError(f"max_entities must be positive, got {max_entities}")
        self.window = window
        self.n_features = n_features
        self.max_entities = max_entities
        self._history: OrderedDict[Hashable, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._history)

    def windows(self, x: np.ndarray, entities: Sequence[Hashable]) -> np.ndarray:
        """x (B, F) rows in arrival order -> (B, W, F): for each row, the window of its entity ending at it."""
        n, w = len(x), self.window
        if len(entities) != n:
            raise ValueError(f"{len(entities)} entities for {n} rows")
        out = np.empty((n, w, self.n_features), dtype=np.float32)
        groups: dict[Hashable, list[int]] = {}
        for i, entity in enumerate(entities):
            groups.setdefault(entity, []).append(i)
        for entity, index in groups.items():
            rows = x[index]  # (k, F)
            past = self._history.pop(entity, None)
            if past is None:
                past = np.repeat(rows[:1], w - 1, axis=0)  # pad with the entity's first event
            seq = np.concatenate([past, rows])  # (w - 1 + k, F)
            out[index] = sliding_window_view(seq, (w, self.n_features))[:, 0]
            self._history[entity] = seq[-(w - 1) :].copy()
        while len(self._history) > self.max_entities:
            self._history.popitem(last=False)
        return out
