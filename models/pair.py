"""A model and its companion: an autoencoder's score joined with Half-Space Trees' and a range check.

The autoencoder learns the shapes of its training data once; Half-Space Trees (``models.hst``) count
where the last 250 windows fell and so judge a window against the series' recent past. They fail
differently: on NAB, joining the two gained over conv alone with each of three training seeds (README,
detection quality). :class:`PairScorer` scores each window with both and returns

    error = (sqrt(ae_error) / m_ae  x  sqrt(hst_score) / m_hst)  x  (1 + d)^2

whose root (the pipeline's scale where novelty weighs scores) is the geometric mean of the two roots,
each over its median on the held-back training rows (so neither's units outweigh the other's), times
``1 + d``: ``d`` is how far the window's values go outside the range of the training rows, in units of
that range, the largest over the window's rows and features (0 inside it; at most ``RANGE_CLIP``,
100). A value the model never saw
is suspect however well the model happens to redraw it; within the range the factor is 1.

``train_scores`` join the two models' held-back scores by rank (the k-th smallest of each), since
each model holds back its own rows; the training rows lie inside their own range, so ``d`` is 0 there.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.hst import HalfSpaceTreesScorer
from models.scorer import Scorer

__all__ = ["RANGE_CLIP", "PairScorer", "join_train_scores", "range_excess"]

_TINY = 1e-12  # roots below this count as this (log of 0)
# d is counted up to this many training ranges: one absurd reading (1e6 where the range is 10) weighs
# at most 101 times, so that its score does not swell the rise gate's variance for the next thousand
# events (as novelty's rows are clipped, streamer.pipeline.NOVELTY_CLIP). NAB's largest d is 61.
RANGE_CLIP = 100.0


def _root_over_median(x: np.ndarray, median: float) -> np.ndarray:
    return np.sqrt(np.maximum(np.asarray(x, dtype=np.float64), 0.0)) / median


def _median_root(train_scores: np.ndarray) -> float:
    m = float(np.median(np.sqrt(np.maximum(train_scores, 0.0))))
    return m if m > 0 and np.isfinite(m) else 1.0


def join_train_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two held-back score sets -> the pair's: their roots over their medians, matched by rank
    (each resampled to the shorter's length), joined by geometric mean and squared."""
    n = min(len(a), len(b))
    if n == 0:
        raise ValueError("both models need held-back scores")
    roots = []
    for s in (a, b):
        r = np.sort(_root_over_median(s, _median_root(s)))
        roots.append(np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(r)), r))
    joined = np.exp(
        0.5 * (np.log(np.maximum(roots[0], _TINY)) + np.log(np.maximum(roots[1], _TINY)))
    )
    return joined**2


def range_excess(x: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """(B, F) or (B, W, F) raw rows -> (B,): how far each window goes outside [low, high] per
    feature, in units of high - low (1 where that is 0), the largest over its rows and features."""
    span = np.where(high > low, high - low, 1.0)
    x = np.asarray(x, dtype=np.float64)
    out = np.maximum(np.maximum(low - x, x - high), 0.0) / span
    return out.reshape(len(x), -1).max(axis=1) if len(x) else np.zeros(0)


class PairScorer:
    """An autoencoder's :class:`Scorer` with a Half-Space Trees companion and its training range.

    The scorer protocol of ``models.Scorer``; what it does not join (its kind, features, window,
    scaler, device, latent space) is the autoencoder's.
    """

    def __init__(
        self,
        primary: Scorer,
        companion: HalfSpaceTreesScorer,
        low: np.ndarray,
        high: np.ndarray,
    ) -> None:
        f = len(primary.features)
        if companion.features != primary.features or companion.window != primary.window:
            raise ValueError("the companion must see the model's features and window")
        low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
        ok = np.isfinite(low) & np.isfinite(high) & (low <= high)
        if low.shape != (f,) or high.shape != (f,) or not ok.all():
            raise ValueError(f"the training range must be ({f},) finite pairs low <= high")
        self.primary, self.companion = primary, companion
        self.low, self.high = low, high
        self.kind = primary.kind
        self.name = primary.name
        self.version = primary.version
        self.features = primary.features
        self.window = primary.window
        self.scaler = primary.scaler
        self.device = primary.device
        self.latent_dim = primary.latent_dim
        self.metadata: dict[str, Any] = primary.metadata
        self._m_primary = _median_root(primary.train_scores)
        self._m_companion = _median_root(companion.train_scores)
        self.train_scores = join_train_scores(primary.train_scores, companion.train_scores)

    def __repr__(self) -> str:
        return f"PairScorer({self.primary!r} with hst)"

    def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw (B, F) or (B, W, F) -> (joined error (B,) float64, the model's per-feature error);
        the companion learns the windows as it scores them."""
        err, per_feature = self.primary.score(x)
        hst, _ = self.companion.score(x)
        a = np.maximum(_root_over_median(err, self._m_primary), _TINY)
        b = np.maximum(_root_over_median(hst, self._m_companion), _TINY)
        with np.errstate(over="ignore", invalid="ignore"):
            d = np.minimum(range_excess(x, self.low, self.high), RANGE_CLIP)
            root = np.sqrt(a * b) * (1.0 + d)
            return np.where(np.isnan(err), np.nan, root * root), per_feature

    def encode(self, x: np.ndarray) -> np.ndarray:
        return self.primary.encode(x)

    @property
    def gpu_options(self) -> dict[str, Any] | None:
        return self.primary.gpu_options
