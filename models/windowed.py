"""What the array-based detectors share: lag windows of a univariate series, the held-back tail of the
training rows that gives ``train_scores``, a version from the fitted arrays, and the shape handling of
``(B, F)`` or ``(B, W, F)`` input."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

__all__ = ["WindowedScorer", "lag_windows", "split_holdout", "version_of"]


def lag_windows(x: np.ndarray, window: int) -> np.ndarray:
    """(N, F) rows of one series -> (N, W, F) windows ending at each row, padded at the front with the
    first row (as :class:`streamer.features.EntityWindows` pads a new entity)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    x = np.asarray(x, dtype=np.float32)
    if window == 1:
        return x[:, None, :]
    seq = np.concatenate([np.repeat(x[:1], window - 1, axis=0), x])  # (N + W - 1, F)
    view = np.lib.stride_tricks.sliding_window_view(seq, (window, x.shape[1]))[:, 0]
    return np.ascontiguousarray(view)


def split_holdout(n: int, holdout: float) -> int:
    """Rows [0, cut) fit, rows [cut, n) are the held-back tail that gives ``train_scores``."""
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    cut = n - max(1, round(n * holdout))
    if cut < 2:
        raise ValueError(f"{n} training rows are too few to fit and hold back {holdout:.0%}")
    return cut


def version_of(*arrays: np.ndarray, extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:12]


class WindowedScorer:
    """Shared shape handling: raw (B, F) or (B, W, F) input -> (B, W * F) float64 rows."""

    kind = ""

    def __init__(self, features: Sequence[str], window: int, name: str | None) -> None:
        if not features:
            raise ValueError("a scorer needs at least one feature")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.features: tuple[str, ...] = tuple(features)
        self.window = window
        self.name = name or self.kind
        self.version = "0" * 12
        self.train_scores = np.empty(0, dtype=np.float64)

    def _flat(self, x: np.ndarray) -> np.ndarray:
        f, w = len(self.features), self.window
        expected = (f,) if w == 1 else (w, f)
        if x.shape[1:] != expected:
            raise ValueError(f"{self.kind} scorer expects (B, {expected}) input, got {x.shape}")
        return np.asarray(x, dtype=np.float64).reshape(len(x), w * f)

    def _fit_rows(self, x: np.ndarray) -> np.ndarray:
        """Training rows (N, F) of one series in time order -> the samples (N, W * F) it learns from."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise ValueError(f"training data must be (N, {len(self.features)}), got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("training data contains NaN or inf")
        return self._flat(lag_windows(x, self.window) if self.window > 1 else x)
