"""Baseline detectors with the scorer protocol of ``models.Scorer``, so they run through the same pipeline.

Two detectors that every evaluation runs beside the autoencoders, under the same protocol and the same
threshold policy:

- :class:`HalfSpaceTreesScorer` (``hst``): river's Half-Space Trees, an online isolation forest. Features
  are min-max scaled with the training data's range and clipped to [0, 1]; it learns the training part
  first, then scores prequentially (``score_one`` then ``learn_one``) every event it is asked to score,
  exactly as it would run in production.
- :class:`PCAScorer` (``pca``): standardise on the training part, keep the principal components that
  explain ``variance`` of it (at most ``max_components`` and always fewer than the input width), score an
  event by its squared reconstruction error. The classic linear reconstruction baseline of the
  SMAP/MSL literature.

Both accept windows: with ``window > 1`` the pipeline hands them ``(B, W, F)`` and they see the window
flattened to ``W * F`` values (a lag embedding, what makes them usable on a univariate series). Their
``train_scores`` come from a held-back tail of the training data, as the autoencoders' do.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> z = rng.normal(size=(2000, 1))
>>> train = np.hstack([z, 2 * z, -z]) + 0.01 * rng.normal(size=(2000, 3))
>>> pca = PCAScorer(("a", "b", "c")).fit(train.astype(np.float32))
>>> scores, _ = pca.score(np.array([[1.0, 2.0, -1.0], [1.0, -2.0, -1.0]], dtype=np.float32))
>>> bool(scores[1] > 100 * scores[0])
True
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from river.anomaly import HalfSpaceTrees

__all__ = ["BASELINE_KINDS", "HalfSpaceTreesScorer", "PCAScorer", "lag_windows"]

BASELINE_KINDS = ("hst", "pca")


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


def _split_holdout(n: int, holdout: float) -> int:
    """Rows [0, cut) fit, rows [cut, n) are the held-back tail that gives ``train_scores``."""
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    cut = n - max(1, round(n * holdout))
    if cut < 2:
        raise ValueError(f"{n} training rows are too few to fit and hold back {holdout:.0%}")
    return cut


def _version(*arrays: np.ndarray, extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:12]


class _WindowedScorer:
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


class HalfSpaceTreesScorer(_WindowedScorer):
    """River Half-Space Trees behind the scorer protocol; scoring is prequential (it keeps learning).

    ``n_trees``, ``height`` and ``window_size`` are river's defaults.

    ``per_feature`` of an event is the squared distance of its [0, 1]-scaled value from the training
    median (the last step of a window): HST gives no attribution of its own, and this names the fields
    that sit far from where they usually are.
    """

    kind = "hst"

    def __init__(
        self,
        features: Sequence[str],
        window: int = 1,
        n_trees: int = 10,
        height: int = 8,
        window_size: int = 250,
        holdout: float = 0.2,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__(features, window, name)
        if n_trees < 1 or height < 1 or window_size < 1:
            raise ValueError("n_trees, height and window_size must be >= 1")
        self.n_trees, self.height, self.window_size = n_trees, height, window_size
        self.holdout = holdout
        self.seed = seed
        self._model: HalfSpaceTrees | None = None
        self._names: list[str] = []
        self._low = np.zeros(0)
        self._span = np.ones(0)
        self._median = np.zeros(0)

    def fit(self, x: np.ndarray) -> HalfSpaceTreesScorer:
        """Learn the scaling range and the trees from normal rows (N, F) of one series in time order.

        The first ``1 - holdout`` of the rows are learnt; the held-back tail is scored prequentially,
        like live events, to give ``train_scores``.
        """
        rows = self._fit_rows(x)  # (N, D)
        cut = _split_holdout(len(rows), self.holdout)
        self._low = rows.min(axis=0)
        high = rows.max(axis=0)
        self._span = np.where(high > self._low, high - self._low, 1.0)
        self._median = np.median(self._scaled(rows), axis=0)
        self._names = [f"x{i}" for i in range(rows.shape[1])]
        self._model = HalfSpaceTrees(
            n_trees=self.n_trees, height=self.height, window_size=self.window_size, seed=self.seed
        )
        learn, names = self._model.learn_one, self._names
        for row in self._scaled(rows[:cut]).tolist():
            learn(dict(zip(names, row, strict=True)))
        self.train_scores = self._prequential(self._scaled(rows[cut:]))
        self.version = _version(
            self._low,
            self._span,
            extra=f"hst|{self.features}|{self.window}|{self.n_trees}|{self.height}|"
            f"{self.window_size}|{self.seed}|{len(rows)}",
        )
        return self

    def _scaled(self, rows: np.ndarray) -> np.ndarray:
        return np.clip((rows - self._low) / self._span, 0.0, 1.0)

    def _prequential(self, scaled: np.ndarray) -> np.ndarray:
        if self._model is None:
            raise RuntimeError("HalfSpaceTreesScorer.fit must be called before scoring")
        out = np.empty(len(scaled), dtype=np.float64)
        score, learn, names = self._model.score_one, self._model.learn_one, self._names
        for i, row in enumerate(scaled.tolist()):
            event = dict(zip(names, row, strict=True))
            out[i] = score(event)
            learn(event)
        return out

    def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw (B, F) or (B, W, F) -> (score (B,) float64, per-feature (B, F) float32); learns as it goes."""
        scaled = self._scaled(self._flat(x))  # (B, D)
        scores = self._prequential(scaled)
        f = len(self.features)
        last = scaled[:, -f:] - self._median[-f:]  # the event itself: the window's last step
        return scores, np.square(last).astype(np.float32)


