"""The record of a registry's load attempts: a bounded history, the last error, one structured log
line per attempt, and the listeners told about each (metrics, logs)."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from .errors import CheckpointError, ValidationError, one_line
from .rollout.shadow import Divergence
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
        self, owner: Owner, snapshot: Snapshot, *, started: float, forced: bool, unchanged: bool,
        shadow: Divergence | None = None,
    ) -> LoadAttempt:  # fmt: skip
        """Record a swap ("ok", which clears the last error) or the same bytes again ("unchanged");
        `shadow`: the judge's comparison with the live model, if it ran."""
        if not unchanged:
            self.last_error, self.last_exc = None, None
        result: LoadResult = "unchanged" if unchanged else "ok"
        name, sha256 = _shown(snapshot)
        return self._record(owner, result, name, sha256, None, started, forced, shadow)

    def superseded(
        self, owner: Owner, snapshot: Snapshot, *, started: float, forced: bool
    ) -> LoadAttempt:
        """Record a load whose source changed while it was read: a newer write replaced it (a
        torn read of a file written in place looks the same). Not a failure: the newer content
        is looked at next."""
        name, sha256 = _shown(snapshot)
        reason = "the checkpoint changed while it was read: the newer one is looked at next"
        return self._record(owner, "superseded", name, sha256, reason, started, forced)

    def failed(
        self,
        owner: Owner,
        error: CheckpointError,
        snapshot: Snapshot | None,
        path: Path,
        *,
        started: float,
        forced: bool,
        shadow: Divergence | None = None,
    ) -> LoadAttempt:
        """Record a checkpoint that failed to load ("failed") or was refused ("rejected")."""
        result: LoadResult = "rejected" if isinstance(error, ValidationError) else "failed"
        # What was read, if it got that far; else the path it was to be read from.
        checkpoint, sha256 = _shown(snapshot) if snapshot is not None else (path.name, None)
        shown_key = snapshot is not None and snapshot.inside
        reason = one_line(str(error))
        self.last_exc = error
        self.last_error = {
            "result": result,
            "reason": reason,
            "checkpoint": checkpoint,
            "sha256": sha256,
            "key": snapshot.key.to_dict() if snapshot is not None and shown_key else None,
            "at": time.time(),
        }
        return self._record(owner, result, checkpoint, sha256, reason, started, forced, shadow)

    def _record(
        self,
        owner: Owner,
        result: LoadResult,
        checkpoint: str,
        sha256: str | None,
        reason: str | None,
        started: float,
        forced: bool,
        shadow: Divergence | None = None,
    ) -> LoadAttempt:
        duration = time.perf_counter() - started
        figures = shadow.to_dict() if shadow is not None else None
        attempt = LoadAttempt(result, checkpoint, sha256, reason, duration, time.time(), forced,
                              figures)  # fmt: skip
        self.history.append(attempt)
        self.count += 1
        level = logging.WARNING if result in ("failed", "rejected") else logging.INFO
        log.log(
            level,
            "load %s: %s %s%s",
            result,
            checkpoint,
            reason or f"sha256={(sha256 or '')[:12]} in {duration * 1000:.1f} ms",
            f"; shadow {shadow.summary()}" if shadow is not None else "",
            extra={
                "model": self.model, "checkpoint": checkpoint, "sha256": sha256,
                "result": result, "duration": round(duration, 6), "reason": reason,
                "divergence": figures,
            },
        )  # fmt: skip
        for listener in self.listeners:
            try:
                listener(owner, attempt)
            except Exception:
                log.exception("load listener failed")
        return attempt


def _shown(snapshot: Snapshot) -> tuple[str, str | None]:
    """The name and sha256 an attempt shows: a target outside the model's directory is named by
    the path inside it, and its digest is withheld."""
    if snapshot.inside:
        return snapshot.resolved.name, snapshot.sha256
    return snapshot.path.name, None


def as_checkpoint_error(exc: Exception) -> CheckpointError:
    """Any exception from a load as a CheckpointError whose cause is the original."""
    error = CheckpointError(one_line(f"load failed: {type(exc).__name__}: {exc}"))
    error.__cause__ = exc
    return error
