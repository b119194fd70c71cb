from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.threshold import QuantileThreshold


def test_initialised_from_training_scores_so_no_blind_warm_up() -> None:
    rng = np.random.default_rng(0)
    t = QuantileThreshold(0.99, initial_scores=rng.exponential(size=20_000))
    assert t.get() == pytest.approx(np.log(100), rel=0.05)  # exp(1) q-quantile = -ln(1 - q)
    _, alerts = t.decide(np.array([100.0]))
    assert alerts.tolist() == [True]


def test_without_history_nothing_alerts_until_enough_scores() -> None:
    t = QuantileThreshold(0.5)
    thresholds, alerts = t.decide(np.array([1e9, 1e9, 1e9, 1e9]))
    assert np.isinf(thresholds).all()
    assert not alerts.any()


@pytest.mark.parametrize("window", [None, 5_000])
def test_alert_rate_on_stationary_scores_is_close_to_one_minus_q(window: int | None) -> None:
    rng = np.random.default_rng(1)
    t = QuantileThreshold(0.99, window=window, initial_scores=rng.exponential(size=10_000))
    _, alerts = t.decide(rng.exponential(size=200_000))
    assert 0.006 < alerts.mean() < 0.015


@pytest.mark.parametrize("window", [None, 5_000])
def test_an_attack_does_not_lift_the_bar_unless_configured(window: int | None) -> None:
    rng = np.random.default_rng(2)
    scores = rng.exponential(size=50_000)
    scores[::10] = rng.uniform(500.0, 1_500.0, size=len(scores[::10]))  # a sustained attack: 10 % of events
    guarded = QuantileThreshold(0.99, window=window, initial_scores=rng.exponential(size=10_000))
    _, guarded_alerts = guarded.decide(scores)
    lifted = QuantileThreshold(0.99, window=window, update_on_alert=True, initial_scores=rng.exponential(size=10_000))
    _, lifted_alerts = lifted.decide(scores)
    assert guarded.get() < 10.0
    assert guarded_alerts[::10].mean() > 0.99
    assert lifted.get() > 100.0
    assert lifted_alerts[::10].mean() < 0.5


def test_decide_equals_one_by_one() -> None:
    rng = np.random.default_rng(3)
    scores = rng.exponential(size=2_000)
    batch = QuantileThreshold(0.9, initial_scores=np.arange(100.0))
    single = QuantileThreshold(0.9, initial_scores=np.arange(100.0))
    thr_b, al_b = batch.decide(scores)
    parts = [single.decide(scores[i : i + 1]) for i in range(len(scores))]
    np.testing.assert_array_equal(thr_b, np.concatenate([p[0] for p in parts]))
    np.testing.assert_array_equal(al_b, np.concatenate([p[1] for p in parts]))


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=6, max_size=300),
    st.sampled_from([0.5, 0.9, 0.995]),
    st.sampled_from([None, 10, 50]),
)
def test_estimate_lies_within_the_observed_range(values: list[float], q: float, window: int | None) -> None:
    t = QuantileThreshold(q, window=window, update_on_alert=True)
    thresholds, _ = t.decide(np.array(values))
    finite = thresholds[np.isfinite(thresholds)]
    seen = np.array(values)
    assert ((finite >= seen.min() - 1e-9) & (finite <= seen.max() + 1e-9)).all()
    assert min(values) - 1e-9 <= t.get() <= max(values) + 1e-9


@pytest.mark.parametrize("q", [0.0, 1.0, -0.5, 1.5])
def test_q_is_validated(q: float) -> None:
    with pytest.raises(ValueError, match="q must be"):
        QuantileThreshold(q)
