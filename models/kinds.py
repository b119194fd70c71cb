"""The model kinds a checkpoint may hold: kind name -> (config class, module class)."""

from __future__ import annotations

from models.conv import ConvAutoencoder, ConvConfig
from models.dense import DenseAutoencoder, DenseConfig
from models.vae import VAE, VAEConfig

KINDS: dict[str, tuple[type, type]] = {
    "dense": (DenseConfig, DenseAutoencoder),
    "conv": (ConvConfig, ConvAutoencoder),
    "vae": (VAEConfig, VAE),
}

AnyModel = DenseAutoencoder | ConvAutoencoder | VAE
