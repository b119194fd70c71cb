from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from models import ConvAutoencoder, ConvConfig
from models.conv import FrozenConvScorer


def make(window: int = 8, seed: int = 0) -> ConvAutoencoder:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return ConvAutoencoder(
            ConvConfig(n_features=3, window=window, channels=(8, 8), latent_dim=4)
        )


@pytest.mark.parametrize("window", [4, 5, 7, 8, 33])
def test_shapes_round_trip_for_any_window(window: int) -> None:
    m = make(window)
    x = torch.randn(2, window, 3)  # (B, W, F)
    assert m(x).shape == (2, window, 3)
    assert m.encode(x).shape == (2, 4)


def test_score_is_error_of_last_step() -> None:
    m = make()
    x = torch.randn(4, 8, 3)
    score, err = m.anomaly_score(x)
    expected = (x[:, -1] - m(x)[:, -1]) ** 2  # (B, F): the event itself, in its context
    torch.testing.assert_close(err, expected)
    torch.testing.assert_close(score, expected.mean(1))


def test_same_seed_same_weights() -> None:
    a, b = make(seed=3), make(seed=3)
    assert all(
        torch.equal(va, vb)
        for va, vb in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_overfits_one_batch(
    overfit_losses: Callable[[torch.nn.Module, torch.Tensor], list[float]],
) -> None:
    losses = overfit_losses(
        make(), torch.randn(8, 8, 3, generator=torch.Generator().manual_seed(0))
    )
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])


@pytest.mark.parametrize("bad", [{"window": 3}, {"kernel_size": 4}, {"channels": ()}])
def test_config_validates(bad: dict[str, object]) -> None:
    args: dict[str, object] = {"n_features": 2, "window": 8, **bad}
    with pytest.raises(ValueError):
        ConvConfig(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("window", "kernel", "channels"), [(4, 3, (8, 8)), (8, 5, (8,)), (33, 3, (8, 4, 8))]
)
def test_last_step_decoding_equals_full_decoding(
    window: int, kernel: int, channels: tuple[int, ...]
) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(1)
        m = ConvAutoencoder(
            ConvConfig(
                n_features=3, window=window, channels=channels, latent_dim=4, kernel_size=kernel
            )
        )
    z = torch.randn(5, 4)
    torch.testing.assert_close(m.decode_last(z), m.decode(z)[:, -1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("n_features", "window", "kernel", "channels"),
    [
        (3, 4, 3, (8, 8)),
        (3, 8, 5, (8,)),
        (1, 32, 3, (16, 16)),
        (5, 6, 5, (6, 5, 4)),
        (16, 33, 3, (8, 4, 8)),
    ],
)
def test_frozen_scorer_equals_anomaly_score(
    n_features: int, window: int, kernel: int, channels: tuple[int, ...]
) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(2)
        m = ConvAutoencoder(
            ConvConfig(n_features, window, channels, latent_dim=4, kernel_size=kernel)
        ).eval()
        x = torch.randn(37, window, n_features) * 3
    frozen = FrozenConvScorer(m)
    with torch.inference_mode():
        expected, got = m.anomaly_score(x), frozen(x)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # built from a copy: later changes to the model do not reach it
        m.enc_fc.bias.add_(1.0)
        assert not torch.allclose(m.anomaly_score(x)[0], expected[0])
    torch.testing.assert_close(frozen(x)[0], expected[0], rtol=1e-5, atol=1e-5)


def test_an_empty_batch_scores_empty_on_the_cpu_path(tmp_path) -> None:
    """The CPU conv scorer raised on B = 0 ("cannot reshape tensor of 0 elements"); dense and VAE
    return empty arrays."""
    from models import TrainConfig, load_checkpoint, train

    x = np.random.default_rng(0).normal(size=(300, 2)).astype(np.float32)
    out = tmp_path / "c.safetensors"
    train(x, ["a", "b"], TrainConfig(kind="conv", window=8, epochs=1, progress=False), out)
    scores, errors = load_checkpoint(out).score(np.zeros((0, 8, 2), np.float32))
    assert scores.shape == (0,) and errors.shape == (0, 2)
