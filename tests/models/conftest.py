"""Factory fixtures shared by the models tests: small seeded data and tiny trained checkpoints.

Tests use these through fixtures, never by importing this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from models import TrainConfig, TrainResult, train

KINDS = ("dense", "conv", "vae")
WINDOW = 8


def correlated(n: int, n_features: int = 6, seed: int = 0) -> np.ndarray:
    """(n, F) float32 rows driven by two latent factors plus small noise, features on mixed scales."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    loadings = rng.normal(size=(2, n_features))
    x = z @ loadings + 0.1 * rng.normal(size=(n, n_features))
    return (x * np.geomspace(0.1, 100, n_features) + np.arange(n_features)).astype(np.float32)


def feature_names(n: int) -> list[str]:
    return [f"f{i}" for i in range(n)]


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core box their spin-waits
    made these tests ~10x slower; restored after each test so no global state leaks."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    """Runs a test once per model kind."""
    return str(request.param)


@pytest.fixture
def overfit_losses() -> Callable[[torch.nn.Module, torch.Tensor], list[float]]:
    """The mean squared reconstruction loss of ``model`` on one batch ``x`` over 300 Adam steps."""

    def losses(model: torch.nn.Module, x: torch.Tensor) -> list[float]:
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        out = []
        for _ in range(300):
            loss = ((model(x) - x) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            out.append(loss.item())
        return out

    return losses


@pytest.fixture
def make_data() -> Callable[..., np.ndarray]:
    return correlated


@pytest.fixture
def make_config() -> Callable[..., TrainConfig]:
    return tiny_config


@pytest.fixture
def make_batch() -> Callable[[str, np.ndarray], np.ndarray]:
    return batch_for


@pytest.fixture
def features() -> list[str]:
    return feature_names(6)


def tiny_config(kind: str, **overrides: object) -> TrainConfig:
    args: dict[str, object] = {
        "kind": kind,
        "epochs": 3,
        "batch_size": 64,
        "window": WINDOW,
        "progress": False,
        "seed": 0,
    }
    args.update(overrides)
    return TrainConfig(**args)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TrainResult]:
    """One tiny trained checkpoint per kind, shared by the read-only tests."""
    root: Path = tmp_path_factory.mktemp("ckpt")
    data = correlated(600)
    return {
        kind: train(data, feature_names(6), tiny_config(kind), root / f"{kind}.safetensors")
        for kind in KINDS
    }


def batch_for(kind: str, data: np.ndarray) -> np.ndarray:
    """Scorer input built from rows: (B, F) rows, or (B, W, F) sliding windows for conv."""
    if kind != "conv":
        return data
    return np.lib.stride_tricks.sliding_window_view(data, WINDOW, axis=0).transpose(0, 2, 1)
