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


# A model that loaded but could not be switched to (streamer.runner) is read again this long after
# (whatever the file holds then).
RETRY_REFUSED_S = 60.0


def _signature(path: Path) -> tuple[int, int, int] | OSError | None:
    """The file's (mtime, size, inode); None when there is none; the error when it cannot be looked at
    (no permission, a loop of links: say, a model directory swapped during a deploy)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return exc
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
        seen = _signature(path)
        self._seen = None if isinstance(seen, OSError) else seen
        self._stat_error: str | None = None  # the last error looking at the file, logged once
        self._next_check = clock() + interval_s

    def poll(self) -> S | None:
        if self.interval_s <= 0 or self._clock() < self._next_check:
            return None
        self._next_check = self._clock() + self.interval_s
        sig = _signature(self.path)
        if isinstance(sig, OSError):  # never a reason to stop: the running model stays
            if str(sig) != self._stat_error:
                self._stat_error = str(sig)
                log.error(
                    "model_path_unreadable",
                    path=str(self.path),
                    error=str(sig),
                    keeping=self._version,
                )
            return None
        self._stat_error = None
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

    def refused(self, running_version: str) -> None:
        """The model ``poll`` returned could not be switched to (``running_version`` still runs): read
        the file again after ``RETRY_REFUSED_S``, changed or not, since the cause may pass (a device out
        of memory); never again until it changed, as before, would keep the old model for good."""
        self._version = running_version
        self._seen = None
        self._next_check = self._clock() + max(self.interval_s, RETRY_REFUSED_S)
