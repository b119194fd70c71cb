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


def test_a_spread_small_beside_a_large_centre_is_still_a_spread() -> None:
    """A gauge of 4e9 +- 2,000 was taken for a constant (spread under 1e-6 of the centre): scale 1,
    so its normal rows were clipped at +-50 and a spike of 1e6 scored as a normal row. Its float32
    values can show that spread (about 4 steps of 512), so it is one."""
    rng = np.random.default_rng(0)
    x = np.column_stack([4e9 + rng.normal(0, 2_000, 5_000), rng.normal(0, 1, 5_000)])
    s = RobustScaler.fit(x.astype(np.float32).astype(np.float64))
    assert s.constant is not None and not s.constant[0]
    assert 1_500 < s.scale[0] < 2_500
    z = s.transform(np.array([[4e9, 0.0], [4e9 + 1e6, 0.0]]))
    assert abs(z[0, 0]) < 1 and z[1, 0] == s.clip
    # float32 rounding alone (below 2 steps at the centre) is still no spread
    flat = np.full((100, 1), 100.0)
    flat[::7] = np.nextafter(np.float32(100.0), np.float32(200.0))
    assert RobustScaler.fit(flat).constant[0]


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
