"""SWAP: the ModelRegistry owns the live model and decides when a new checkpoint replaces it.

Three calls make the contract that the server (and any other host) builds on:

    stale()    lock-free: the source's token changed, or a retry or a verify is due
    check()    one locked step: fetch, load, validate, then swap or keep
    current    the live handle (a LiveModel), read once per request

`get()` is `stale()`, then the swap policy (scheduling.py): in sync mode the caller runs
`check()`, in background mode the worker does while the live handle answers. On a change the
checkpoint is copied once into a private file named by its sha256, checked and loaded from that
copy, probed, and only then swapped in. A failure leaves the live model serving and is recorded
once; the same content is retried only after `retry_after` seconds, never on the request path
while a model is live. With nothing live (a restart with a bad newest file), the newest earlier
checkpoint that passes every check is served meanwhile (fallback.py).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ._attempts import AttemptLog
from ._coordination import LoadSlots
from ._copies import PrivateCopies
from ._following import Following
from ._harness import Passed, move, try_load
from ._watching import (
    Action,
    Outcome,
    SourceState,
    Watch,
    next_action,
)
from ._worker import BackgroundWorker
from .errors import CheckpointError, ModelNotAvailable
from .fallback import Fallback, FallbackSearch
from .loading import LiveModel
from .naming import model_name
from .options import RegistryOptions
from .scheduling import SWAP_POLICIES, SwapPolicy
from .sources import Source
from .versions import LoadAttempt, ModelVersion

# LiveModel (loading.py) and RegistryOptions (options.py) are re-exported from here.
__all__ = ["LiveModel", "ModelRegistry", "RegistryOptions"]

log = logging.getLogger("ckptserve.registry")

_monotonic = time.monotonic
_SERVED = ("ok", "unchanged")
#: Loads in one check after the first was superseded (a writer that never stops gets no more).
_SUPERSEDED_TRIES = 2


class ModelRegistry:
    """A thread-safe, hot-reloading holder of the newest good checkpoint.

    Args:
        model_path: a checkpoint file, a `{name}_latest.json` manifest, or a directory.
        device: where models are loaded ("cpu", "cuda:0", ...).
        name: the model's name in logs and status (default: the name it was published under).
        options: a RegistryOptions; keyword overrides (check_interval=..., swap=...) apply on top.

    Example:
        registry = ModelRegistry("models/actor_latest.pt", swap="background")
        action, _ = registry.get_model()(state, True)
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        device: str = "cpu",
        *,
        name: str | None = None,
        options: RegistryOptions | None = None,
        **overrides: Any,
    ) -> None:
        self.options = options = replace(options or RegistryOptions(), **overrides)
        self.model_path = Path(model_path)
        self.device = device
        if options.require_signature and not options.signing_key:
            raise ValueError("require_signature needs a key: pass signing_key=")
        self._follow = Following(model_path, options, name)  # a URL stays a string
        self.name = name or model_name(self._follow.watched.source.path)
        self.policy: SwapPolicy = SWAP_POLICIES[options.swap]()
        self._interval = options.check_interval
        self._pinned: Path | None = None
        self.fallback: Fallback | None = None  # what is served while the newest cannot be

        # _lock serialises loads and guards the decision state: which watch is served, the
        # state of each watch, _live and _next_check. Readers on the hot path never take it:
        # they read `_live` (an immutable LiveModel) and a watch's immutable state once each.
        self._lock = threading.Lock()
        self._live: LiveModel | None = None
        self._serving = self._follow.watched  # the watched path's, or a pin's
        self._next_check = 0.0  # check_interval gate
        self._load_count = 0
        self._attempts: AttemptLog[ModelRegistry] = AttemptLog(self.name, options.history)
        self._worker = BackgroundWorker(f"ckptserve-{self.name}", options.background_nice)
        self._copies = PrivateCopies(options.cache_dir)  # removed on close() or collection
        self._fallbacks = FallbackSearch(
            self.name, self._follow.checkpoint_source, self._try_fallback
        )
        self._closed = False
        limit = options.max_concurrent_loads
        self._slots = None if limit is None else LoadSlots(
            str(self._follow.watched.source.path.resolve()), limit, directory=options.lock_dir
        )  # fmt: skip

    # ---- the hot path -------------------------------------------------------------------------

    def get_model(self, force_reload: bool = False) -> Any:
        """Return the live model, loading a new checkpoint first if one appeared.

        Raises:
            ModelNotAvailable: no model is live and none could be loaded.
        """
        # get()'s fast path, inlined: this is the whole call while nothing changed.
        live = self._live
        if live is not None and not force_reload:
            if self._interval:
                if _monotonic() < self._next_check:
                    return live.model
            else:
                watch = self._serving
                state = watch.state
                if watch.token() == state.token and _monotonic() < state.due:
                    return live.model
        if force_reload:
            self.check(reload=True)
            return self.require_live().model
        return self.get().model

    def stale(self) -> bool:
        """Whether the served source needs a look: its token changed, or a retry or a verify is
        due. Lock-free and cheap (one `os.stat`, or nothing within `check_interval`); never reads
        file contents."""
        if self._interval:
            now = _monotonic()
            if now < self._next_check:
                return False
            self._next_check = now + self._interval
        watch = self._serving
        state = watch.state
        return watch.token() != state.token or _monotonic() >= state.due

    def get(self) -> LiveModel:
        """The live handle, after checking the source if it is stale (as the swap mode says).

        Raises:
            ModelNotAvailable: no model is live and none could be loaded.
        """
        if self.stale():
            live = self.policy.serve_stale(self)
            if live is not None:
                return live
            self.check()
        return self.require_live()

    @property
    def current(self) -> LiveModel | None:
        """The live model and version (the default handle), without looking at the source."""
        return self._live

    def require_live(self) -> LiveModel:
        """`current`, or ModelNotAvailable saying why nothing is live."""
        live = self._live
        if live is not None:
            return live
        if self._serving.missing:
            raise ModelNotAvailable(
                f"{self.name}: no checkpoint at {self._serving.source.path} yet"
            )
        exc = self._attempts.last_exc
        reason = str(exc) if exc is not None else "no checkpoint loaded yet"
        raise ModelNotAvailable(f"{self.name}: no model is live ({reason})") from exc

    # ---- one step -----------------------------------------------------------------------------

    def check(self, *, reload: bool = False, force: bool = False) -> LoadAttempt | None:
        """Look at the source now and load in this thread if needed; return the attempt made.

        Ignores `check_interval` and the swap mode: the server, the worker, tests and admin tools
        step detection with it.

        Args:
            reload: load the served checkpoint even if it is unchanged.
            force: also take a candidate whose sizes differ from the live model's (an admin's
                decision, logged); the integrity and signature checks are never skipped.
        """
        with self._lock:
            if force:
                log.warning("forced reload", extra={"model": self.name, "audit": "force"})
            return self._step(reload=reload or force, force=force)

    def _step(self, *, reload: bool, force: bool) -> LoadAttempt | None:
        now = _monotonic()
        self._next_check = now + self._interval  # this is a look at the source
        watch = self._serving
        token = watch.token()
        if token is None and watch is self._follow.watched:
            found = self._follow.refind(now)
            if found is not None:  # e.g. a checkpoint copied in by hand (no manifest)
                watch = self._serving = found
                token = watch.token()
        action = next_action(watch.state, token, now)
        if reload and action is not Action.MISSING:
            action = Action.LOAD
        if action is Action.NONE:
            return None
        if action is Action.MISSING:
            was_missing = watch.missing
            move(watch, Outcome.MISSING, None, None, now)
            if self._live is None and self._follow.directory is not None:
                # Nothing to serve meanwhile: every look may list the directory (DirectoryWatch
                # lists it only when its entries changed, or every RESCAN_EVERY s).
                watch.state = replace(watch.state, due=now)
            if not was_missing:
                log.warning(
                    "checkpoint missing", extra={"model": self.name, "path": str(watch.source.path)}
                )
                self._fall_back_if_nothing_live()
            return None
        if action is Action.VERIFY:
            # Same stat key: only the periodic re-read of the manifest is due.
            digest = watch.source.digest()
            if digest is None or digest == watch.state.sha256:
                move(watch, Outcome.VERIFIED, token, watch.state.sha256, now)
                return None
        attempt = self._load(watch, token, reload=reload, force=force)
        for _ in range(_SUPERSEDED_TRIES):  # a newer write replaced what was read: take it now
            if attempt is None or attempt.result != "superseded":
                break
            attempt = self._load(watch, watch.token(), reload=reload, force=force)
        self._fall_back_if_nothing_live()
        return attempt

    def _load(self, watch: Watch, token: Any, *, reload: bool, force: bool) -> LoadAttempt | None:
        """Read, verify, load, validate and swap the checkpoint of one watch. Caller holds the lock."""
        if self._closed:
            return None
        with self._copies.loading():
            if self._slots is None:
                return self._load_copy(watch, token, reload=reload, force=force)
            with self._slots.hold():
                return self._load_copy(watch, token, reload=reload, force=force)

    def _load_copy(
        self, watch: Watch, token: Any, *, reload: bool, force: bool
    ) -> LoadAttempt | None:
        result = try_load(
            watch, token, live=self._live, copies=self._copies, options=self.options,
            device=self.device, attempts=self._attempts, owner=self, reload=reload, force=force,
            closed=lambda: self._closed,
        )  # fmt: skip
        if not isinstance(result, Passed):
            return result
        candidate, snapshot = result.candidate, result.snapshot
        self._copies.keep_while(candidate.version.sha256, candidate.model)
        self._live = candidate
        self._load_count += 1
        self._follow.vouch(watch.source, snapshot)
        if watch is self._follow.watched:
            self.fallback = None
        move(watch, Outcome.LOADED, snapshot.token, snapshot.sha256, result.now)
        attempt = self._attempts.loaded(self, snapshot, started=result.started, forced=reload,
                                        unchanged=False)  # fmt: skip
        self._copies.prune(keep=candidate.version.sha256)
        return attempt

    def _fall_back_if_nothing_live(self) -> None:
        if self._live is not None or self._serving is not self._follow.watched or self._closed:
            return
        error = self._attempts.last_error
        missing = f"{self._follow.watched.source.path.name} is missing"
        reason = f"{error['checkpoint']}: {error['reason']}" if error else missing
        self.fallback = self._fallbacks.find(*self._follow.earlier(), reason)

    # ---- scheduling (scheduling.Schedulable) ---------------------------------------------------

    def token_changed(self) -> bool:
        watch = self._serving
        return watch.token() != watch.state.token

    def turn_taken(self) -> bool:
        return self._slots is not None and self._slots.busy()

    def schedule(self) -> None:
        if not self._closed and not self._worker.busy:
            self._worker.submit(self._check_in_worker)

    def look_again(self) -> None:
        """Look at the source again soon, on the worker, as if a retry or a verify were due (the
        server's SIGHUP): a manifest is re-read, content that failed is tried again."""
        if not self._closed and not self._worker.busy:
            self._worker.submit(self._look_again_now)

    def _look_again_now(self) -> None:
        with self._lock:
            self._serving.state = replace(self._serving.state, due=0.0)
        self._check_in_worker()

    def _check_in_worker(self) -> None:
        try:
            self.check()
        except Exception:  # the worker must never die silently; _load records failures
            log.exception("background load failed", extra={"model": self.name})

    # ---- pinning ------------------------------------------------------------------------------

    def pin(self, path: str | os.PathLike[str], *, force: bool = False) -> LiveModel:
        """Serve the checkpoint at `path` (e.g. an older timestamped one) until `unpin()`.

        A pin is checked like the watched source: by its manifest record's sha256 and signature
        where the watched source is a manifest. `force` takes it even if its sizes differ from the
        live model's.

        Raises:
            CheckpointError: it cannot be loaded, verified or is rejected; the live model stays.
        """
        with self._lock:
            if self._closed:
                raise CheckpointError(f"{self.name}: the registry is closed")
            watch = self._follow.watch(self._follow.checkpoint_source(Path(path)))
            if force:
                log.warning("forced pin", extra={"model": self.name, "audit": "force",
                                                 "checkpoint": Path(path).name})  # fmt: skip
            attempt = self._load(watch, watch.token(), reload=True, force=force)
            if attempt is None or attempt.result not in _SERVED:
                if attempt is None:
                    raise CheckpointError(f"{path} does not exist")
                raise self._attempts.last_exc or CheckpointError(attempt.reason or "not loaded")
            self._serving, self._pinned, self.fallback = watch, Path(path), None
            return self.require_live()

    def unpin(self) -> LiveModel | None:
        """Follow the watched path again, loading what it points at now."""
        with self._lock:
            self._serving, self._pinned = self._follow.watched, None
            # What was decided before the pin was about the model the pin replaced: look again.
            self._serving.state = SourceState()
            self._step(reload=False, force=False)
            return self._live

    @property
    def pinned(self) -> Path | None:
        return self._pinned

    # ---- observing -----------------------------------------------------------------------------

    def add_listener(self, listener: Callable[[ModelRegistry, LoadAttempt], None]) -> None:
        """Call `listener(registry, attempt)` after every load attempt (metrics, logs)."""
        self._attempts.listeners.append(listener)

    @property
    def version(self) -> ModelVersion | None:
        live = self._live
        return live.version if live is not None else None

    @property
    def load_count(self) -> int:
        """Successful loads so far (forced reloads included, unchanged content not)."""
        return self._load_count

    @property
    def is_loaded(self) -> bool:
        return self._live is not None

    @property
    def history(self) -> list[LoadAttempt]:
        return list(self._attempts.history)

    @property
    def last_error(self) -> dict[str, Any] | None:
        return self._attempts.last_error

    @property
    def file_missing(self) -> bool:
        return self._serving.missing

    @property
    def loading(self) -> bool:
        return self._worker.busy

    @property
    def source(self) -> Source:
        return self._serving.source

    def status(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot: the original fields plus version, errors and history."""
        live = self._live
        version = live.version if live is not None else None
        history = list(self._attempts.history)  # one C-level copy: a load may append meanwhile
        serving = self._serving
        # A polled source (s3://, --nfs) says when it last answered and what failed.
        health = getattr(serving.source, "health", None)
        return {
            "name": self.name,
            "loaded": live is not None,
            "model_path": getattr(self._follow.watched.source, "url", str(self.model_path)),
            "load_count": self._load_count,
            "last_mtime": version.mtime if version is not None else 0.0,
            "version": version.to_dict() if version is not None else None,
            "last_error": self._attempts.last_error,
            "file_missing": serving.missing,
            "pinned": str(self._pinned) if self._pinned is not None else None,
            "fallback": self.fallback.to_dict() if self.fallback is not None else None,
            "source": serving.source.kind,
            "source_health": health() if health is not None else None,
            "phase": serving.state.phase.value,
            "swap": self.policy.name,
            "loading": self.loading,
            "history": [a.to_dict() for a in history],
        }

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no background load is in flight; True if idle within `timeout`."""
        return self._worker.wait_idle(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the background worker and remove the private copies, after waiting (at most
        `timeout` s) for a load that another thread is running to finish with them."""
        deadline = _monotonic() + timeout
        self._worker.close(timeout)
        acquired = self._lock.acquire(timeout=max(0.0, deadline - _monotonic()))
        self._closed = True  # a load that starts (or, not waited for, ends) now keeps nothing
        try:
            self._copies.close()
        finally:
            if acquired:
                self._lock.release()

    def __enter__(self) -> ModelRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"ModelRegistry({self.name!r}, {self._serving.source!r}, load_count={self._load_count})"
        )

    def _try_fallback(self, source: Source) -> bool:
        """Load `source` as a fallback candidate (the search calls it with the lock held)."""
        watch = self._follow.watch(source)
        attempt = self._load(watch, watch.token(), reload=False, force=False)
        return attempt is not None and attempt.result == "ok"
