"""SWAP, with nothing live: serve the newest earlier checkpoint that passes every check.

A server that restarts while the newest checkpoint is bad (wrong shape, corrupt) would otherwise
answer 503 until the trainer publishes again, although good checkpoints lie next to it. When a
look at the watched source leaves nothing live, the registry tries the newest timestamped
checkpoints of the same name, newest first, each through the same checks a watched one gets (its
manifest record's sha256 and signature where the source is a manifest), and serves the first that
passes, while it keeps following the watched source: the next good publish replaces it.

At most `MAX_CANDIDATES` are tried (a hostile directory can hold 10,000 files), and each file is
tried once while its stat key stays the same.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import CheckpointError
from .naming import list_checkpoints
from .sources import Source

__all__ = ["MAX_CANDIDATES", "Fallback", "FallbackSearch"]

log = logging.getLogger("ckptserve.registry")

#: The most earlier checkpoints one search tries.
MAX_CANDIDATES = 10


@dataclass(frozen=True, slots=True)
class Fallback:
    """An earlier checkpoint served because the newest could not be."""

    checkpoint: str
    reason: str  # why the newest is not served
    since: float  # time.time() when the fallback went live

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FallbackSearch:
    """Finds the fallback for one registry, remembering which candidates already failed.

    Args:
        model: the model's name, for the log.
        source_for: the source that checks one checkpoint file as the watched source would
            (raises CheckpointError when it cannot be checked so, e.g. no signed record).
        load: loads a candidate source; True when it went live.
    """

    def __init__(
        self, model: str, source_for: Callable[[Path], Source], load: Callable[[Source], bool]
    ) -> None:
        self._model = model
        self._source_for = source_for
        self._load = load
        self._tried: dict[str, Hashable] = {}  # file name -> stat key when it failed

    def find(self, directory: Path, prefix: str, reason: str) -> Fallback | None:
        """Try the newest earlier checkpoints named `prefix` in `directory`; the one served, if any."""
        try:
            candidates = list_checkpoints(directory, prefix)[:MAX_CANDIDATES]
        except OSError:
            return None
        for path in candidates:
            try:
                source = self._source_for(path)
            except CheckpointError:
                continue  # cannot be checked as the watched source is (no record): not a candidate
            token = source.token()
            if token is None or self._tried.get(path.name) == token:
                continue
            if self._load(source):
                self._tried.clear()
                log.warning(
                    "serving fallback %s: the newest checkpoint is not servable (%s)",
                    path.name, reason,
                    extra={"model": self._model, "checkpoint": path.name, "result": "fallback"},
                )  # fmt: skip
                return Fallback(path.name, reason, time.time())
            self._tried[path.name] = token
        return None
