from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from models import ModelError, TrainResult, load_checkpoint


def test_score_and_encode_shapes(
    make_data: Callable[..., np.ndarray],
    make_batch: Callable[[str, np.ndarray], np.ndarray],
    trained: dict[str, TrainResult],
    kind: str,
) -> None:
    s = trained[kind].scorer
    x = make_batch(kind, make_data(50, seed=3))
    score, err = s.score(x)
    assert score.shape == (len(x),) and score.dtype == np.float64
    assert err.shape == (len(x), 6) and err.dtype == np.float32
    assert np.isfinite(score).all() and (err >= 0).all()
    z = s.encode(x)
    assert z.shape == (len(x), s.latent_dim) and z.dtype == np.float32
    assert s.window == (8 if kind == "conv" else 1)  # conftest.WINDOW
    assert s.features == tuple(f"f{i}" for i in range(6))
    assert s.device == torch.device("cpu") and s.name == kind


def test_anomalies_score_higher(
    make_data: Callable[..., np.ndarray], trained: dict[str, TrainResult]
) -> None:
    s = trained["dense"].scorer
    x = make_data(200, seed=4)
    bad = x.copy()
    bad[:, 0] += 50 * s.scaler.scale[0]  # breaks the correlation structure
    assert np.median(s.score(bad)[0]) > 10 * np.median(s.score(x)[0])
    assert (s.score(bad)[1].argmax(axis=1) == 0).mean() > 0.9  # and blames the right feature


def test_accepts_readonly_float64_and_noncontiguous_input(
    make_data: Callable[..., np.ndarray], trained: dict[str, TrainResult]
) -> None:
    s = trained["dense"].scorer
    x = make_data(20, seed=5)
    ro = x.copy()
    ro.flags.writeable = False
    expected = s.score(x)[0]
    assert np.array_equal(s.score(ro)[0], expected)
    assert np.allclose(s.score(x.astype(np.float64))[0], expected)
    assert np.array_equal(s.score(np.asfortranarray(x))[0], expected)


def test_extreme_values_stay_finite(
    make_data: Callable[..., np.ndarray], trained: dict[str, TrainResult]
) -> None:
    x = make_data(4, seed=6)
    x[0, 1] = 1e30
    x[1, 2] = -1e30
    assert np.isfinite(trained["vae"].scorer.score(x)[0]).all()


def test_wrong_shape_is_model_error(trained: dict[str, TrainResult], kind: str) -> None:
    with pytest.raises(ModelError, match="expects"):
        trained[kind].scorer.score(np.zeros((3, 5), dtype=np.float32))


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_sample_is_vae_only(trained: dict[str, TrainResult], kind: str) -> None:
    with pytest.raises(ModelError, match="vae"):
        trained[kind].scorer.sample(3)


def test_sample_is_seeded(trained: dict[str, TrainResult]) -> None:
    s = trained["vae"].scorer
    a, b, c = s.sample(10, seed=1), s.sample(10, seed=1), s.sample(10, seed=2)
    assert a.shape == (10, 6) and np.array_equal(a, b) and not np.array_equal(a, c)


def test_device_auto_and_unavailable_cuda(trained: dict[str, TrainResult]) -> None:
    path = trained["dense"].path
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert load_checkpoint(path, device="auto").device.type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA"):
            load_checkpoint(path, device="cuda")
    with pytest.raises(ModelError):
        load_checkpoint(path, device="tpu")


def test_errors_are_normalised_per_feature_by_held_back_error(
    make_data: Callable[..., np.ndarray],
    make_batch: Callable[[str, np.ndarray], np.ndarray],
    trained: dict[str, TrainResult],
    kind: str,
) -> None:
    """dense/conv: each feature's squared error is divided by its typical held-back error (stored in
    the checkpoint, floored at the median over features); the score is their mean. VAE: raw ELBO."""
    s = trained[kind].scorer
    if kind == "vae":
        assert s.error_scale is None
        return
    scale = s.error_scale
    assert scale is not None and scale.shape == (6,) and (scale > 0).all()
    assert np.isclose(scale, scale.min()).sum() >= 3  # the lower half floored at the median
    x = make_batch(kind, make_data(40, seed=9))
    score, err = s.score(x)
    with torch.inference_mode():
        _, raw = s.model.anomaly_score(s._scaled(x))
    np.testing.assert_allclose(err, raw.numpy() / scale, rtol=1e-5)
    np.testing.assert_allclose(score, err.mean(axis=1), rtol=1e-5)
    # the held-back scores that start the threshold are in the same normalised units
    assert 0.2 < float(np.mean(s.train_scores)) < 5.0
