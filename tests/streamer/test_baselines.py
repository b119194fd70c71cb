"""Baseline detectors: quality floors on seeded data, the scorer protocol, and the pipeline around them."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from sklearn.metrics import roc_auc_score

from streamer.baselines import HalfSpaceTreesScorer, PCAScorer, lag_windows
from streamer.config import EventSettings, ThresholdSettings
from streamer.features import EntityWindows
from streamer.pipeline import Message, Pipeline

FEATURES = ("a", "b", "c", "d")


def correlated(n: int, seed: int) -> np.ndarray:
    """Four channels driven by one latent factor, plus small noise: normal data on a line."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 1))
    return (z * np.array([1.0, 2.0, -1.0, 0.5]) + 0.05 * rng.normal(size=(n, 4))).astype(np.float32)


def with_outliers(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Normal rows with 5% of them knocked off the line in one channel (label 1)."""
    rng = np.random.default_rng(seed)
    x = correlated(n, seed)
    y = np.zeros(n, dtype=np.int8)
    idx = rng.choice(n, size=n // 20, replace=False)
    cols = rng.integers(0, 4, size=len(idx))
    x[idx, cols] += rng.choice([-1.0, 1.0], size=len(idx)) * rng.uniform(1.5, 3.0, size=len(idx))
    y[idx] = 1
    return x, y


def test_lag_windows_match_the_pipelines_entity_windows() -> None:
    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    expected = EntityWindows(4, 3).windows(x, ["k"] * 10)
    np.testing.assert_array_equal(lag_windows(x, 4), expected)
    assert lag_windows(x, 1).shape == (10, 1, 3)


def test_pca_finds_rows_off_the_normal_subspace() -> None:
    pca = PCAScorer(FEATURES).fit(correlated(3000, seed=1))
    assert pca.n_components == 1  # one latent factor explains > 95% of the standardised variance
    assert len(pca.train_scores) == 600  # the held-back 20%
    x, y = with_outliers(4000, seed=2)
    scores, per_feature = pca.score(x)
    assert scores.shape == (4000,) and scores.dtype == np.float64
    assert per_feature.shape == (4000, 4) and per_feature.dtype == np.float32
    np.testing.assert_allclose(scores, per_feature.mean(axis=1), rtol=1e-5)
    assert roc_auc_score(y, scores) > 0.97


def test_pca_keeps_fewer_components_than_inputs_and_respects_the_cap() -> None:
    rng = np.random.default_rng(0)
    white = rng.normal(size=(2000, 4)).astype(np.float32)  # no structure: 95% needs all 4
    assert PCAScorer(FEATURES).fit(white).n_components == 3
    assert PCAScorer(FEATURES, max_components=2).fit(white).n_components == 2
    # one feature: nothing can be dropped, the score is the squared z-score
    one = PCAScorer(("v",)).fit(white[:, :1])
    assert one.n_components == 0
    s, _ = one.score(np.array([[0.0], [3.0]], dtype=np.float32))
    assert s[1] > 8.0 > 0.1 > s[0]


def test_pca_scores_windows_by_their_last_step() -> None:
    t = np.arange(3000, dtype=np.float32)
    series = (np.sin(2 * np.pi * t / 50) + 0.02 * np.random.default_rng(0).normal(size=3000))[
        :, None
    ].astype(np.float32)
    pca = PCAScorer(("v",), window=16).fit(series)
    test = series[:600].copy()
    test[300] += 1.5  # a spike on the sine: invisible per point, obvious in its window
    scores, per_feature = pca.score(lag_windows(test, 16))
    assert per_feature.shape == (600, 1)
    assert int(np.argmax(scores)) == 300
    with pytest.raises(ValueError, match="expects"):
        pca.score(test)


def test_hst_ranks_outliers_high_and_learns_as_it_scores() -> None:
    hst = HalfSpaceTreesScorer(FEATURES, seed=3).fit(correlated(3000, seed=1))
    assert len(hst.train_scores) == 600
    x, y = with_outliers(3000, seed=2)
    scores, per_feature = hst.score(x)
    assert per_feature.shape == (3000, 4)
    assert roc_auc_score(y, scores) > 0.8
    # Prequential: the trees keep learning, so scoring the same rows again gives other scores.
    again, _ = hst.score(x[:300])
    assert not np.array_equal(again, scores[:300])


def test_hst_is_deterministic_for_a_seed_and_clips_to_the_training_range() -> None:
    train = correlated(1000, seed=1)
    a = HalfSpaceTreesScorer(FEATURES, seed=7).fit(train)
    b = HalfSpaceTreesScorer(FEATURES, seed=7).fit(train)
    x = correlated(200, seed=5) * 100.0  # far outside the training range: clipped to [0, 1]
    sa, fa = a.score(x)
    sb, _ = b.score(x)
    np.testing.assert_array_equal(sa, sb)
    assert a.version == b.version and len(a.version) == 12
    assert (fa >= 0).all() and (fa <= 1).all()


# Outliers are 5 % of the events and q = 0.95, so they come at the rate the threshold expects and it
# may rise among them (streamer.threshold); hst's floor is about 2x what chance gives.
@pytest.mark.parametrize(("kind", "floor"), [("hst", 0.1), ("pca", 0.8)])
def test_baselines_run_through_the_pipeline_and_name_themselves_in_alerts(
    kind: str, floor: float
) -> None:
    train = correlated(2000, seed=1)
    scorer = (
        HalfSpaceTreesScorer(FEATURES, seed=0).fit(train)
        if kind == "hst"
        else PCAScorer(FEATURES).fit(train)
    )
    x, y = with_outliers(1000, seed=4)
    messages = [
        Message(orjson.dumps(dict(zip(FEATURES, row, strict=True))), b"k", "t", 0, i)
        for i, row in enumerate(x.tolist())
    ]
    # Every exceedance published (no rise gate): the alerts' contents are under test here.
    events = EventSettings(alert_gate_z=0)
    result = Pipeline(scorer, ThresholdSettings(q=0.95), events).process_messages(messages)
    assert len(result.scores) == 1000 and not result.dead_letters
    assert result.alerts, "outliers must raise alerts"
    alert = orjson.loads(result.alerts[0][1])
    assert alert["model"]["kind"] == kind
    assert len(alert["top_features"]) == 3
    assert result.alert_mask[y == 1].mean() > floor  # share of outliers alerted
    assert result.alert_mask[y == 1].mean() > 2 * result.alert_mask[y == 0].mean()


def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        PCAScorer(FEATURES, variance=0.0)
    with pytest.raises(ValueError):
        HalfSpaceTreesScorer(FEATURES, n_trees=0)
    with pytest.raises(ValueError, match="too few"):
        PCAScorer(FEATURES).fit(correlated(2, seed=0))
    with pytest.raises(ValueError, match="NaN"):
        PCAScorer(FEATURES).fit(np.full((10, 4), np.nan, dtype=np.float32))
