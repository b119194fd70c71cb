"""Half-Space Trees on arrays against river's own, event by event."""

from __future__ import annotations

import numpy as np
import pytest
from river.anomaly import HalfSpaceTrees

from models.hst import HalfSpaceForest, HalfSpaceTreesScorer

D = 12


def _rows(n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.clip(rng.normal(0.5, 0.15, size=(n, D)), 0.0, 1.0)
    x[n // 2 : n // 2 + 5] = 0.97  # a burst the trees find rare
    return x


def _river_and_forest(
    first: np.ndarray, window_size: int = 50, height: int = 6
) -> tuple[HalfSpaceTrees, HalfSpaceForest, list[str]]:
    names = [f"x{i}" for i in range(D)]
    model = HalfSpaceTrees(n_trees=7, height=height, window_size=window_size, seed=3)
    model.learn_one(dict(zip(names, first.tolist(), strict=True)))
    return model, HalfSpaceForest.from_river(model, names), names


def _river_prequential(model: HalfSpaceTrees, names: list[str], x: np.ndarray) -> np.ndarray:
    out = []
    for row in x.tolist():
        event = dict(zip(names, row, strict=True))
        out.append(model.score_one(event))
        model.learn_one(event)
    return np.array(out)


@pytest.mark.parametrize("sizes", [(1,), (7,), (50,), (173,), (1000,)])
def test_the_forest_scores_as_river_does_however_the_rows_are_batched(
    sizes: tuple[int, ...],
) -> None:
    x = _rows(1200)
    model, forest, names = _river_and_forest(x[0])
    want = _river_prequential(model, names, x[1:])
    step = sizes[0]
    got = np.concatenate([forest.prequential(x[i : i + step]) for i in range(1, len(x), step)])
    # the same floats, not close ones: the same sums of integer masses, divided the same way
    assert np.array_equal(got, want)
    assert got[: 50 - 1].max() == 0.0  # river's first window scores 0
    assert got.max() > 0.5  # and the scores do vary: the burst scores high
    after = HalfSpaceForest.from_river(model, names)
    assert np.array_equal(forest.l_mass, after.l_mass)
    assert np.array_equal(forest.r_mass, after.r_mass)
    assert (forest.counter, forest.first_window) == (after.counter, after.first_window)


def test_a_missing_value_goes_down_the_side_river_sends_it() -> None:
    x = _rows(300)
    x[200:210, 3] = np.nan
    model, forest, names = _river_and_forest(x[0])
    want = _river_prequential(model, names, x[1:])
    assert np.array_equal(forest.prequential(x[1:]), want)


def test_learning_only_leaves_the_forest_where_scoring_would() -> None:
    x = _rows(400)
    _, a, _ = _river_and_forest(x[0])
    _, b, _ = _river_and_forest(x[0])
    a.prequential(x[1:300], score=False)
    b.prequential(x[1:300])
    assert np.array_equal(a.prequential(x[300:]), b.prequential(x[300:]))


def test_the_state_rebuilds_a_forest_that_goes_on_identically() -> None:
    x = _rows(700)
    _, forest, _ = _river_and_forest(x[0])
    forest.prequential(x[1:333])
    copy = HalfSpaceForest.from_state(forest.state())
    assert np.array_equal(copy.prequential(x[333:]), forest.prequential(x[333:]))


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s.update(l_mass=-s["l_mass"] - 1),
        lambda s: s.update(r_mass=s["r_mass"][:, :-1]),
        lambda s: s.update(feature=s["feature"][:, :-1], threshold=s["threshold"][:, :-1]),
        lambda s: s.update(threshold=np.full_like(s["threshold"], np.nan)),
        lambda s: s.update(window=np.array([50, 50, 0])),
        lambda s: s.update(window=np.array([0, 0, 0])),
        lambda s: s.update(feature=-s["feature"] - 1),
        lambda s: s.update(
            feature=np.zeros((100, 63), np.int64),
            threshold=np.zeros((100, 63)),
            l_mass=np.zeros((100, 127), np.int64),
            r_mass=np.zeros((100, 127), np.int64),
        ),
    ],
)
def test_a_forest_that_does_not_add_up_is_refused(change) -> None:  # type: ignore[no-untyped-def]
    _, forest, _ = _river_and_forest(_rows(10)[0])
    state = {k: v.copy() for k, v in forest.state().items()}
    change(state)
    with pytest.raises(ValueError):
        HalfSpaceForest.from_state(state)


def test_the_scorer_rebuilt_from_its_state_scores_the_same() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(3000)
    series = (np.sin(t / 20) + 0.1 * rng.normal(size=len(t)))[:, None].astype(np.float32)
    a = HalfSpaceTreesScorer(("v",), window=8, seed=2).fit(series[:2000])
    arrays, params = a.state()
    b = HalfSpaceTreesScorer.from_state(("v",), 8, arrays, params, version=a.version)
    windows = np.lib.stride_tricks.sliding_window_view(series[2000:, 0], 8)[:, :, None]
    assert np.array_equal(b.train_scores, a.train_scores)
    assert np.array_equal(b.score(windows)[0], a.score(windows)[0])
    bad = dict(arrays)
    bad["forest.feature"] = np.full_like(arrays["forest.feature"], 8)  # input 8 of 8 (0-7)
    with pytest.raises(ValueError, match="split on input 8"):
        HalfSpaceTreesScorer.from_state(("v",), 8, bad, params, version="x")
