from __future__ import annotations

import torch

from models import VAE, VAEConfig
from models.vae import kl_divergence


def make(seed: int = 0, latent_dim: int = 2) -> VAE:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return VAE(VAEConfig(n_features=5, hidden=(16, 8), latent_dim=latent_dim))


def test_shapes() -> None:
    m = make()
    x = torch.randn(6, 5)  # (B, F)
    x_hat, mu, logvar = m(x)
    assert x_hat.shape == (6, 5) and mu.shape == (6, 2) and logvar.shape == (6, 2)
    assert m.embed(x).shape == (6, 2)
    assert m.sample(3).shape == (3, 5)


def test_score_is_deterministic_negative_elbo() -> None:
    m = make()
    x = torch.randn(6, 5)
    score, err = m.anomaly_score(x)
    mu, logvar = m.encode(x)
    expected_err = (x - m.decode(mu)) ** 2
    torch.testing.assert_close(err, expected_err)
    torch.testing.assert_close(score, 0.5 * expected_err.sum(1) + kl_divergence(mu, logvar))
    assert torch.equal(m.anomaly_score(x)[0], score)  # no sampling at inference


def test_kl_is_zero_at_prior() -> None:
    assert torch.equal(kl_divergence(torch.zeros(2, 3), torch.zeros(2, 3)), torch.zeros(2))


def test_reparameterize_uses_generator() -> None:
    mu, logvar = torch.zeros(4, 2), torch.zeros(4, 2)
    a = VAE.reparameterize(mu, logvar, torch.Generator().manual_seed(1))
    b = VAE.reparameterize(mu, logvar, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_same_seed_same_weights() -> None:
    a, b = make(5), make(5)
    assert all(
        torch.equal(va, vb)
        for va, vb in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_overfits_one_batch() -> None:
    """The negative ELBO of 16 points (scale 10, so reconstruction dominates) falls below 10%."""
    m = make(latent_dim=4)
    gen = torch.Generator().manual_seed(0)
    x = 10 * torch.randn(16, 5, generator=gen)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(400):
        x_hat, mu, logvar = m(x, gen)
        loss = (0.5 * ((x - x_hat) ** 2).sum(1) + kl_divergence(mu, logvar)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(m.anomaly_score(x)[0].mean().item())
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])
