"""Robust per-feature scaling, learnt once on (normal) training data.

Autoencoders train badly on raw metrics whose units differ by orders of magnitude, and a
mean/std scaler fitted on data with a few spikes is dominated by those spikes. So we centre on
the median and divide by a robust spread (IQR / 1.349, which equals the std for a Gaussian),
falling back to the std and then to 1.0 so that a constant column never divides by ~0. Scaled
values are clipped to +-clip: one absurd reading must not produce inf/NaN or wreck the batch.

>>> import numpy as np
>>> s = RobustScaler.fit(np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0], [4.0, 5.0]]))
>>> s.transform(np.array([[2.5, 5.0]])).tolist()
[[0.0, 0.0]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

IQR_TO_STD = 1.349  # IQR of a standard normal distribution
DEFAULT_CLIP = 50.0
# A checkpoint's clip beyond this is refused: scaled values must stay far from overflow.
MAX_CLIP = 1e6
# A spread below this, or below _ULPS float32 steps at the column's centre, counts as "no spread": the
# float32 values themselves cannot show a smaller one. (A bound relative to the centre alone, 1e-6 of
# it, took a gauge of 4e9 +- 2,000 for a constant, and its spikes went unseen.)
_TINY = 1e-6
_ULPS = 2


@dataclass(frozen=True, eq=False)
class RobustScaler:
    """Fitted centre (F,) and scale (F,) in float32; z = clip((x - center) / scale)."""

    center: np.ndarray  # (F,) float32
    scale: np.ndarray  # (F,) float32, all > 0
    clip: float = DEFAULT_CLIP
    # (F,) bool: columns without spread in the training data (their scale is the fallback 1.0, not
    # theirs); None when unknown (a checkpoint written before it was kept)
    constant: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.center.ndim != 1 or self.center.shape != self.scale.shape:
            raise ValueError(
                f"center {self.center.shape} and scale {self.scale.shape} must be equal (F,)"
            )
        if not (np.isfinite(self.center).all() and np.isfinite(self.scale).all()):
            raise ValueError("center and scale must be finite")
        if not (self.scale > 0).all():
            raise ValueError("scale must be > 0")
        if not 0 < self.clip <= MAX_CLIP:
            raise ValueError(f"clip must be > 0 and at most {MAX_CLIP:g}, got {self.clip}")
        if self.constant is not None and (
            self.constant.dtype != np.bool_ or self.constant.shape != self.center.shape
        ):
            raise ValueError(f"constant must be a bool {self.center.shape} mask")

    @property
    def n_features(self) -> int:
        return int(self.center.shape[0])

    @classmethod
    def fit(
        cls, x: np.ndarray, clip: float = DEFAULT_CLIP, names: Sequence[str] | None = None
    ) -> RobustScaler:
        """Learn centre = median and scale = IQR/1.349 (-> std -> 1.0) per column of x (N, F);
        ``names`` only name a column in an error."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"expected a non-empty (N, F) array, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("training data contains NaN or inf")
        center = np.median(x, axis=0)
        q25, q75 = np.percentile(x, [25, 75], axis=0)
        step = np.spacing(np.abs(center).astype(np.float32)).astype(np.float64)
        tiny = np.maximum(_TINY, _ULPS * step)
        scale = (q75 - q25) / IQR_TO_STD
        scale = np.where(scale > tiny, scale, x.std(axis=0))
        constant = ~(scale > tiny)
        scale = np.where(constant, 1.0, scale)
        too_wide = np.flatnonzero(~(np.abs(np.stack([center, scale])) <= np.finfo(np.float32).max))
        if too_wide.size:
            j = int(too_wide[0] % x.shape[1])
            raise ValueError(
                f"feature {names[j] if names else j!r}: its median or spread is beyond float32's range "
                f"({np.finfo(np.float32).max:.3g}); rescale that column"
            )
        return cls(center.astype(np.float32), scale.astype(np.float32), float(clip), constant)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Raw (..., F) -> scaled and clipped (..., F) float32."""
        z = (np.asarray(x, dtype=np.float32) - self.center) / self.scale
        return np.clip(z, -self.clip, self.clip, out=z)

    def inverse_transform(self, z: np.ndarray) -> np.ndarray:
        """Scaled (..., F) -> raw units (..., F) float32."""
        return np.asarray(z, dtype=np.float32) * self.scale + self.center
