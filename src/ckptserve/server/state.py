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
from functools import partial
from pathlib import Path
from typing import Any

import anyio.to_thread

from ..errors import ModelNotAvailable
from ..naming import checkpoint_prefix
from ..registry import ModelRegistry
from ..rollout.feedback import FeedbackStore, RequestIds
from .batching import Batcher
from .errors import ApiError
from .handle import ModelHandle
from .live import LiveRecorder
from .metrics import Metrics, RolloutFigures, prune_dead_workers
from .paths import prepare_model_path
from .pins import PinBook
from .settings import ModelSpec, Settings

__all__ = ["ModelHandle", "Runtime"]

log = logging.getLogger("ckptserve.server")

#: Python's default allocations between two young-generation collections, and the server's.
_GC_DEFAULT_GEN0 = 700
_GC_GEN0 = 20_000


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
        if gc.get_threshold()[0] == _GC_DEFAULT_GEN0:
            # A request allocates a few dozen containers: at Python's default a young-generation
            # collection ran every ~20 requests, 7 % of a request's cost in-process at c=64
            # (benchmarks/bench_parts.py); their garbage is acyclic, so fewer passes lose nothing.
            gc.set_threshold(_GC_GEN0, *gc.get_threshold()[1:])
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
