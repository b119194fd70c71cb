from __future__ import annotations

import numpy as np
import pytest

from models import RobustScaler


def test_constant_column_gets_unit_scale_and_no_nan() -> None:
    x = np.column_stack([np.arange(100.0), np.full(100, 7.0)])
    s = RobustScaler.fit(x)
    assert s.scale[1] == 1.0 and s.center[1] == 7.0
    z = s.transform(np.array([[50.0, 7.0], [50.0, 1e30]]))
    assert np.isfinite(z).all()
    assert z[0, 1] == 0.0 and z[1, 1] == s.clip


def test_zero_iqr_falls_back_to_std() -> None:
    x = np.zeros((100, 1))
    x[:3] = 1.0  # IQR is 0, std is not
    s = RobustScaler.fit(x)
    assert s.scale[0] == pytest.approx(x.std(), rel=1e-6)


def test_outliers_do_not_move_centre_or_scale() -> None:
    rng = np.random.default_rng(0)
    clean = rng.normal(10.0, 2.0, size=(5000, 1))
    dirty = clean.copy()
    dirty[:50] = 1e9  # 1% absurd readings
    a, b = RobustScaler.fit(clean), RobustScaler.fit(dirty)
    assert a.scale[0] == pytest.approx(2.0, rel=0.05)
    assert b.center[0] == pytest.approx(a.center[0], abs=0.1)
    assert b.scale[0] == pytest.approx(a.scale[0], rel=0.05)
    z = b.transform(dirty)
    assert np.abs(z).max() == b.clip  # outliers are clipped, not blown up


def test_round_trip_inside_clip() -> None:
    x = np.random.default_rng(1).normal(size=(200, 3)).astype(np.float32) * [1, 10, 100]
    s = RobustScaler.fit(x)
    np.testing.assert_allclose(s.inverse_transform(s.transform(x)), x, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("bad", [np.zeros((0, 2)), np.zeros(5), np.array([[1.0, np.nan]])])
def test_fit_rejects_bad_input(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        RobustScaler.fit(bad)