class PCAScorer(_WindowedScorer):
    """Squared reconstruction error of standardised inputs from their top principal components.

    score = mean over the event's features of the squared error (the last step of a window), the same
    form as the dense autoencoder's score; ``per_feature`` is that error per feature.
    """

    kind = "pca"

    def __init__(
        self,
        features: Sequence[str],
        window: int = 1,
        variance: float = 0.95,
        max_components: int = 64,
        holdout: float = 0.2,
        name: str | None = None,
    ) -> None:
        super().__init__(features, window, name)
        if not 0.0 < variance <= 1.0:
            raise ValueError(f"variance must be in (0, 1], got {variance}")
        if max_components < 0:
            raise ValueError(f"max_components must be >= 0, got {max_components}")
        self.variance = variance
        self.max_components = max_components
        self.holdout = holdout
        self.mean_ = np.zeros(0)
        self.scale_ = np.ones(0)
        self.components_ = np.zeros((0, 0))  # (K, D)
        self.explained_variance_ratio_ = np.zeros(0)

    @property
    def n_components(self) -> int:
        return int(self.components_.shape[0])

    def fit(self, x: np.ndarray) -> PCAScorer:
        """Fit on the first ``1 - holdout`` of normal rows (N, F) in time order; score the tail."""
        rows = self._fit_rows(x)  # (N, D)
        cut = _split_holdout(len(rows), self.holdout)
        fit = rows[:cut]
        self.mean_ = fit.mean(axis=0)
        std = fit.std(axis=0)
        self.scale_ = np.where(std > 1e-8 * np.maximum(1.0, np.abs(self.mean_)), std, 1.0)
        z = (fit - self.mean_) / self.scale_
        _, sing, vt = np.linalg.svd(z, full_matrices=False)
        var = np.square(sing)
        total = var.sum()
        ratio = var / total if total > 0 else np.zeros_like(var)
        k = int(np.searchsorted(np.cumsum(ratio), self.variance - 1e-12) + 1)
        k = max(0, min(k, self.max_components, rows.shape[1] - 1, len(var)))
        self.components_ = vt[:k]
        self.explained_variance_ratio_ = ratio[:k]
        self.train_scores = self._errors(rows[cut:])[0]
        self.version = _version(
            self.mean_, self.scale_, self.components_, extra=f"pca|{self.features}|{self.window}"
        )
        return self

    def _errors(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = (rows - self.mean_) / self.scale_  # (B, D)
        recon = (z @ self.components_.T) @ self.components_  # (B, D)
        err = np.square(z - recon)[:, -len(self.features) :]  # (B, F): the event itself
        return err.mean(axis=1), err.astype(np.float32)

    def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw (B, F) or (B, W, F) -> (score (B,) float64, per-feature squared error (B, F) float32)."""
        return self._errors(self._flat(x))
