"""Hot model swap's watcher: what it does when the file cannot be looked at, and after a refused swap."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from streamer.config import load_settings
from streamer.reload import RETRY_REFUSED_S, ModelWatcher
from streamer.runner import Detector


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Model:
    def __init__(self, version: str, fail_once: bool = False) -> None:
        self.kind, self.name, self.version = "dense", "m", version
        self.features, self.window = ("x", "y"), 1
        self.train_scores = np.linspace(0.0, 3.0, 100)
        self.fail_once = fail_once

    def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.fail_once:
            self.fail_once = False
            raise RuntimeError("CUDA out of memory")
        err = (x.astype(np.float64) ** 2).astype(np.float32)
        return err.sum(axis=1).astype(np.float64), err


def test_a_path_that_cannot_be_looked_at_keeps_the_running_model(tmp_path: Path) -> None:
    """A model directory swapped for a loop of links (ELOOP), or one without permission, is not a
    reason to stop: poll says nothing new, and the file is read once it can be looked at again."""
    models = tmp_path / "models"
    models.mkdir()
    path = models / "model.safetensors"
    path.write_bytes(b"v1")
    clock = Clock()
    watcher = ModelWatcher(path, lambda p: Model(p.read_bytes().decode()), "v1", 1.0, clock)
    models.rename(tmp_path / "old")
    os.symlink(models, models)  # a link to itself: stat fails with ELOOP, not FileNotFoundError
    for _ in range(3):
        clock.now += 2.0
        assert watcher.poll() is None
    models.unlink()
    models.mkdir()
    path.write_bytes(b"v2")
    clock.now += 2.0
    got = watcher.poll()
    assert got is not None and got.version == "v2"


def test_a_model_whose_swap_was_refused_is_tried_again(tmp_path: Path) -> None:
    """A swap that fails for a passing cause (the device out of memory) must not keep the old model
    for good: the same file, rewritten or not, is read again after RETRY_REFUSED_S."""
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"v1")
    loads = {"n": 0}

    def load(p: Path) -> Model:
        loads["n"] += 1
        version = p.read_bytes().decode()
        return Model(version, fail_once=version == "v2" and loads["n"] == 1)

    settings = load_settings(
        None,
        {
            "kafka": {"bootstrap_servers": "127.0.0.1:9", "extra": {"log_level": "0"}},
            "model": {"path": str(path), "reload_interval_s": 1.0},
            "log": {"level": "WARNING"},
        },
    )
    d = Detector(settings, Model("v1"), load_scorer=load)  # type: ignore[arg-type]
    try:
        assert d.watcher is not None
        clock = Clock()
        d.watcher._clock = clock
        d.watcher._next_check = 0.0
        path.write_bytes(b"v2")
        os.utime(path, ns=(1, 1))  # a new signature, whatever the file system's clock resolution
        clock.now = 1.0
        d._maybe_swap_model()  # loads v2; its first score fails: refused, v1 stays
        assert d.pipeline.scorer.version == "v1" and d.stats.model_swaps == 0
        path.write_bytes(b"v2")  # the same model written again
        clock.now = 2.0 + 1.0
        d._maybe_swap_model()
        assert d.stats.model_swaps == 0  # not before the retry delay
        clock.now = 1.0 + RETRY_REFUSED_S + 0.1
        d._maybe_swap_model()
        assert d.pipeline.scorer.version == "v2" and d.stats.model_swaps == 1
    finally:
        d.consumer.close()
