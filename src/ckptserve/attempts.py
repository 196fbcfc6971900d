"""The record of a registry's load attempts: a bounded history, the last error, one structured log
line per attempt, and the listeners told about each (metrics, logs)."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from .errors import CheckpointError, ValidationError
from .sources import Snapshot
from .versions import LoadAttempt, LoadResult

__all__ = ["AttemptLog", "as_checkpoint_error"]

# The registry's logger: the load lines were written there before this module split off.
log = logging.getLogger("ckptserve.registry")

Owner = TypeVar("Owner")


class AttemptLog(Generic[Owner]):
    """What became of each load attempt; listeners are called as `listener(owner, attempt)`.

    The owner is passed to each call instead of kept, so a listener list never makes a cycle.
    """

    def __init__(self, model: str, keep: int) -> None:
        self.model = model
        self.history: deque[LoadAttempt] = deque(maxlen=keep)
        self.count = 0  # attempts recorded so far (the history is bounded)
        self.last_error: dict[str, Any] | None = None
        self.last_exc: CheckpointError | None = None
        self.listeners: list[Callable[[Owner, LoadAttempt], None]] = []

    def loaded(
        self, owner: Owner, snapshot: Snapshot, *, started: float, forced: bool, unchanged: bool
    ) -> None:
        """Record a swap ("ok", which clears the last error) or the same bytes again ("unchanged")."""
        if not unchanged:
            self.last_error, self.last_exc = None, None
        result: LoadResult = "unchanged" if unchanged else "ok"
        self._record(owner, result, snapshot.resolved.name, snapshot.sha256, None, started, forced)

    def failed(
        self,
        owner: Owner,
        error: CheckpointError,
        snapshot: Snapshot | None,
        path: Path,
        *,
        started: float,
        forced: bool,
    ) -> None:
        """Record a checkpoint that failed to load ("failed") or was refused ("rejected")."""
        result: LoadResult = "rejected" if isinstance(error, ValidationError) else "failed"
        # What was read, if it got that far; else the path it was to be read from.
        checkpoint = snapshot.resolved.name if snapshot is not None else path.name
        sha256 = snapshot.sha256 if snapshot is not None else None
        self.last_exc = error
        self.last_error = {
            "result": result,
            "reason": str(error),
            "checkpoint": checkpoint,
            "sha256": sha256,
            "key": snapshot.key.to_dict() if snapshot is not None else None,
            "at": time.time(),
        }
        self._record(owner, result, checkpoint, sha256, str(error), started, forced)

    def _record(
        self,
        owner: Owner,
        result: LoadResult,
        checkpoint: str,
        sha256: str | None,
        reason: str | None,
        started: float,
        forced: bool,
    ) -> None:
        duration = time.perf_counter() - started
        attempt = LoadAttempt(result, checkpoint, sha256, reason, duration, time.time(), forced)
        self.history.append(attempt)
        self.count += 1
        level = logging.INFO if result in ("ok", "unchanged") else logging.WARNING
        log.log(
            level,
            "load %s: %s %s",
            result,
            checkpoint,
            reason or f"sha256={(sha256 or '')[:12]} in {duration * 1000:.1f} ms",
            extra={
                "model": self.model, "checkpoint": checkpoint, "sha256": sha256,
                "result": result, "duration": round(duration, 6), "reason": reason,
            },
        )  # fmt: skip
        for listener in self.listeners:
            try:
                listener(owner, attempt)
            except Exception:
                log.exception("load listener failed")


def as_checkpoint_error(exc: Exception) -> CheckpointError:
    """Any exception from a load as a CheckpointError whose cause is the original."""
    error = CheckpointError(f"load failed: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error
