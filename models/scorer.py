"""Scorer: the one object `streamer/` uses to turn raw feature batches into anomaly scores.

It holds a trained model, the scaler learnt with it and the checkpoint's identity (name, version,
features, window). The model stays on one device for the Scorer's lifetime; `score` scales,
runs one forward pass under `torch.inference_mode()` and returns numpy arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from models.conv import ConvAutoencoder, FrozenConvScorer
from models.errors import ModelError
from models.kinds import AnyModel
from models.scaling import RobustScaler
from models.vae import VAE

if TYPE_CHECKING:
    from models.cuda import CudaPending, CudaRunner, Precision


def resolve_device(device: str | torch.device) -> torch.device:
    """Map 'auto' to cuda when available else cpu; 'cuda' without a GPU is an error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = torch.device("meta")  # refused just below with a clear message
    if dev.type not in ("cpu", "cuda"):
        raise ModelError(f"unsupported device {device!r}: use 'auto', 'cpu' or 'cuda'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but torch sees no CUDA device")
    return dev


# Events a VAE draws at a time in sample(); a whole block even for fewer.
SAMPLE_BLOCK = 4_096
MIN_ERROR_SCALE = 1e-7  # per-feature error divisors below this are refused (training: >= 1e-6)


class Scorer:
    """A trained model plus its scaler and metadata, ready to score raw batches.

    score(x): x raw float32 (B, F) when window == 1, (B, W, F) for conv (window ends at the event)
    -> (score (B,) float64, per-feature error (B, F) float32, in scaled units).

    On a CUDA device scoring goes through ``models.cuda.CudaRunner`` (pinned buffers, a side stream,
    optional fp16 and CUDA graphs): ``submit(x)`` queues a batch and returns a handle whose ``result()``
    waits for it, and ``score(x)`` is ``submit(x).result()``. ``precision`` and ``cuda_graph`` apply
    on CUDA only; on a CPU the model always runs in float32, eagerly.
    """

    def __init__(
        self,
        model: AnyModel,
        scaler: RobustScaler,
        *,
        features: Sequence[str],
        name: str,
        version: str,
        train_scores: np.ndarray,
        device: str | torch.device = "cpu",
        metadata: dict[str, Any] | None = None,
        precision: Precision = "fp32",
        cuda_graph: bool = False,
        error_scale: np.ndarray | None = None,
    ) -> None:
        cfg = model.config
        if len(features) != cfg.n_features or scaler.n_features != cfg.n_features:
            raise ModelError(
                f"model has {cfg.n_features} features, scaler {scaler.n_features}, names {len(features)}"
            )
        self.kind: str = model.kind
        self.name = name
        self.version = version
        self.features: tuple[str, ...] = tuple(features)
        self.window: int = getattr(cfg, "window", 1)
        self.latent_dim: int = cfg.latent_dim
        self.train_scores = np.asarray(train_scores, dtype=np.float64)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.scaler = scaler
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self._center = torch.from_numpy(scaler.center).to(self.device)  # (F,)
        self._scale = torch.from_numpy(scaler.scale).to(self.device)  # (F,)
        self._clip = float(scaler.clip)
        # Per-feature divisor of the squared errors (dense and conv, whose score is their mean): each
        # feature's typical error on held-back normal data, so that a feature the model can never
        # predict well does not drown the others. None: raw squared errors.
        self.error_scale: np.ndarray | None = None
        self._err_div: torch.Tensor | None = None
        if error_scale is not None and self.kind in ("dense", "conv"):
            es = np.asarray(error_scale, dtype=np.float32)
            # training floors it at 1e-6: far below, a hostile file makes every score infinite
            if es.shape != (cfg.n_features,) or not (
                np.isfinite(es).all() and (es >= MIN_ERROR_SCALE).all()
            ):
                raise ModelError(
                    f"error_scale must be ({cfg.n_features},) finite and >= {MIN_ERROR_SCALE:g}"
                )
            self.error_scale = es
            self._err_div = torch.from_numpy(es).to(self.device)
        self._in_shape = (cfg.n_features,) if self.window == 1 else (self.window, cfg.n_features)
        # The forward pass: the module's, or for conv on a CPU the same function rearranged for speed
        # (models.conv.FrozenConvScorer; a GPU keeps the module, which CUDA graphs capture).
        self._forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] = (
            FrozenConvScorer(self.model)
            if isinstance(self.model, ConvAutoencoder) and self.device.type == "cpu"
            else self.model.anomaly_score
        )
        self._cuda: CudaRunner | None = None
        if self.device.type == "cuda":
            from models.cuda import CudaRunner

            self._cuda = CudaRunner(
                self._step, self.device, self._in_shape, precision=precision, cuda_graph=cuda_graph
            )

    def __repr__(self) -> str:
        return (
            f"Scorer(kind={self.kind!r}, name={self.name!r}, version={self.version!r}, "
            f"features={len(self.features)}, window={self.window}, device={self.device})"
        )

    def _checked(self, x: np.ndarray) -> np.ndarray:
        """x as an owned, C-contiguous float32 array of this model's input shape."""
        x = np.asarray(x)
        if x.dtype != np.float32 or not x.flags.c_contiguous or not x.flags.writeable:
            x = np.array(x, dtype=np.float32, order="C")  # from_numpy needs an owned float32 buffer
        if x.shape[1:] != self._in_shape:
            raise ModelError(
                f"{self.kind} scorer expects (B, {self._in_shape}) input, got {x.shape}"
            )
        return x

    def _scaled(self, x: np.ndarray) -> torch.Tensor:
        """Raw numpy batch -> scaled, clipped tensor on the model's device."""
        return self._scale_tensor(torch.from_numpy(self._checked(x)).to(self.device))

    def _scale_tensor(self, t: torch.Tensor) -> torch.Tensor:
        return ((t - self._center) / self._scale).clamp_(-self._clip, self._clip)

    def _step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw x on the model's device -> (score (B,), per-feature error (B, F)): scale, clip, forward
        pass, error normalisation. The one scoring function: a CPU calls it directly, and the GPU
        runner queues it on its stream (or replays it from a captured graph)."""
        score, err = self._forward(self._scale_tensor(x))
        if self._err_div is not None:
            err = err / self._err_div
            score = err.mean(dim=1)
        return score, err

    @property
    def gpu_options(self) -> dict[str, Any] | None:
        """On CUDA: the precision and whether CUDA graphs are on (and why not, if capture failed)."""
        if self._cuda is None:
            return None
        c = self._cuda
        return {"precision": c.precision, "cuda_graph": c.cuda_graph, "graph_error": c.graph_error}

    def submit(self, x: np.ndarray) -> CudaPending:
        """CUDA only: queue raw x for scoring and return at once; ``.result()`` is ``score(x)``."""
        if self._cuda is None:
            raise ModelError("submit() needs a scorer on a CUDA device; call score() on a CPU")
        return self._cuda.submit(self._checked(x))

    def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw x -> (score (B,) float64, per-feature error (B, F) float32); one pass, no grad."""
        if self._cuda is not None:
            return self.submit(x).result()
        with torch.inference_mode():
            score, err = self._step(torch.from_numpy(self._checked(x)))
            return score.to(torch.float64).numpy(), err.numpy()

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Raw x (as for `score`) -> latent code (B, latent_dim) float32."""
        with torch.inference_mode():
            return self.model.embed(self._scaled(x)).cpu().numpy()

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """VAE only: n synthetic events (n, F) in raw units, z ~ N(0, I), x ~ N(decode(z), I)."""
        parts = list(self.sample_chunks(n, seed))
        return np.concatenate(parts) if parts else np.empty((0, len(self.features)), np.float32)

    def sample_chunks(self, n: int, seed: int = 0) -> Iterator[np.ndarray]:
        """``sample(n, seed)`` a block of ``SAMPLE_BLOCK`` events at a time, so that memory stays
        bounded. Every block is drawn whole, so the first m events are the same whatever n is."""
        model = self.model
        if not isinstance(model, VAE):
            raise ModelError(f"sample() needs a vae checkpoint, this one is {self.kind!r}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        gen = torch.Generator(device=self.device).manual_seed(seed)
        # A column without spread in training is its constant: its scale is a stand-in (1.0), so the
        # model's unit noise would give it a spread of 1 in its own units.
        constant = self.scaler.constant
        fixed = None if constant is None or not constant.any() else np.flatnonzero(constant)

        def blocks() -> Iterator[np.ndarray]:  # checked above, drawn as the caller reads
            for start in range(0, n, SAMPLE_BLOCK):
                with torch.inference_mode():
                    z = model.sample(SAMPLE_BLOCK, gen)  # scaled
                    block = (z * self._scale + self._center).cpu().numpy()
                if fixed is not None:
                    block[:, fixed] = self.scaler.center[fixed]
                yield block[: n - start]

        return blocks()
