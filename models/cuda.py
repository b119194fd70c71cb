"""Scoring on a CUDA device: pinned host buffers, one side stream, optional fp16 and CUDA graphs.

``CudaRunner.submit(x)`` copies a raw batch into a pinned host buffer, queues on the runner's own stream
the non-blocking host-to-device copy, scaling, forward pass and device-to-host copies of the results,
and returns at once; ``result()`` of what it returns waits for that batch alone. So the caller can decode
its next batch while the device scores this one (``streamer.pipeline`` does).

Two pinned slots alternate, so a batch's input is being copied in while the previous batch's results are
being copied out; a slot is reused only once its previous batch is done (its results are then copied out
of the pinned buffer first, so nothing a caller still holds is overwritten).

Options, each kept only where ``streamer bench --device cuda`` shows it pays:
- ``precision="fp16"``: the forward pass under float16 autocast; scores and errors come back as float32.
- ``cuda_graph=True``: the whole step (scale, clip, forward) is captured once per batch-size bucket (powers
  of two from 64) and replayed; a batch is padded up to its bucket, and the padding rows' results dropped.
  A capture that fails turns graphs off for the runner, with the error kept in ``graph_error``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

Precision = Literal["fp32", "fp16"]
MIN_GRAPH_ROWS = 64
MAX_GRAPH_ROWS = 1 << 16  # larger batches run eagerly: a graph per bucket holds its buffers


def _bucket(n: int) -> int:
    return max(MIN_GRAPH_ROWS, 1 << (n - 1).bit_length())


@dataclass
class _Slot:
    """Pinned host buffers for one batch in flight, and the event that marks it done."""

    host_in: torch.Tensor
    host_score: torch.Tensor
    host_err: torch.Tensor
    done: torch.cuda.Event = field(default_factory=torch.cuda.Event)
    pending: CudaPending | None = None

    @classmethod
    def pinned(cls, rows: int, in_shape: tuple[int, ...], n_features: int) -> _Slot:
        return cls(
            torch.empty((rows, *in_shape), dtype=torch.float32).pin_memory(),
            torch.empty(rows, dtype=torch.float32).pin_memory(),
            torch.empty((rows, n_features), dtype=torch.float32).pin_memory(),
        )


class CudaPending:
    """One submitted batch; ``result()`` waits for it and returns (score float64, error float32)."""

    def __init__(self, slot: _Slot, n: int) -> None:
        self._slot: _Slot | None = slot
        self._n = n
        self._out: tuple[np.ndarray, np.ndarray] | None = None

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if self._out is None:
            slot, n = self._slot, self._n
            assert slot is not None
            slot.done.synchronize()
            self._out = (
                slot.host_score[:n].numpy().astype(np.float64),
                slot.host_err[:n].numpy().copy(),
            )
            slot.pending, self._slot = None, None
        return self._out


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    static_in: torch.Tensor
    score: torch.Tensor
    err: torch.Tensor


class CudaRunner:
    """Runs ``step`` (raw x on the device -> (score, per-feature error): the Scorer's scoring function)
    on batches from the host, on a CUDA device; see the module docstring."""

    def __init__(
        self,
        step: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        device: torch.device,
        in_shape: tuple[int, ...],
        *,
        precision: Precision = "fp32",
        cuda_graph: bool = False,
    ) -> None:
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
        self.device = device
        self._score_step = step
        self.in_shape = in_shape
        self.n_features = in_shape[-1]
        self.precision: Precision = precision
        self.cuda_graph = cuda_graph
        self.graph_error: str | None = None
        self.stream = torch.cuda.Stream(self.device)
        self._slots = [_Slot.pinned(MIN_GRAPH_ROWS, in_shape, self.n_features) for _ in range(2)]
        self._next = 0
        self._graphs: dict[int, _Graph] = {}

    def _step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw x on the device -> (score, per-feature error), both float32."""
        if self.precision == "fp16":
            # Only matrix products and convolutions run in float16; the scaling and the error
            # normalisation stay in float32. Cache off: a cached cast would outlive a captured
            # graph's memory pool.
            with torch.autocast("cuda", dtype=torch.float16, cache_enabled=False):
                score, err = self._score_step(x)
        else:
            score, err = self._score_step(x)
        return score.float(), err.float()

    def _graph(self, rows: int) -> _Graph | None:
        """The captured step for batches of ``rows`` rows (made on first use); None once capture failed."""
        if not self.cuda_graph:
            return None
        if (g := self._graphs.get(rows)) is not None:
            return g
        try:
            static_in = torch.zeros((rows, *self.in_shape), device=self.device)
            for _ in range(2):  # warm-up on the side stream, as capture requires
                self._step(static_in)
            self.stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                score, err = self._step(static_in)
        except RuntimeError as e:  # an op that cannot be captured: run eagerly from now on
            self.cuda_graph, self.graph_error = False, str(e)[:300]
            self.stream.synchronize()
            return None
        g = _Graph(graph, static_in, score, err)
        self._graphs[rows] = g
        return g

    def _slot_for(self, n: int) -> _Slot:
        i = self._next
        self._next ^= 1
        slot = self._slots[i]
        if slot.pending is not None:
            slot.pending.result()  # waits for it and copies its results out of the pinned buffers
        slot.done.synchronize()
        if len(slot.host_in) < n:
            slot = self._slots[i] = _Slot.pinned(_bucket(n), self.in_shape, self.n_features)
        return slot

    def submit(self, x: np.ndarray) -> CudaPending:
        """Queue raw float32 x (B, *in_shape) for scoring and return at once."""
        n = len(x)
        slot = self._slot_for(n)
        slot.host_in[:n].copy_(torch.from_numpy(x))  # pageable -> pinned, on the CPU
        with torch.inference_mode(), torch.cuda.stream(self.stream):
            g = self._graph(_bucket(n)) if n <= MAX_GRAPH_ROWS else None
            if g is not None:
                g.static_in[:n].copy_(slot.host_in[:n], non_blocking=True)
                g.graph.replay()
                score, err = g.score[:n], g.err[:n]
            else:
                score, err = self._step(slot.host_in[:n].to(self.device, non_blocking=True))
            slot.host_score[:n].copy_(score, non_blocking=True)
            slot.host_err[:n].copy_(err, non_blocking=True)
            slot.done.record(self.stream)
        pending = slot.pending = CudaPending(slot, n)
        return pending
