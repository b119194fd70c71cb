"""Generated workloads for ``streamer bench``: JSON events with F numeric features, and models to score them.

An event is ``{"sensor_id": "sensor-007", "ts": <epoch ms>, "seq": i, "f00": ..., "f15": ...}``. The
features follow three latent factors plus small noise, on scales from 0.1 to 100 (as real metrics
do), and ``anomaly_rate`` of the events carry a spike on one or two features, so the detector alerts
about as often as it would in service. Models follow the sizing rules of ``streamer train``
(``models.training.model_config``) but are left at their seeded initial weights: scoring speed does not
depend on the weights, and each model's threshold starts from its own scores on normal rows, so the
alert rate is the configured one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import orjson

if TYPE_CHECKING:
    from models import Scorer

KEY_FIELD = "sensor_id"
TIME_FIELD = "ts"
_START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
_TRAIN_SCORES = 20_000  # rows scored for the threshold's warm-up, as `streamer train` keeps at most


def feature_names(n_features: int) -> tuple[str, ...]:
    """``f00``, ``f01``, ...: zero-padded so that the names sort in model order."""
    if n_features < 1:
        raise ValueError(f"n_features must be positive, got {n_features}")
    width = max(2, len(str(n_features - 1)))
    return tuple(f"f{i:0{width}d}" for i in range(n_features))


@dataclass(frozen=True)
class Workload:
    """Events as Kafka would carry them (value bytes and key bytes) and anomaly-free rows like them."""

    features: tuple[str, ...]
    values: list[bytes]  # JSON events, in stream order
    keys: list[bytes]  # Kafka key of each event: its sensor id
    normal: np.ndarray  # (N, F) float32 rows of the same process without anomalies

    def __len__(self) -> int:
        return len(self.values)


def _rows(
    n: int, loadings: np.ndarray, offset: np.ndarray, scale: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    z = rng.normal(size=(n, loadings.shape[0]))  # (N, 3) latent factors
    noise = 0.05 * rng.normal(size=(n, loadings.shape[1]))
    return (z @ loadings + noise) * scale + offset  # (N, F)


def make_workload(
    n_events: int,
    n_features: int,
    *,
    seed: int = 0,
    entities: int = 64,
    anomaly_rate: float = 0.005,
    n_normal: int = 40_000,
) -> Workload:
    """``n_events`` JSON events and ``n_normal`` normal rows, deterministic for a given seed."""
    if n_events < 1 or n_normal < 1:
        raise ValueError(f"need at least one event and one normal row, got {n_events}, {n_normal}")
    if not 1 <= entities <= 100_000:
        raise ValueError(f"entities must be in [1, 100000], got {entities}")
    if not 0.0 <= anomaly_rate < 0.5:
        raise ValueError(f"anomaly_rate must be in [0, 0.5), got {anomaly_rate}")
    rng = np.random.default_rng(seed)
    names = feature_names(n_features)
    loadings = rng.normal(size=(3, n_features))
    offset = rng.uniform(-50.0, 50.0, n_features)
    scale = np.geomspace(0.1, 100.0, n_features)
    normal = _rows(n_normal, loadings, offset, scale, rng).astype(np.float32)
    x = _rows(n_events, loadings, offset, scale, rng)
    spiked = np.flatnonzero(rng.random(n_events) < anomaly_rate)
    for i in spiked.tolist():
        cols = rng.choice(n_features, size=min(2, n_features), replace=False)
        x[i, cols] += rng.choice([-1.0, 1.0], size=len(cols)) * 8.0 * scale[cols]
    sensor = rng.integers(0, entities, n_events)
    width = max(3, len(str(entities - 1)))
    key_names = [f"sensor-{e:0{width}d}" for e in range(entities)]
    values = []
    for i, (e, row) in enumerate(zip(sensor.tolist(), np.round(x, 4).tolist(), strict=True)):
        record: dict[str, object] = {KEY_FIELD: key_names[e], TIME_FIELD: _START_MS + i, "seq": i}
        record.update(zip(names, row, strict=True))
        # orjson's bytes keep the whole output buffer (~8 KiB) allocated; a copy is event-sized.
        values.append(bytes(memoryview(orjson.dumps(record))))
    keys = [key_names[e].encode() for e in sensor.tolist()]
    return Workload(features=names, values=values, keys=keys, normal=normal)


def make_scorer(
    kind: str,
    workload: Workload,
    *,
    device: str = "cpu",
    window: int = 16,
    seed: int = 0,
    train_rows: int = _TRAIN_SCORES,
    precision: str = "fp32",
    cuda_graph: bool = False,
) -> Scorer:
    """A ``models.Scorer`` of ``kind`` sized for the workload's features, on ``device``.

    Its ``train_scores`` are its own scores on up to ``train_rows`` held-back normal rows (windows of consecutive rows
    for conv: the rows are independent, so any W consecutive rows look like an entity's window).
    """
    import torch
    from numpy.lib.stride_tricks import sliding_window_view

    from models import RobustScaler, Scorer, TrainConfig
    from models.kinds import KINDS
    from models.training import model_config

    features = workload.features
    config = model_config(TrainConfig(kind=kind, window=window), len(features))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # nn init draws from the global RNG; forked, so not leaked
        model = KINDS[kind][1](config)
    half = len(workload.normal) // 2
    fit, held = workload.normal[:half], workload.normal[half:]
    version = hashlib.sha256(f"bench|{kind}|{len(features)}|{seed}".encode()).hexdigest()[:12]
    scorer = Scorer(
        model,
        RobustScaler.fit(fit),
        features=features,
        name=f"bench-{kind}",
        version=version,
        train_scores=np.empty(0),
        device=device,
        precision=precision,  # type: ignore[arg-type]
        cuda_graph=cuda_graph,
    )
    if scorer.window == 1:
        sample = held[:train_rows]
    else:
        rows = held[: train_rows + scorer.window - 1]
        sample = np.ascontiguousarray(
            sliding_window_view(rows, (scorer.window, len(features)))[:, 0]
        )  # (N, W, F)
    scorer.train_scores = np.concatenate(
        [scorer.score(sample[i : i + 4096])[0] for i in range(0, len(sample), 4096)]
    )
    return scorer
