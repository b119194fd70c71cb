"""Autoencoder models for ae-streamer: train, checkpoint and score; nothing here knows Kafka."""

from __future__ import annotations

from models.checkpoint import load_checkpoint, load_detector, save_checkpoint
from models.conv import ConvAutoencoder, ConvConfig
from models.dense import DenseAutoencoder, DenseConfig
from models.errors import CheckpointError, ModelError
from models.scaling import RobustScaler
from models.scorer import Scorer
from models.training import TrainConfig, TrainResult, train
from models.vae import VAE, VAEConfig

__all__ = [
    "VAE",
    "CheckpointError",
    "ConvAutoencoder",
    "ConvConfig",
    "DenseAutoencoder",
    "DenseConfig",
    "ModelError",
    "RobustScaler",
    "Scorer",
    "TrainConfig",
    "TrainResult",
    "VAEConfig",
    "load_checkpoint",
    "load_detector",
    "save_checkpoint",
    "train",
]
