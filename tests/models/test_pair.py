"""conv with its Half-Space Trees companion: the joined score, its checkpoint, its training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file
from safetensors.torch import save_file

from models import CheckpointError, TrainConfig, load_checkpoint, save_checkpoint, train
from models.checkpoint import METADATA_KEY, load_detector, tensors_sha256
from models.hst import HalfSpaceTreesScorer
from models.pair import RANGE_CLIP, PairScorer, join_train_scores, range_excess


def test_held_back_scores_are_joined_by_rank_over_their_medians() -> None:
    # roots 1, 2, 3, 4 (median 2.5) and 2, 2, 2, 2 (median 2): 0.4 .. 1.6 against 1 each
    joined = join_train_scores(np.array([16.0, 1.0, 9.0, 4.0]), np.array([4.0, 4.0, 4.0, 4.0]))
    assert np.allclose(joined, [0.4, 0.8, 1.2, 1.6])
    # of unequal lengths: each resampled by rank to the shorter's
    joined = join_train_scores(np.array([1.0, 4.0, 9.0]), np.array([1.0, 1.0, 1.0, 1.0, 1.0]))
    assert np.allclose(joined, [0.5, 1.0, 1.5])


def test_the_range_excess_is_the_furthest_step_outside_in_units_of_the_range() -> None:
    low, high = np.array([0.0, 10.0, 3.0]), np.array([1.0, 20.0, 3.0])
    windows = np.array(
        [
            [[0.5, 15.0, 3.0], [0.5, 15.0, 3.0]],  # inside
            [[0.5, 15.0, 3.0], [1.5, 15.0, 3.0]],  # 0.5 over the first's range of 1
            [[0.5, 5.0, 3.0], [0.5, 15.0, 3.0]],  # 5 under the second's range of 10
            [[2.0, 25.0, 3.0], [0.5, 15.0, 3.0]],  # 1 and 0.5: the larger
            [[0.5, 15.0, 4.5], [0.5, 15.0, 3.0]],  # a feature constant in training: units of 1
        ]
    )
    assert np.allclose(range_excess(windows, low, high), [0.0, 0.5, 0.5, 1.0, 1.5])
    assert range_excess(windows[:, -1], low, high).tolist() == [0.0, 0.5, 0.0, 0.0, 0.0]


def _series(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return (np.sin(2 * np.pi * t / 50) + 0.05 * rng.normal(size=n))[:, None].astype(np.float32)


@pytest.fixture(scope="module")
def pair_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pair") / "pair.safetensors"
    config = TrainConfig(
        kind="conv", companion="hst", epochs=3, window=16, seed=0, progress=False, name="p"
    )
    result = train(_series(1500), ["v"], config, out)
    assert isinstance(result.detector, PairScorer)
    assert result.scorer is result.detector.primary
    return out


def _windows(x: np.ndarray, w: int = 16) -> np.ndarray:
    return np.ascontiguousarray(np.lib.stride_tricks.sliding_window_view(x[:, 0], w)[:, :, None])


def test_the_pair_scores_by_its_formula(pair_checkpoint: Path) -> None:
    pair = load_detector(pair_checkpoint)
    assert isinstance(pair, PairScorer)
    ae = load_checkpoint(pair_checkpoint)  # the autoencoder alone
    hst = load_detector(pair_checkpoint).companion  # type: ignore[union-attr]
    assert not isinstance(ae, PairScorer)
    x = _series(400, seed=5) * 1.0
    x[300:305] = 3.0  # far above the training range's top (about 1.1)
    win = _windows(x)
    got, per_feature = pair.score(win)
    err, per_ae = ae.score(win)
    h, _ = hst.score(win)
    m_ae = np.median(np.sqrt(ae.train_scores))
    m_h = np.median(np.sqrt(hst.train_scores))
    d = range_excess(win, pair.low, pair.high)
    want = (np.sqrt(err) / m_ae) * (np.sqrt(h) / m_h) * (1 + d) ** 2
    assert np.allclose(got, want, rtol=1e-12)
    assert np.array_equal(per_feature, per_ae)
    top, span = float(pair.high[0]), float(pair.high[0] - pair.low[0])
    assert d.max() == pytest.approx((3.0 - top) / span) and (d[:280] == 0).all()
    # the pair's held-back scores: the two models' joined by rank
    assert np.allclose(pair.train_scores, join_train_scores(ae.train_scores, hst.train_scores))
    assert (pair.kind, pair.name, pair.window, pair.features) == ("conv", "p", 16, ("v",))


def test_an_absurd_reading_weighs_at_most_the_clip(pair_checkpoint: Path) -> None:
    pair = load_detector(pair_checkpoint)
    assert isinstance(pair, PairScorer)
    hst = load_detector(pair_checkpoint).companion  # type: ignore[union-attr]
    ae = load_checkpoint(pair_checkpoint)
    win = _windows(_series(40, seed=3))
    win[-1, -1, 0] = 1e30  # d would be about 5e29 training ranges
    joined = pair.score(win)[0]
    m_ae, m_h = np.median(np.sqrt(ae.train_scores)), np.median(np.sqrt(hst.train_scores))
    plain = np.sqrt(ae.score(win)[0]) / m_ae * np.sqrt(hst.score(win)[0]) / m_h
    assert joined[-1] == pytest.approx(plain[-1] * (1 + RANGE_CLIP) ** 2, rel=1e-12)
    assert np.isfinite(joined).all() and joined[-1] < 1e9


def test_the_companion_goes_on_learning_as_it_scores(pair_checkpoint: Path) -> None:
    pair = load_detector(pair_checkpoint)
    assert isinstance(pair, PairScorer)
    win = _windows(_series(600, seed=9))
    first = pair.score(win)[0]
    again = pair.score(win)[0]  # the same windows, now that the trees have counted them
    assert not np.array_equal(first, again)
    fresh = load_detector(pair_checkpoint)
    assert np.array_equal(fresh.score(win)[0], first)  # the file is the state at training's end


def test_the_checkpoint_holds_the_companion_and_the_range(pair_checkpoint: Path) -> None:
    tensors = load_file(pair_checkpoint)
    assert tensors["companion.forest.feature"].dtype == np.int64
    assert tensors["companion.forest.threshold"].dtype == np.float64
    x = _series(1500)
    assert tensors["range.low"].tolist() == [float(x.min())]
    assert tensors["range.high"].tolist() == [float(x.max())]


def test_a_companion_that_does_not_fit_is_refused_at_the_save(
    pair_checkpoint: Path, tmp_path: Path
) -> None:
    pair = load_detector(pair_checkpoint)
    assert isinstance(pair, PairScorer)
    ae = pair.primary
    bad = HalfSpaceTreesScorer(("v",), window=8, seed=0).fit(_series(600))  # window 8, not 16
    out = tmp_path / "bad.safetensors"
    with pytest.raises(CheckpointError, match="companion does not fit"):
        save_checkpoint(
            out,
            ae.model,
            ae.scaler,
            features=ae.features,
            train_scores=ae.train_scores,
            companion=bad,
            train_range=(pair.low, pair.high),
        )
    assert not out.exists()
    with pytest.raises(CheckpointError, match="go together"):
        save_checkpoint(
            out, ae.model, ae.scaler, features=ae.features, train_scores=ae.train_scores,
            companion=pair.companion,
        )  # fmt: skip
    for low, high in ([2.0], [1.0]), ([np.nan], [1.0]):
        with pytest.raises(CheckpointError, match="training range"):
            save_checkpoint(
                out, ae.model, ae.scaler, features=ae.features, train_scores=ae.train_scores,
                companion=pair.companion, train_range=(np.array(low), np.array(high)),
            )  # fmt: skip
    assert not out.exists()


def test_a_companion_goes_with_conv_on_one_series_only(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="conv model only"):
        TrainConfig(kind="dense", companion="hst")
    with pytest.raises(ValueError, match="companion must be"):
        TrainConfig(kind="conv", companion="pca")
    x = np.vstack([_series(400), _series(400, seed=1)])
    keys = np.repeat(["a", "b"], 400)
    config = TrainConfig(kind="conv", companion="hst", epochs=1, window=8, progress=False)
    with pytest.raises(ValueError, match="one series"):
        train(x, ["v"], config, tmp_path / "p.safetensors", entities=keys)
    assert not (tmp_path / "p.safetensors").exists()


def _forged(path: Path, tmp_path: Path, tensors=None, meta=None, drop=()) -> Path:  # type: ignore[no-untyped-def]
    """The pair's checkpoint with edited tensors or companion metadata, re-hashed, so that only the
    edit is judged."""
    with safe_open(str(path), framework="pt") as f:
        all_tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        doc = json.loads(f.metadata()[METADATA_KEY])
    all_tensors.update(tensors or {})
    for key in drop:
        del all_tensors[key]
    doc["companion"] = {**doc["companion"], **(meta or {})}
    doc["tensors_sha256"] = tensors_sha256(all_tensors)
    out = tmp_path / "forged.safetensors"
    save_file(all_tensors, str(out), metadata={METADATA_KEY: json.dumps(doc)})
    return out


@pytest.mark.parametrize(
    ("tensors", "meta", "drop", "match"),
    [
        (None, None, (), None),  # the rewrite alone: still loads
        (
            {"companion.forest.feature": torch.zeros(10, 255, dtype=torch.float64)},
            None,
            (),
            "int64",
        ),
        ({"companion.forest.l_mass": torch.full((10, 511), -1)}, None, (), "does not fit"),
        ({"companion.low": torch.full((16,), float("nan"), dtype=torch.float64)}, None, (), "fit"),
        ({"range.low": torch.tensor([5.0], dtype=torch.float64)}, None, (), "training range"),
        (None, {"kind": "pca"}, (), "kind 'hst'"),
        (None, {"seed": "0"}, (), "seed must be a number"),
        (None, None, ("companion.forest.r_mass",), "does not fit"),
        (
            {
                "companion.forest.feature": torch.zeros(100, 255, dtype=torch.int64),
                "companion.forest.threshold": torch.zeros(100, 255, dtype=torch.float64),
                "companion.forest.l_mass": torch.zeros(100, 511, dtype=torch.int64),
                "companion.forest.r_mass": torch.zeros(100, 511, dtype=torch.int64),
            },
            None,
            (),
            "at most 64",
        ),
    ],
)
def test_a_forged_companion_is_refused_by_either_loader(  # type: ignore[no-untyped-def]
    pair_checkpoint: Path, tmp_path: Path, tensors, meta, drop, match
) -> None:
    path = _forged(pair_checkpoint, tmp_path, tensors, meta, drop)
    if match is None:
        assert isinstance(load_detector(path), PairScorer)
        return
    for load in (load_detector, load_checkpoint):
        with pytest.raises(CheckpointError, match=match):
            load(path)
