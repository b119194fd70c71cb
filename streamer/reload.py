"""Hot model swap: notice a new checkpoint at the configured path and load it between two batches."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

import structlog

from models.errors import ModelError

log = structlog.get_logger(__name__)

S = TypeVar("S")


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class ModelWatcher(Generic[S]):
    """Looks at ``path`` at most every ``interval_s``; a new, valid checkpoint is returned by ``poll``.

    A checkpoint that fails to load is refused and logged once; the running model stays until the file
    changes again. ``streamer train`` writes by rename, so it never shows a half-written file; a file
    written in place may be read half-written, and is then refused (its tensors' hash does not match)
    and read again once it changes. A loaded model is read whole into memory: whatever happens to the
    file afterwards does not touch it.
    """

    def __init__(
        self,
        path: Path,
        load: Callable[[Path], S],
        version: str,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._load = load
        self._version = version
        self.interval_s = interval_s
        self._clock = clock
        self._seen = _signature(path)
        self._next_check = clock() + interval_s

    def poll(self) -> S | None:
        if self.interval_s <= 0 or self._clock() < self._next_check:
            return None
        self._next_check = self._clock() + self.interval_s
        sig = _signature(self.path)
        if sig is None or sig == self._seen:
            return None
        self._seen = sig
        try:
            scorer = self._load(self.path)
        except Exception as exc:  # a checkpoint is refused, never a reason to stop
            error = str(exc) if isinstance(exc, ModelError) else f"{type(exc).__name__}: {exc}"
            log.error("model_refused", path=str(self.path), error=error, keeping=self._version)
            return None
        version = str(getattr(scorer, "version", ""))
        if version == self._version:
            return None
        log.info(
            "model_loaded", path=str(self.path), old_version=self._version, new_version=version
        )
        self._version = version
        return scorer
