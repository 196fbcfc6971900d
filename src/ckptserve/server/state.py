"""The server's state, built by `create_app` and started by its lifespan: one ModelRegistry per
model, the metrics, and the admin check. No module-level globals."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio.to_thread

from ..errors import ModelNotAvailable
from ..naming import checkpoint_prefix, list_checkpoints
from ..registry import LiveModel, ModelRegistry
from ..rollout.canary import Canary
from ..rollout.feedback import FeedbackStore, RequestIds, RewardStats
from ..rollout.follow import published
from ..rollout.ordering import versions_behind
from ..rollout.shadow import StateBuffer
from ..versions import ModelVersion
from .batching import Batcher
from .errors import ApiError
from .live import LiveRecorder
from .metrics import Metrics, RolloutFigures, prune_dead_workers
from .names import printable, version_header
from .paths import prepare_model_path
from .pins import PinBook
from .settings import ModelSpec, Settings

__all__ = ["ModelHandle", "Runtime"]

log = logging.getLogger("ckptserve.server")

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

    async def live(self, *, force_reload: bool = False) -> LiveModel:
        """The live handle. A check that is needed runs in a worker thread, never on the loop:
        the swap policy hands it to the registry's worker (background mode, timers), or the
        requests that find the source stale await one shared `to_thread(check)` (one thread,
        not one thread hop per request: a sync swap under load stays short)."""
        registry = self.registry
        if force_reload:
            await anyio.to_thread.run_sync(partial(registry.check, reload=True))
        elif registry.stale():
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
                "checkpoint": path.name, "mtime": st.st_mtime, "size": st.st_size,
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
                best = found[0].stat().st_mtime
        if self.registry.source.kind != "manifest":
            with contextlib.suppress(OSError):
                watched = self.watched.stat().st_mtime
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


class Runtime:
    """Everything a request needs, created per app; `start()`/`close()` run in the lifespan."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models: dict[str, ModelHandle] = {}
        self.default = settings.default_model
        token = settings.admin_token.get_secret_value() if settings.admin_token else ""
        self._admin_token = token.encode() or None
        secret = settings.feedback_secret
        # Without a secret of its own, each process signs with a random key (rollout/feedback.py).
        self.ids = RequestIds(secret.get_secret_value() if secret else None)
        self.feedback = FeedbackStore(self.ids)
        token = settings.feedback_token.get_secret_value() if settings.feedback_token else ""
        self._feedback_token = token.encode() or None
        self.metrics = Metrics(self._staleness, multiprocess_dir=_multiprocess_dir(),
                               rollout=self._rollout_figures)  # fmt: skip
        self.live = LiveRecorder()  # the status page's per-second series and action samples
        self._watcher: asyncio.Task[None] | None = None
        self._probe: asyncio.Task[None] | None = None
        self.started_at = time.time()
        self.pins = PinBook(settings.registry.state_dir)

    # ---- lifecycle -------------------------------------------------------------------------

    def open_models(self) -> None:
        """Build one registry per configured model (nothing is loaded yet)."""
        options = self.settings.registry_options()
        for spec in self.settings.models:
            self.models[spec.name] = self._handle(spec, options)

    def _handle(self, spec: ModelSpec, options: Any) -> ModelHandle:
        prepare_model_path(spec.path)
        registry = ModelRegistry(spec.path, self.settings.device, name=spec.name, options=options)
        registry.add_listener(self.metrics.on_load)
        registry.rollout.listeners.append(partial(self.metrics.on_rollout, spec.name))
        watched = Path(registry.source.path)
        directory = Path(spec.path) if Path(spec.path).is_dir() else watched.parent
        batcher = None
        if self.settings.batch_max_size > 1:
            batcher = Batcher(self.settings.batch_max_size, self.settings.batch_max_wait_ms / 1000)
        return ModelHandle(spec.name, registry, watched, directory, checkpoint_prefix(watched),
                           batcher, registry.rollout.buffer, registry.rollout.canary)  # fmt: skip

    async def start(self) -> None:
        if self.metrics.multiprocess_dir:
            prune_dead_workers(self.metrics.multiprocess_dir)
        if self.settings.torch_threads:
            import torch

            torch.set_num_threads(self.settings.torch_threads)
        self.open_models()
        # A recorded pin wins over what the directory offers (and over a fallback): apply it
        # before the first load.
        if self.pins.state_dir is not None:
            await anyio.to_thread.run_sync(self.pins.apply, list(self.models.values()))
        if not gc.get_freeze_count():
            # What is alive now (torch, FastAPI, ...) lives as long as the process. Frozen, it is
            # skipped by every later collection: a full one no longer holds the GIL ~80 ms.
            # Collected first, so no garbage is frozen with it.
            gc.collect()
            gc.freeze()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # main thread only
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.look_again)
        self._watcher = asyncio.create_task(self._watch(), name="ckptserve-watch")
        if self.settings.loop_probe_interval:
            self._probe = asyncio.create_task(self._lag_probe(), name="ckptserve-lag-probe")

    async def close(self, *, load_timeout: float = 10.0) -> None:
        """Stop watching, let the loads this server started finish (up to `load_timeout` s), then
        close the registries in a worker thread: closing waits for a background load and removes
        the private copies, which a load still reading one would record as a failed load."""
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        for task in (self._watcher, self._probe):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        deadline = time.monotonic() + load_timeout
        loading = {h._checking: h.name for h in self.models.values() if h._checking is not None}
        if loading:
            _, late = await asyncio.wait(loading, timeout=load_timeout)
            for future in late:
                log.warning(
                    "closing %s with a load still in flight after %.0f s: it may fail",
                    loading[future], load_timeout,
                )  # fmt: skip
        registries = [handle.registry for handle in self.models.values()]
        await anyio.to_thread.run_sync(_close_all, registries, deadline)
        self.metrics.close()

    def look_again(self) -> None:
        """SIGHUP: look at every model's source again now, off the event loop (a manifest is
        re-read, content that failed is retried); the server keeps serving meanwhile."""
        log.info("SIGHUP: looking at the sources again", extra={"pid": os.getpid()})
        for handle in self.models.values():
            handle.registry.look_again()

    async def _watch(self) -> None:
        """Keep every model fresh without traffic: the first load at start-up, a checkpoint that
        appears later, and background swaps when nobody asks. A request that needs a load while
        the watcher's is under way waits for that same one."""
        while True:
            handles = list(self.models.values())
            if self.pins.state_dir is not None:
                try:
                    await anyio.to_thread.run_sync(self.pins.apply, handles)  # another worker's pin
                except Exception:
                    log.exception("applying the recorded pins failed")
            for handle in handles:
                try:
                    await handle.live()
                except ModelNotAvailable:
                    pass
                except Exception:
                    log.exception("watching %s failed", handle.name)
                if handle.canary is not None and handle.canary.canary is not None:
                    try:  # its window may be over (marking a version bad writes a file)
                        await anyio.to_thread.run_sync(handle.registry.rollout.poll, self.feedback)
                    except Exception:
                        log.exception("judging the canary of %s failed", handle.name)
            await asyncio.sleep(self.settings.watch_interval)

    async def _lag_probe(self) -> None:
        """Measure event-loop stalls: how late a short timer fires, every `loop_probe_interval`.
        A load or a GC that holds the GIL shows up here as the time every request was held."""
        interval = self.settings.loop_probe_interval
        observe, worst_gauge = self.metrics.loop_lag.observe, self.metrics.loop_lag_max
        worst = 0.0
        clock = time.perf_counter
        before = clock()
        while True:
            await asyncio.sleep(interval)
            now = clock()
            lag = max(0.0, now - before - interval)
            before = now
            observe(lag)
            if lag > worst:
                worst = lag
                worst_gauge.set(worst)

    # ---- per request -----------------------------------------------------------------------

    def model(self, name: str | None) -> ModelHandle:
        """The handle for `name` (None: the default model); unknown names are a 404."""
        handle = self.models.get(name or self.default or "")
        if handle is None:
            known = ", ".join(self.models) or "none"
            raise ApiError(404, f"unknown model {name!r} (served: {known})")
        return handle

    def require_admin(self, authorization: bytes | None) -> None:
        """Raise 403 when no admin token is configured, 401 when the bearer token is wrong."""
        if self._admin_token is None:
            raise ApiError(
                403,
                "admin actions are disabled: set CKPTSERVE_ADMIN_TOKEN in the server's "
                "environment and send 'Authorization: Bearer <token>'",
            )
        scheme, _, given = (authorization or b"").partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self._admin_token):
            raise ApiError(
                401, "a valid admin token is required", [(b"www-authenticate", b"Bearer")]
            )

    def require_feedback_token(self, authorization: bytes | None) -> None:
        """Raise 401 when CKPTSERVE_FEEDBACK_TOKEN is set and the bearer token is not it."""
        token = self._feedback_token
        if token is None:
            return
        scheme, _, given = (authorization or b"").partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), token):
            raise ApiError(
                401, "feedback needs 'Authorization: Bearer <CKPTSERVE_FEEDBACK_TOKEN>'",
                [(b"www-authenticate", b"Bearer")],
            )  # fmt: skip

    def not_ready(self) -> dict[str, str]:
        """Why each model without a live version is not live (empty when all are ready)."""
        reasons = {}
        for name, handle in self.models.items():
            registry = handle.registry
            if registry.current is not None:
                continue
            error = registry.last_error
            if registry.file_missing:
                reasons[name] = f"no checkpoint at {registry.source.path} yet"
            elif error is not None:
                reasons[name] = f"last load {error['result']}: {error['reason']}"
            else:
                reasons[name] = "loading"
        if not self.models:
            reasons["*"] = "starting"
        return reasons

    def _rollout_figures(self) -> list[RolloutFigures]:
        stats = self.feedback.stats()
        out = []
        for name, handle in list(self.models.items()):
            registry, live = handle.registry, handle.registry.current
            step = live.version.metadata.get("step") if live is not None else None
            verdict = registry.judge.last
            divergence = verdict.divergence if verdict is not None else None
            rewards = {v: (r["count"], r["mean"]) for v, r in handle.rewards(stats).items()}
            out.append(RolloutFigures(
                name, handle.versions_behind(), step if type(step) is int else None,
                len(registry.resident), registry.resident.total_bytes,
                divergence.to_dict() if divergence is not None else None, rewards,
            ))  # fmt: skip
        return out

    def _staleness(self) -> list[tuple[str, float | None, float | None, bool]]:
        now = time.time()
        return [
            (name, *h.staleness(now), h.registry.fallback is not None)
            for name, h in self.models.items()
        ]

    def fallbacks(self) -> dict[str, str]:
        """The models served by an earlier checkpoint because the newest cannot be: name ->
        the checkpoint served."""
        return {
            name: fallback.checkpoint
            for name, h in self.models.items()
            if (fallback := h.registry.fallback) is not None
        }


def _close_all(registries: list[ModelRegistry], deadline: float) -> None:
    for registry in registries:  # each waits for a load of its own until the deadline at most
        registry.close(timeout=max(0.0, deadline - time.monotonic()))


def _multiprocess_dir() -> str | None:
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return path if path and os.path.isdir(path) else None
