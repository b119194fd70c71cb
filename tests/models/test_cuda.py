"""The CUDA scoring path (models.cuda): same scores as the CPU, in every mode. Skipped without a GPU."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from models import ModelError, TrainResult, load_checkpoint

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

SIZES = (1, 63, 64, 100, 2_049, 5_000)  # several graph buckets, and sizes inside and at their edges


def _inputs(
    kind: str, make_data: Callable[..., np.ndarray], make_batch: Callable, n: int
) -> np.ndarray:
    return np.ascontiguousarray(make_batch(kind, make_data(n + 16, seed=n))[:n])


@pytest.mark.parametrize(
    ("precision", "graph"), [("fp32", False), ("fp32", True), ("fp16", False), ("fp16", True)]
)
def test_cuda_scores_match_cpu(
    make_data: Callable[..., np.ndarray],
    make_batch: Callable,
    trained: dict[str, TrainResult],
    kind: str,
    precision: str,
    graph: bool,
) -> None:
    cpu = trained[kind].scorer
    gpu = load_checkpoint(trained[kind].path, device="cuda", precision=precision, cuda_graph=graph)  # type: ignore[arg-type]
    assert gpu.device.type == "cuda"
    assert gpu.gpu_options == {"precision": precision, "cuda_graph": graph, "graph_error": None}
    # fp32 on the GPU is not bit-equal to the CPU: cuDNN convolutions use TF32 by default (on an H100:
    # 2e-4 relative on scores, 3e-6 absolute on per-feature errors of about 1e-3)
    tol = {"rtol": 1e-3, "atol": 1e-5} if precision == "fp32" else {"rtol": 3e-2, "atol": 1e-3}
    for n in SIZES:
        x = _inputs(kind, make_data, make_batch, n)
        want_s, want_e = cpu.score(x)
        got_s, got_e = gpu.score(x)
        assert got_s.dtype == np.float64 and got_e.dtype == np.float32
        assert got_s.shape == (n,) and got_e.shape == want_e.shape
        np.testing.assert_allclose(got_s, want_s, **tol)
        np.testing.assert_allclose(got_e, want_e, **tol)


def test_outstanding_submits_each_get_their_own_results(
    make_data: Callable[..., np.ndarray],
    make_batch: Callable,
    trained: dict[str, TrainResult],
    kind: str,
) -> None:
    """Three batches in flight on two pinned slots: the first is fetched before its slot is reused."""
    cpu = trained[kind].scorer
    gpu = load_checkpoint(trained[kind].path, device="cuda", cuda_graph=True)
    xs = [_inputs(kind, make_data, make_batch, n) for n in (300, 40, 7_000, 300)]
    pending = [gpu.submit(x) for x in xs]  # the third grows a slot while the first is unread
    for x, p in zip(reversed(xs), reversed(pending), strict=True):
        np.testing.assert_allclose(p.result()[0], cpu.score(x)[0], rtol=1e-3, atol=1e-6)
        assert p.result() is p.result()  # fetched once


def test_anomalies_still_stand_out_in_fp16(
    make_data: Callable[..., np.ndarray], trained: dict[str, TrainResult]
) -> None:
    s = load_checkpoint(trained["dense"].path, device="cuda", precision="fp16", cuda_graph=True)
    x = make_data(500, seed=4)
    bad = x.copy()
    bad[:, 0] += 50 * s.scaler.scale[0]
    assert np.median(s.score(bad)[0]) > 10 * np.median(s.score(x)[0])


def test_extreme_and_wrong_inputs_on_cuda(
    make_data: Callable[..., np.ndarray], trained: dict[str, TrainResult]
) -> None:
    s = load_checkpoint(trained["dense"].path, device="cuda", cuda_graph=True)
    x = make_data(4, seed=6)
    x[0, 1], x[1, 2] = 1e30, -1e30
    assert np.isfinite(s.score(x)[0]).all()
    with pytest.raises(ModelError, match="expects"):
        s.score(np.zeros((3, 5), dtype=np.float32))
    assert s.score(np.zeros((0, 6), dtype=np.float32))[0].shape == (0,)


def test_pipeline_on_cuda_matches_cpu(trained: dict[str, TrainResult], kind: str) -> None:
    """The overlapped pipeline (decode chunk k+1 while the GPU scores chunk k) decides as the CPU does."""
    import orjson

    from streamer.config import EventSettings, ThresholdSettings
    from streamer.pipeline import Message, Pipeline

    rng = np.random.default_rng(1)
    rows = rng.normal(size=(6_000, 6)) * 3
    values: list[bytes | None] = [
        orjson.dumps({**{f"f{j}": float(v) for j, v in enumerate(r)}, "id": f"e{i % 7}"})
        for i, r in enumerate(rows)
    ]
    values[5] = b"{nope"
    results = {}
    for device in ("cpu", "cuda"):
        scorer = load_checkpoint(trained[kind].path, device=device, cuda_graph=True)
        p = Pipeline(
            scorer, ThresholdSettings(q=0.99), EventSettings(key_field="id"), overlap_chunk=1_000
        )
        origin = lambda i: Message(values[i], b"k", "t", 0, i, None)  # noqa: E731
        results[device] = p.process(values, origin)
    a, b = results["cpu"], results["cuda"]
    assert a.valid.tolist() == b.valid.tolist() and a.dead_index == b.dead_index == [5]
    np.testing.assert_allclose(b.scores, a.scores, rtol=1e-3, atol=1e-6)
    assert (
        a.alert_mask != b.alert_mask
    ).sum() <= 2  # only scores at the threshold itself may differ
