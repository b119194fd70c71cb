"""Variational autoencoder over single events (Gaussian encoder, unit-variance Gaussian decoder).

Anomaly score = negative ELBO, computed deterministically at inference (decode the posterior
mean instead of a sample, so the same event always gets the same score):

    score(x) = 0.5 * sum_f (x_f - decode(mu)_f)^2 + KL(N(mu, diag(exp(logvar))) || N(0, I))

with x in scaled units; the additive constant 0.5 * F * log(2 pi) is dropped. The per-feature
error is (x - decode(mu))^2. Training minimises the same negative ELBO with sampled z.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.dense import DenseConfig, mlp

LOGVAR_BOUND = 12.0  # keeps exp(logvar) finite whatever the encoder emits


@dataclass(frozen=True)
class VAEConfig(DenseConfig):
    """The dense autoencoder's shape arguments; the encoder's last hidden layer feeds (mu, logvar)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.hidden:
            raise ValueError("a VAE needs at least one hidden layer before (mu, logvar)")


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row: (B, L) -> (B,)."""
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(dim=1)


class VAE(nn.Module):
    kind = "vae"

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden
        self.encoder = nn.Sequential(mlp([config.n_features, *h]), nn.ReLU())
        self.mu = nn.Linear(h[-1], config.latent_dim)
        self.logvar = nn.Linear(h[-1], config.latent_dim)
        self.decoder = mlp([config.latent_dim, *h[::-1], config.n_features])

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)  # (B, F) -> (B, H)
        logvar = self.logvar(h).clamp(-LOGVAR_BOUND, LOGVAR_BOUND)
        return self.mu(h), logvar  # (B, L), (B, L)

    @staticmethod
    def reparameterize(
        mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I) drawn from `generator` (B, L)."""
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + (0.5 * logvar).exp() * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)  # (B, L) -> (B, F)

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, generator)
        return self.decode(z), mu, logvar  # (B, F), (B, L), (B, L)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Latent code used by `Scorer.encode`: the posterior mean (B, F) -> (B, L)."""
        return self.encode(x)[0]

    def anomaly_score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled x (B, F) -> (negative ELBO at z = mu (B,), per-feature squared error (B, F))."""
        mu, logvar = self.encode(x)
        err = (x - self.decode(mu)).square_()  # (B, F)
        return 0.5 * err.sum(dim=1) + kl_divergence(mu, logvar), err

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws from the generative model in scaled units: z ~ N(0, I), x ~ N(decode(z), I).

        The decoder's unit-variance noise is part of the model: on standardised data the decoder
        mean only carries the variance the latent code explains, so samples without the noise
        would be far narrower than the data.
        """
        p = self.mu.weight
        z = torch.randn(
            (n, self.config.latent_dim), generator=generator, device=p.device, dtype=p.dtype
        )
        x_mean = self.decode(z)  # (n, F)
        return x_mean + torch.randn(
            x_mean.shape, generator=generator, device=p.device, dtype=p.dtype
        )
