from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from models import TrainConfig, TrainResult, train


def test_same_seed_same_model_other_seed_differs(
    make_data: Callable[..., np.ndarray],
    make_batch: Callable[[str, np.ndarray], np.ndarray],
    make_config: Callable[..., TrainConfig],
    features: list[str],
    kind: str,
    tmp_path: Path,
) -> None:
    data = make_data(300)
    a = train(data, features, make_config(kind, epochs=2), tmp_path / "a.safetensors")
    b = train(data, features, make_config(kind, epochs=2), tmp_path / "b.safetensors")
    c = train(data, features, make_config(kind, epochs=2, seed=1), tmp_path / "c.safetensors")
    sa, sb = a.scorer.model.state_dict(), b.scorer.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.history == b.history
    assert np.array_equal(a.scorer.train_scores, b.scorer.train_scores)
    x = make_batch(kind, make_data(40, seed=9))
    assert np.array_equal(a.scorer.score(x)[0], b.scorer.score(x)[0])
    assert not np.array_equal(a.scorer.score(x)[0], c.scorer.score(x)[0])


def test_global_rng_untouched(
    make_data: Callable[..., np.ndarray],
    make_config: Callable[..., TrainConfig],
    features: list[str],
    tmp_path: Path,
) -> None:
    before = torch.get_rng_state()
    train(make_data(200), features, make_config("vae", epochs=1), tmp_path / "m.safetensors")
    assert torch.equal(torch.get_rng_state(), before)


def test_result_history_and_artifacts(trained: dict[str, TrainResult], kind: str) -> None:
    r = trained[kind]
    assert r.path.is_file()
    assert (r.path.parent / f"{kind}.loss.png").read_bytes()[:4] == b"\x89PNG"
    vals = [h["val_loss"] for h in r.history]
    assert [h["epoch"] for h in r.history] == list(range(1, len(r.history) + 1))
    assert r.best_epoch == int(np.argmin(vals)) + 1
    assert all(np.isfinite(h["train_loss"]) for h in r.history)
    # train_scores are the scores of the held-back data, through the serving path
    assert r.scorer.train_scores.shape == ((120 - r.scorer.window + 1) if kind == "conv" else 120,)


def test_training_reduces_loss_and_early_stops(
    make_data: Callable[..., np.ndarray],
    make_config: Callable[..., TrainConfig],
    features: list[str],
    tmp_path: Path,
) -> None:
    cfg = make_config("dense", epochs=200, patience=2, lr=3e-3)
    r = train(make_data(400), features, cfg, tmp_path / "m.safetensors")
    assert r.history[r.best_epoch - 1]["val_loss"] < 0.5 * r.history[0]["val_loss"]
    assert len(r.history) < 200 and len(r.history) - r.best_epoch == 2


def test_train_scores_subsampled(
    make_data: Callable[..., np.ndarray],
    make_config: Callable[..., TrainConfig],
    features: list[str],
    tmp_path: Path,
) -> None:
    cfg = make_config("dense", epochs=1, max_train_scores=25)
    r = train(make_data(400), features, cfg, tmp_path / "m.safetensors")
    assert r.scorer.train_scores.shape == (25,)


def test_conv_windows_stay_within_entity_and_split_by_time(
    make_data: Callable[..., np.ndarray],
    make_config: Callable[..., TrainConfig],
    features: list[str],
    tmp_path: Path,
) -> None:
    data = make_data(300)
    entities = np.tile(["a", "b"], 150)  # two interleaved series of 150 rows
    r = train(data, features, make_config("conv", epochs=1), tmp_path / "m.safetensors", entities)
    # each entity: last 30 rows validate -> 30 - W + 1 windows; none straddles entities
    assert r.scorer.train_scores.shape == (2 * (30 - r.scorer.window + 1),)


def test_conv_window_longer_than_entity(
    make_data: Callable[..., np.ndarray],
    make_config: Callable[..., TrainConfig],
    features: list[str],
    tmp_path: Path,
) -> None:
    data = make_data(40)
    entities = np.repeat(["a", "b", "c", "d", "e"], 8)  # 8 rows each
    with pytest.raises(ValueError, match="window"):
        train(data, features, make_config("conv", window=9), tmp_path / "m.safetensors", entities)


