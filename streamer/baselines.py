"""Baseline detectors with the scorer protocol of ``models.Scorer``, so they run through the same pipeline.

Two detectors that every evaluation runs beside the autoencoders, under the same protocol and the same
threshold policy:

- :class:`HalfSpaceTreesScorer` (``hst``): river's Half-Space Trees, an online isolation forest. Features
  are min-max scaled with the training data's range and clipped to [0, 1]; it learns the training part
  first, then scores prequentially (``score_one`` then ``learn_one``) every event it is asked to score,
  exactly as it would run in production. River builds the trees; :class:`models.hst.HalfSpaceForest`
  then scores and learns a batch at a time with river's exact results, about ten times faster.
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

from collections.abc import Sequence

import numpy as np

from models.hst import HalfSpaceTreesScorer
from models.windowed import WindowedScorer, lag_windows, split_holdout, version_of

__all__ = ["BASELINE_KINDS", "HalfSpaceTreesScorer", "PCAScorer", "lag_windows"]

BASELINE_KINDS = ("hst", "pca")


class PCAScorer(WindowedScorer):
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
        cut = split_holdout(len(rows), self.holdout)
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
        self.version = version_of(
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
