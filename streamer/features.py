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
        """x (B, F) rows in arrival order -> (B, W, F): for each row, the window of its entity ending at it.

        Vectorised over the batch: rows are grouped by entity with one stable sort, each entity's
        history and rows are laid end to end in one array, and every window is a slice of that
        array's sliding-window view. Python code runs once per distinct entity, not once per row.
        """
        n, w, f = len(x), self.window, self.n_features
        if len(entities) != n:
            raise ValueError(f"{len(entities)} entities for {n} rows")
        if n == 0:
            return np.empty((0, w, f), dtype=np.float32)
        code_of = {entity: i for i, entity in enumerate(dict.fromkeys(entities))}
        codes = np.fromiter(map(code_of.__getitem__, entities), dtype=np.intp, count=n)
        g = len(code_of)
        order = np.argsort(codes, kind="stable")  # rows grouped by entity, arrival order within
        counts = np.bincount(codes, minlength=g)  # (G,)
        first = np.cumsum(counts) - counts  # (G,) where each entity starts in `order`
        rows = x[order]  # (B, F) grouped
        seg = counts + (w - 1)  # history then rows, per entity
        base = np.cumsum(seg) - seg  # (G,) where each entity's segment starts in `seq`
        seq = np.empty((int(seg.sum()), f), dtype=np.float32)
        hist_pos = base[:, None] + np.arange(w - 1)  # (G, W-1)
        for i, entity in enumerate(code_of):
            past = self._history.pop(entity, None)
            # An entity's first window is padded with its first event.
            seq[hist_pos[i]] = rows[first[i]] if past is None else past
        grouped_codes = codes[order]
        row_pos = base[grouped_codes] + (w - 1) + (np.arange(n) - first[grouped_codes])  # (B,)
        seq[row_pos] = rows
        end_of = np.empty(n, dtype=np.intp)
        end_of[order] = row_pos  # (B,) where each row, in arrival order, sits in `seq`
        out = sliding_window_view(seq, (w, f))[end_of - (w - 1), 0]  # one gather: (B, W, F)
        history = seq[(base + seg)[:, None] - (w - 1) + np.arange(w - 1)]  # (G, W-1, F)
        for i, entity in enumerate(code_of):
            self._history[entity] = history[i].copy()  # a copy: a view would pin the batch
        while len(self._history) > self.max_entities:
            self._history.popitem(last=False)
        return out