def test_progress_bar_shows_losses(
    make_data: Callable[..., np.ndarray],
    make_config: Callable[..., TrainConfig],
    features: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    train(
        make_data(200),
        features,
        make_config("dense", epochs=1, progress=True),
        tmp_path / "m.safetensors",
    )
    err = capsys.readouterr().err
    assert "train=" in err and "val=" in err


@pytest.mark.parametrize(
    "bad", [{"kind": "lstm"}, {"val_fraction": 1.0}, {"epochs": 0}, {"lr": 0.0}, {"latent_dim": 0}]
)
def test_config_validates(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        TrainConfig(**bad)  # type: ignore[arg-type]


def test_rejects_bad_data(
    make_data: Callable[..., np.ndarray],
    make_config: Callable[..., TrainConfig],
    features: list[str],
    tmp_path: Path,
) -> None:
    data = make_data(50)
    with pytest.raises(ValueError, match="feature names"):
        train(data, features[:5], make_config("dense"), tmp_path / "m.safetensors")
    data[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        train(data, features, make_config("dense"), tmp_path / "m.safetensors")


def test_vae_samples_match_training_data(features: list[str], tmp_path: Path) -> None:
    """Per feature: sample mean within 0.25 std of the data mean, sample std within a factor 1.5.

    Data: one latent factor driving 6 features (|correlation| ~0.9), features on mixed scales.
    With the unit-variance decoder the model explains only the variance above the decoder's
    noise, so sampled correlations come out weaker than the data's (~0.35 vs ~0.9; see
    models/vae.py). We assert their signs and a floor, which a collapsed VAE would fail.
    """
    rng = np.random.default_rng(0)
    z = rng.normal(size=(3000, 1))
    loadings = np.array([[1.0, -1.0, 0.8, 1.2, -0.6, 0.9]])
    x = z @ loadings + 0.3 * rng.normal(size=(3000, 6))
    x = (x * [1, 2, 5, 10, 0.5, 1] + np.arange(6) * 3).astype(np.float32)
    cfg = TrainConfig(kind="vae", epochs=15, lr=3e-3, latent_dim=2, progress=False)
    s = train(x, features, cfg, tmp_path / "vae.safetensors").scorer.sample(5000, seed=0)
    mean, std = x.mean(0), x.std(0)
    assert np.all(np.abs(s.mean(0) - mean) <= 0.25 * std), (s.mean(0) - mean) / std
    ratio = s.std(0) / std
    assert np.all((ratio >= 1 / 1.5) & (ratio <= 1.5)), ratio
    cx, cs = np.corrcoef(x.T), np.corrcoef(s.T)
    off = ~np.eye(6, dtype=bool)
    assert np.all(np.sign(cs[off]) == np.sign(cx[off]))
    assert np.all(np.abs(cs[off]) >= 0.2), cs


def test_vae_samples_a_column_without_spread_as_its_constant(tmp_path: Path) -> None:
    """Such a column's scale is the stand-in 1.0, so the decoder's unit noise gave a version fixed
    at 7 samples from 3.7 to 10.7; columns with spread keep theirs, and the checkpoint keeps which."""
    from models import load_checkpoint

    rng = np.random.default_rng(1)
    n = 2_000
    temp = 20 + 5 * rng.normal(size=n)
    x = np.stack(
        [temp, np.full(n, 7.0), 1_000 + 1e-5 * rng.normal(size=n), 2 * temp + rng.normal(size=n)], 1
    ).astype(np.float32)
    cfg = TrainConfig(kind="vae", epochs=5, latent_dim=2, progress=False)
    result = train(x, ["temp", "version", "ref", "temp2"], cfg, tmp_path / "v.safetensors")
    for scorer in (result.scorer, load_checkpoint(result.path)):
        assert scorer.scaler.constant is not None
        assert scorer.scaler.constant.tolist() == [False, True, True, False]
        s = scorer.sample(3_000, seed=0)
        assert np.all(s[:, 1] == 7.0)
        assert np.all(s[:, 2] == np.float32(np.median(x[:, 2])))
        assert 0.6 < s[:, 0].std() / x[:, 0].std() < 1.5


def test_values_beyond_float32_are_named_as_such(tmp_path: Path) -> None:
    """Finite float64 values past float32's range were refused as "contains NaN or inf"."""
    x = np.ones((50, 2))
    x[3, 1] = 1e39
    with np.errstate(over="ignore"), pytest.raises(ValueError, match=r"beyond float32.s range"):
        train(x, ["a", "b"], TrainConfig(epochs=1, progress=False), tmp_path / "m.safetensors")


def test_entities_of_mixed_types_are_grouped_not_sorted(tmp_path: Path) -> None:
    """An object array of entities such as 1 and "a" raised TypeError (they do not sort)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2))
    entities = np.array([1 if i % 2 else "a" for i in range(400)], dtype=object)
    config = TrainConfig(kind="conv", window=8, epochs=1, progress=False)
    result = train(x, ["a", "b"], config, tmp_path / "m.safetensors", entities=entities)
    assert result.path.exists()
    with pytest.raises(ValueError, match="hashable"):
        bad = np.empty(400, dtype=object)
        bad[:] = [{"k": i % 2} for i in range(400)]  # neither sortable nor hashable
        train(x, ["a", "b"], config, tmp_path / "n.safetensors", entities=bad)
