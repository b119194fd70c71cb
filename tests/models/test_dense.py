from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from models import DenseAutoencoder, DenseConfig


def make(seed: int = 0) -> DenseAutoencoder:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return DenseAutoencoder(DenseConfig(n_features=7, hidden=(16, 8), latent_dim=3))


def test_shapes() -> None:
    m = make()
    x = torch.randn(5, 7)  # (B, F)
    assert m(x).shape == (5, 7)
    assert m.encode(x).shape == (5, 3)
    score, err = m.anomaly_score(x)
    assert score.shape == (5,) and err.shape == (5, 7)
    torch.testing.assert_close(score, ((x - m(x)) ** 2).mean(1))


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_same_seed_same_weights() -> None:
    assert same_weights(make(0), make(0))
    assert not same_weights(make(0), make(1))


def test_overfits_one_batch(
    overfit_losses: Callable[[torch.nn.Module, torch.Tensor], list[float]],
) -> None:
    losses = overfit_losses(make(), torch.randn(16, 7, generator=torch.Generator().manual_seed(0)))
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])


@pytest.mark.parametrize("bad", [{"n_features": 0}, {"latent_dim": 0}, {"hidden": (4, 0)}])
def test_config_validates(bad: dict[str, object]) -> None:
    args: dict[str, object] = {"n_features": 4, "hidden": (8,), "latent_dim": 2, **bad}
    with pytest.raises(ValueError):
        DenseConfig(**args)  # type: ignore[arg-type]
