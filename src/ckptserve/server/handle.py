"""One served model as the server holds it: its registry, where its checkpoints live, the
version a request names, and the per-version response fields computed once (`ModelHandle`)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio.to_thread

from ..naming import list_checkpoints
from ..registry import LiveModel, ModelRegistry
from ..rollout.canary import Canary
from ..rollout.feedback import RewardStats
from ..rollout.follow import published
from ..rollout.ordering import versions_behind
from ..rollout.shadow import StateBuffer
from ..versions import ModelVersion
from .batching import Batcher
from .errors import ApiError
from .names import printable, version_header

__all__ = ["ModelHandle"]

#: Versions whose response fields a handle keeps (the live one, a canary, pinned ones).
_METAS = 8


@dataclass(slots=True)
class _LiveMeta:
    version: ModelVersion  # not the LiveModel: a cached entry must not keep a model alive
    header: bytes  # the X-Model-Version value: the tag, made safe for a header
    tag: str  # <checkpoint>@<sha256[:12]> for JSON bodies (names.printable)
    checkpoint: str
    sha256: str
    mtime: float


@dataclass(slots=True)
class ModelHandle:
    """One served model: its registry, where its checkpoints live, and hot-path caches."""

    name: str
    registry: ModelRegistry
    watched: Path
    directory: Path
    prefix: str
    batcher: Batcher | None = None  # dynamic batching (--batch-max-size > 1)
    buffer: StateBuffer | None = None  # the shadow states requests record (--shadow-states)
    canary: Canary[LiveModel] | None = None  # answers a share of requests (--canary-fraction)
    _meta: _LiveMeta | None = field(default=None, repr=False)
    _metas: dict[int, _LiveMeta] = field(default_factory=dict, repr=False)
    _checking: asyncio.Future[Any] | None = field(default=None, repr=False)
    # The loop in whose current iteration stale() said no (a loop, not True: a loop that ends
    # before its next iteration never resets it, and another loop must look again).
    _looked: object = field(default=None, repr=False)

    async def live(self, *, force_reload: bool = False) -> LiveModel:
        """The live handle. A check that is needed runs in a worker thread, never on the loop:
        the swap policy hands it to the registry's worker (background mode, timers), or the
        requests that find the source stale await one shared `to_thread(check)` (one thread,
        not one thread hop per request: a sync swap under load stays short).

        The source is looked at (`stale()`, one `os.stat`) once per event-loop iteration: the
        requests that iteration runs were all read before that look, so a request sent after
        a publish returned still gets the new version (its bytes are read in a later one)."""
        registry = self.registry
        if force_reload:
            await anyio.to_thread.run_sync(partial(registry.check, reload=True))
        elif self._looked is (loop := asyncio.get_running_loop()):
            pass
        elif not registry.stale():
            self._looked = loop
            loop.call_soon(self._look_again)
        else:
            live = registry.policy.serve_stale(registry)
            if live is not None:
                return live
            checking = self._checking
            if checking is None or checking.done():
                checking = self._checking = asyncio.ensure_future(
                    anyio.to_thread.run_sync(registry.check)
                )
            await asyncio.shield(checking)
        return registry.require_live()

    def _look_again(self) -> None:
        self._looked = None

    def meta(self, live: LiveModel) -> _LiveMeta:
        """Header and response fields of a live version, computed once per version."""
        meta, version = self._meta, live.version
        if meta is not None and meta.version is version:
            return meta
        # A canary and the live version answer in turn. The key is the version's id: the entry
        # holds that ModelVersion, so the id cannot be reused while the entry exists.
        meta = self._metas.get(id(version))
        if meta is None or meta.version is not version:
            v = version
            header = version_header(v.checkpoint, v.sha256)
            meta = _LiveMeta(v, header, printable(v.tag), printable(v.checkpoint), v.sha256,
                             v.mtime)  # fmt: skip
            if len(self._metas) >= _METAS:
                self._metas.clear()
            self._metas[id(version)] = meta
        self._meta = meta
        return meta

    def pick(self, ref: str) -> LiveModel:
        """The resident version a request names (`"version"`, `X-Model-Version`, OIP's version
        path): 422 for what is no version reference, 409 naming the resident ones when it is
        not resident."""
        rollout = self.registry.rollout
        try:
            found = rollout.find(ref)
        except ValueError as exc:
            reason = str(exc) if len(ref) <= 200 else "it is too long to be one"
            raise ApiError(422, f"version: {reason}") from None
        if found is None:
            resident = ", ".join(rollout.tags()) or "none yet"
            raise ApiError(
                409, f"version {ref[:80]!r} is not resident (resident: {resident}): it was "
                "evicted or rolled back, or never served here",
            )  # fmt: skip
        return found

    def versions(self) -> list[dict[str, Any]]:
        """Timestamped checkpoints in the model's directory, newest first, marking the live one."""
        live = self.registry.version
        out = []
        try:
            found = list_checkpoints(self.directory, self.prefix)
        except OSError:
            found = []
        for path in found:
            try:
                st = path.stat()
            except OSError:
                continue
            is_live = live is not None and live.checkpoint == path.name
            out.append({
                "checkpoint": path.name, "mtime": st.st_mtime_ns / 1e9, "size": st.st_size,
                "live": is_live, "sha256": live.sha256 if is_live and live else None,
            })  # fmt: skip
        return out

    def rewards(self, stats: Mapping[str, RewardStats]) -> dict[str, dict[str, Any]]:
        """Of `stats` (FeedbackStore.stats(): per 12 hex of a sha256), those of this model's
        resident versions and running canary."""
        versions = list(self.registry.resident.versions())
        canary = self.canary.canary if self.canary is not None else None
        if canary is not None:
            versions.append(canary)
        mine = {v.version.sha256[:12] for v in versions}
        return {v: s.to_dict() for v, s in stats.items() if v in mine}

    def versions_behind(self) -> int | None:
        """How many published checkpoints come after the live one (ordering.versions_behind,
        from the checkpoints' records); None while nothing is live or nothing can be listed."""
        live = self.registry.current
        if live is None:
            return None
        try:
            found = published(self.directory, self.prefix)
        except OSError:
            return None
        return versions_behind(live.version.metadata, [p.metadata for p in found])

    def newest_mtime(self) -> float | None:
        """The newest checkpoint on disk (timestamped files, or the watched path when it is a
        checkpoint: a manifest is not one, and rewriting it publishes nothing newer), by mtime."""
        best: float | None = None
        with contextlib.suppress(OSError):
            found = list_checkpoints(self.directory, self.prefix)
            if found:
                best = found[0].stat().st_mtime_ns / 1e9  # as the version's mtime is computed:
        if self.registry.source.kind != "manifest":  # st_mtime may differ from it by an ulp
            with contextlib.suppress(OSError):
                watched = self.watched.stat().st_mtime_ns / 1e9
                best = watched if best is None else max(best, watched)
        return best

    def staleness(self, now: float | None = None) -> tuple[float | None, float | None]:
        """(age, lag): seconds since the live file was written, and how far it trails the newest."""
        live = self.registry.version
        if live is None:
            return None, None
        now = time.time() if now is None else now
        newest = self.newest_mtime()
        lag = max(0.0, newest - live.mtime) if newest is not None else 0.0
        return max(0.0, now - live.mtime), lag
