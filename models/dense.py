"""Dense (fully connected) autoencoder over single events.

Score of an event = mean over features of the squared reconstruction error in scaled units;
the per-feature error is that squared error, so an alert can say which fields looked wrong.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

MAX_LAYERS = 16


@dataclass(frozen=True)
class DenseConfig:
    n_features: int
    hidden: tuple[int, ...] = (64, 32)  # encoder widths; the decoder mirrors them
    latent_dim: int = 4

    def __post_init__(self) -> None:
        if self.n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {self.n_features}")
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}")
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden widths must be >= 1, got {self.hidden}")
        # a checkpoint's metadata is read from a file: bounds keep a small file from building a huge
        # or endless model (the tensors must match the shapes, so widths are bounded by the file)
        if len(self.hidden) > MAX_LAYERS:
            raise ValueError(f"at most {MAX_LAYERS} hidden layers, got {len(self.hidden)}")


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them and none after the last (a linear output)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DenseAutoencoder(nn.Module):
    kind = "dense"

    def __init__(self, config: DenseConfig) -> None:
        super().__init__()
        self.config = config
        sizes = [config.n_features, *config.hidden, config.latent_dim]
        self.encoder = mlp(sizes)
        self.decoder = mlp(sizes[::-1])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)  # (B, F) -> (B, L)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)  # (B, L) -> (B, F)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))  # (B, F) -> (B, F)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Latent code used by `Scorer.encode`: (B, F) -> (B, L)."""
        return self.encoder(x)

    def anomaly_score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled x (B, F) -> (score (B,), per-feature squared error (B, F))."""
        err = (x - self(x)).square_()  # (B, F)
        return err.mean(dim=1), err
