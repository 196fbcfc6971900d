"""SWAP: the ModelRegistry owns the live model and decides when a new checkpoint replaces it.

One cheap check per call (or per `check_interval`) compares the source's token with the last one
seen. On a change the checkpoint is copied once into a private file named by its sha256 (hashed
chunk by chunk on the way), CRC-checked and loaded from that copy, probed, and only then swapped
in. A failure leaves the live model serving and is recorded once; the same token is retried only
after `retry_after` seconds.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .attempts import AttemptLog, as_checkpoint_error
from .background import BackgroundWorker
from .coordination import LoadSlots
from .errors import CheckpointError, ModelNotAvailable, WouldBlock
from .loading import LiveModel, PrivateCopies, load_candidate
from .manifest import SIGNING_KEY_ENV
from .naming import DEFAULT_NAME, model_name
from .options import RegistryOptions
from .options import SwapMode as SwapMode  # re-exported: it was defined here
from .sources import FileSource, Snapshot, Source, make_source
from .versions import LoadAttempt, ModelVersion
from .watching import UNSEEN, DirectoryWatch, SourceState

# LiveModel (loading.py) and RegistryOptions (options.py) are re-exported from here.
__all__ = ["LiveModel", "ModelRegistry", "RegistryOptions"]

log = logging.getLogger("ckptserve.registry")

_monotonic = time.monotonic


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
        self.options = replace(options or RegistryOptions(), **overrides)
        self.model_path = Path(model_path)
        self.device = device
        key = self.options.signing_key or os.environ.get(SIGNING_KEY_ENV) or None
        if self.options.require_signature and not key:
            raise ValueError(
                f"require_signature needs a key: pass signing_key= or set ${SIGNING_KEY_ENV}"
            )
        self._signing_key = key
        self._lookup_name = name or DEFAULT_NAME
        # A directory is looked into again while it has nothing published (see _decide).
        self._directory: DirectoryWatch | None = None
        if self.model_path.is_dir():
            self._directory = DirectoryWatch(
                self.model_path, self._lookup_name, signed_only=self.options.require_signature
            )
        watched = SourceState(self._make_source(self.model_path))
        self.name = name or model_name(watched.source.path)
        self._interval = self.options.check_interval
        verify = self.options.verify_interval
        if verify is None:
            verify = 5.0 if watched.source.kind == "manifest" else 0.0
        self._verify_every = verify
        self._pinned: Path | None = None

        # _lock serialises loads and guards the decision state: _next_check, and the state of
        # the watched source and of the one served now (a pin, or the same). Readers on the hot
        # path never take it: they read `_live` (an immutable LiveModel) in one attribute access.
        self._lock = threading.Lock()
        self._live: LiveModel | None = None
        self._watched = self._current = watched
        self._next_check = 0.0  # check_interval gate
        self._load_count = 0
        self._attempts: AttemptLog[ModelRegistry] = AttemptLog(self.name, self.options.history)
        self._worker = BackgroundWorker(f"ckptserve-{self.name}", self.options.background_nice)
        self._copies = PrivateCopies(self.options.cache_dir)  # removed on close() or collection
        self._closed = False
        limit = self.options.max_concurrent_loads
        self._slots = None if limit is None else LoadSlots(
            str(watched.source.path.resolve()), limit, directory=self.options.lock_dir
        )  # fmt: skip
        self._in_worker = False  # the background worker is deciding (it waits for its turn)

    # ---- the original API -------------------------------------------------------------------

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
                state = self._current
                if state.token() == state.seen and _monotonic() < state.recheck_at:
                    return live.model
        return self.get(force_reload=force_reload).model

    @property
    def load_count(self) -> int:
        """Successful loads so far (forced reloads included, unchanged content not)."""
        return self._load_count

    @property
    def is_loaded(self) -> bool:
        return self._live is not None

    # ---- the handle ---------------------------------------------------------------------------

    @property
    def current(self) -> LiveModel | None:
        """The live model and version, without checking the source."""
        return self._live

    @property
    def version(self) -> ModelVersion | None:
        live = self._live
        return live.version if live is not None else None

    def get(self, *, force_reload: bool = False, block: bool = True) -> LiveModel:
        """Check the source (at most once per `check_interval`) and return the live handle.

        With `block=False` a call that would have to load (or wait for a load) in this thread
        raises `WouldBlock` instead, so a server can make the same call in a worker thread; in
        background mode with a live model the load is scheduled and the live handle returned.
        A forced reload always loads, so `force_reload=True, block=False` raises `WouldBlock`.

        Raises:
            ModelNotAvailable: no model is live and none could be loaded.
            WouldBlock: only with `block=False`, as above.
        """
        live = self._live
        if live is not None and not force_reload:
            if self._interval:
                now = _monotonic()
                if now < self._next_check:
                    return live
                self._next_check = now + self._interval
            state = self._current
            if state.token() == state.seen and _monotonic() < state.recheck_at:
                return live
        if force_reload:
            if not block:
                raise WouldBlock(self.name)
            return self._force()
        return self._changed(block)

    def check(self) -> LoadAttempt | None:
        """Look at the source now and load in this thread if needed; return the attempt made.

        Ignores `check_interval` and the swap mode: tests and admin tools step detection with it.
        """
        with self._lock:
            before = self._attempts.count
            with contextlib.suppress(ModelNotAvailable):
                self._decide(time.monotonic(), load_here=True, force=False)
            return self._attempts.history[-1] if self._attempts.count != before else None

    # ---- pinning ------------------------------------------------------------------------------

    def pin(self, path: str | os.PathLike[str]) -> LiveModel:
        """Serve the checkpoint at `path` (e.g. an older timestamped one) until `unpin()`.

        Raises:
            CheckpointError: it cannot be loaded or is rejected; the live model stays.
        """
        pinned = SourceState(FileSource(path))  # its own state: the watched source's stays as is
        with self._lock:
            self._load(pinned, force=True, raise_errors=True)
            self._current = pinned
            self._pinned = Path(path)
            return self._require_live()

    def unpin(self) -> LiveModel | None:
        """Follow the watched path again, loading what it points at now."""
        with self._lock:
            self._current = self._watched
            self._pinned = None
            # What was decided before the pin was about the model the pin replaced: look again.
            self._watched.seen, self._watched.recheck_at = UNSEEN, 0.0
            with contextlib.suppress(ModelNotAvailable):
                self._decide(time.monotonic(), load_here=True, force=False)
            return self._live

    @property
    def pinned(self) -> Path | None:
        return self._pinned

    # ---- observing -----------------------------------------------------------------------------

    def add_listener(self, listener: Callable[[ModelRegistry, LoadAttempt], None]) -> None:
        """Call `listener(registry, attempt)` after every load attempt (metrics, logs)."""
        self._attempts.listeners.append(listener)

    @property
    def history(self) -> list[LoadAttempt]:
        return list(self._attempts.history)

    @property
    def last_error(self) -> dict[str, Any] | None:
        return self._attempts.last_error

    @property
    def file_missing(self) -> bool:
        return self._current.missing

    @property
    def loading(self) -> bool:
        return self._worker.busy

    @property
    def source(self) -> Source:
        return self._current.source

    def status(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot: the original fields plus version, errors and history."""
        live = self._live
        version = live.version if live is not None else None
        history = list(self._attempts.history)  # one C-level copy: a load may append meanwhile
        current = self._current
        return {
            "name": self.name,
            "loaded": live is not None,
            "model_path": str(self.model_path),
            "load_count": self._load_count,
            "last_mtime": version.mtime if version is not None else 0.0,
            "version": version.to_dict() if version is not None else None,
            "last_error": self._attempts.last_error,
            "file_missing": current.missing,
            "pinned": str(self._pinned) if self._pinned is not None else None,
            "source": current.source.kind,
            "swap": self.options.swap,
            "loading": self.loading,
            "history": [a.to_dict() for a in history],
        }

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no background load is in flight; True if idle within `timeout`."""
        return self._worker.wait_idle(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the background worker and remove the private copies, after waiting (at most
        `timeout` s) for a load that another thread is running to finish with them."""
        deadline = time.monotonic() + timeout
        self._worker.close(timeout)
        acquired = self._lock.acquire(timeout=max(0.0, deadline - time.monotonic()))
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
        source = self._current.source
        return f"ModelRegistry({self.name!r}, {source!r}, load_count={self._load_count})"

    # ---- the slow path --------------------------------------------------------------------------

    def _changed(self, block: bool) -> LiveModel:
        background = self.options.swap == "background" and self._live is not None
        if background or not block:
            # Never wait behind a load in flight: in background mode the live model answers
            # meanwhile; with block=False the caller is told to ask again from a worker thread.
            busy = self._require_live if background else self._would_block
            return self._decide_unless_busy(load_here=False, busy=busy)
        if self._slots is not None and self._live is not None:
            # Coordinated loads: a caller never queues behind a load in flight (which may be
            # waiting for its turn); the live model answers.
            return self._decide_unless_busy(load_here=True, busy=self._require_live)
        with self._lock:
            return self._decide(time.monotonic(), load_here=True, force=False)

    def _decide_unless_busy(self, *, load_here: bool, busy: Callable[[], LiveModel]) -> LiveModel:
        """_decide if the lock is free at once; else what `busy()` returns (or raises)."""
        if not self._lock.acquire(blocking=False):
            return busy()
        try:
            return self._decide(time.monotonic(), load_here=load_here, force=False)
        finally:
            self._lock.release()

    def _would_block(self) -> LiveModel:
        raise WouldBlock(self.name)

    def _decide(self, now: float, *, load_here: bool, force: bool) -> LiveModel:
        """With the lock held: look at the source and load, schedule or refuse. Returns the handle."""
        self._next_check = now + self._interval  # this is a look at the source
        live = self._live
        state = self._current
        token = state.token()
        if token is None and self._directory is not None and state is self._watched:
            # Nothing was published when we looked into the directory: look again, so a
            # checkpoint copied in by hand (no manifest) is found too.
            found = self._directory.find(now, state.source.path)
            if found is not None:
                state = self._watched = self._current = SourceState(self._make_source(found))
                token = state.token()
        if token is None:
            if not state.missing:
                log.warning(
                    "checkpoint missing", extra={"model": self.name, "path": str(state.source.path)}
                )
            state.mark_missing()
            return self._require_live()
        state.missing = False
        if token == state.seen and now < state.recheck_at:
            return self._require_live()
        if token == state.seen and live is not None and self._verify_every:
            # Same stat key: only the periodic re-read of the manifest is due.
            digest = state.source.digest()
            if digest in (live.version.sha256, state.failed_sha) or digest is None:
                state.recheck_at = now + self._verify_every
                return live
        if not load_here:
            if live is not None and self.options.swap == "background":
                self._schedule()
                return live
            self._next_check = 0.0  # the caller's retry from a worker thread must look again
            raise WouldBlock(self.name)
        if self._slots is None:
            self._load(state, force=force, raise_errors=False)
            return self._require_live()
        if live is not None and not self._in_worker and self._slots.busy():
            # Other processes hold every load slot: keep serving, load in turn in the background.
            self._schedule()
            return live
        with self._slots.hold():
            self._load(state, force=force, raise_errors=False)
        return self._require_live()

    def _force(self) -> LiveModel:
        with self._lock:
            self._load(self._current, force=True, raise_errors=False)
            return self._require_live()

    def _schedule(self) -> None:
        if self._worker.busy:
            return
        self._current.recheck_at = math.inf  # until the worker decides, the hot path need not look
        self._worker.submit(self._background_load)

    def _background_load(self) -> None:
        with self._lock:
            self._current.recheck_at = 0.0
            self._in_worker = True
            try:
                self._decide(time.monotonic(), load_here=True, force=False)
            except ModelNotAvailable:
                pass
            except Exception:  # the worker must never die silently; _load records failures
                log.exception("background load failed", extra={"model": self.name})
            finally:
                self._in_worker = False

    def _load(self, state: SourceState, *, force: bool, raise_errors: bool) -> None:
        """Read, verify, load, validate and swap the checkpoint of one source, keeping what was
        decided in `state` (the watched source's, or a pin's). Caller holds the lock."""
        if self._closed:
            if raise_errors:
                raise CheckpointError(f"{self.name}: the registry is closed")
            return
        with self._copies.loading():
            self._load_copy(state, force=force, raise_errors=raise_errors)

    def _load_copy(self, state: SourceState, *, force: bool, raise_errors: bool) -> None:
        source = state.source
        started = time.perf_counter()
        now = time.monotonic()
        live = self._live
        before = source.token()
        snapshot: Snapshot | None = None
        try:
            if before is None:
                raise FileNotFoundError(str(source.path))
            snapshot = source.fetch(self._copies.directory)
            if not force and live is not None and snapshot.sha256 == live.version.sha256:
                # A touch or a copy of the same bytes: adopt the new key, keep the model.
                state.seen = snapshot.token
                state.recheck_at = now + (self._verify_every or math.inf)
                self._attempts.loaded(self, snapshot, started=started, forced=force, unchanged=True)
                return
            candidate = load_candidate(
                snapshot, device=self.device, options=self.options, path=source.path,
                started=started,
            )  # fmt: skip
        except Exception as exc:
            if isinstance(exc, FileNotFoundError) and source.token() is None:
                state.mark_missing()
                if raise_errors:
                    raise CheckpointError(f"{source.path} does not exist") from None
                return
            # Whatever went wrong (bad bytes, odd metadata, a loader bug), the request that
            # triggered the load must still get the live model: record it as a failed load.
            error = exc if isinstance(exc, CheckpointError) else as_checkpoint_error(exc)
            self._fail(state, error, snapshot, before, started, force, now)
            if raise_errors:
                raise error  # noqa: B904 (its __cause__ is already set)
            return
        # The stat key read again after the load: if the file moved while we read it (a slow
        # writer, or a replace racing us), what we loaded may be a mix; discard it and retry.
        if source.token() != snapshot.token:
            error = CheckpointError("checkpoint changed while it was being loaded (torn write)")
            self._fail(state, error, snapshot, before, started, force, now, retry=True)
            if raise_errors:
                raise error
            return
        if self._closed:  # close() gave up waiting for this load: keep nothing
            self._copies.discard(candidate.version.sha256)
            return
        self._copies.keep_while(candidate.version.sha256, candidate.model)
        self._live = candidate
        self._load_count += 1
        state.seen, state.failed_sha = snapshot.token, None
        state.recheck_at = now + (self._verify_every or math.inf)
        self._attempts.loaded(self, snapshot, started=started, forced=force, unchanged=False)
        self._copies.prune(keep=candidate.version.sha256)

    def _fail(
        self,
        state: SourceState,
        error: CheckpointError,
        snapshot: Snapshot | None,
        before: Hashable | None,
        started: float,
        force: bool,
        now: float,
        *,
        retry: bool = False,
    ) -> None:
        live = self._live
        if snapshot is not None and (live is None or snapshot.sha256 != live.version.sha256):
            self._copies.discard(snapshot.sha256)  # not kept: no disk held by rejected bytes
        # The token read before the attempt: if the source moved since, the next call sees a
        # new token and tries again at once instead of waiting out retry_after.
        state.seen = snapshot.token if snapshot is not None else before
        state.recheck_at = now if retry else now + self.options.retry_after
        state.failed_sha = snapshot.sha256 if snapshot is not None else None
        self._attempts.failed(
            self, error, snapshot, state.source.path, started=started, forced=force
        )

    def _make_source(self, path: Path) -> Source:
        return make_source(
            path, name=self._lookup_name, signing_key=self._signing_key,
            require_signature=self.options.require_signature,
        )  # fmt: skip

    def _require_live(self) -> LiveModel:
        live = self._live
        if live is not None:
            return live
        if self._current.missing:
            raise ModelNotAvailable(
                f"{self.name}: no checkpoint at {self._current.source.path} yet"
            )
        exc = self._attempts.last_exc
        reason = str(exc) if exc is not None else "no checkpoint loaded yet"
        raise ModelNotAvailable(f"{self.name}: no model is live ({reason})") from exc
