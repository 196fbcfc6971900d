"""SWAP: the ModelRegistry owns the live model and decides when a new checkpoint replaces it.

    stale()    lock-free: the source's token changed, or a retry or a verify is due
    check()    one locked step: fetch, load, validate, then swap or keep (_swapping.py)
    current    the live handle (a LiveModel), read once per request

`get()` is `stale()`, then the swap policy (scheduling.py): the caller runs `check()` (sync) or
the worker does while the live handle answers (background, and every retry or verify).
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
from ._copies import PrivateCopies
from ._following import Following
from ._rollout import Rollout
from ._swapping import Swapper
from ._worker import BackgroundWorker
from .errors import ModelNotAvailable
from .fallback import Fallback
from .loading import LiveModel
from .naming import model_name
from .options import RegistryOptions
from .rollout.judging import Judge
from .scheduling import SWAP_POLICIES, SwapPolicy
from .sources import Source
from .versions import LoadAttempt, ModelVersion

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
        judge: decides whether a loaded candidate may replace the live model (rollout.Judge);
            default: the one the options describe (`Judge.from_options`).

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
        judge: Judge | None = None,
        **overrides: Any,
    ) -> None:
        self.options = options = replace(options or RegistryOptions(), **overrides)
        self.model_path = Path(model_path)
        self.device = device
        follow = Following(model_path, options, name)  # a URL (s3://) stays a string
        self.name = name or model_name(follow.watched.source.path)
        self.policy: SwapPolicy = SWAP_POLICIES[options.swap]()
        self._interval = options.check_interval
        self._next_check = 0.0  # check_interval gate
        self._attempts: AttemptLog[ModelRegistry] = AttemptLog(self.name, options.history)
        self._worker = BackgroundWorker(f"ckptserve-{self.name}", options.background_nice)
        self._copies = PrivateCopies(options.cache_dir)  # removed on close() or collection
        # _lock serialises loads and guards the write side (_swap): what is served, the state of
        # each watch. Readers on the hot path never take it: they read the live handle and a
        # watch's state once each, both immutable and replaced whole.
        self._lock = threading.Lock()
        swap = self._swap = Swapper(self, follow, options, device, self._attempts, self._copies,
                                    judge)  # fmt: skip
        self.judge, self.resident, self.rollout = swap.judge, swap.resident, Rollout(swap)

    # ---- the hot path -------------------------------------------------------------------------

    def get_model(self, force_reload: bool = False) -> Any:
        """Return the live model, loading a new checkpoint first if one appeared.

        Raises:
            ModelNotAvailable: no model is live and none could be loaded.
        """
        # get()'s fast path, inlined: this is the whole call while nothing changed.
        swap = self._swap
        live = swap.live
        if live is not None and not force_reload:
            if self._interval:
                if _monotonic() < self._next_check:
                    return live.model
            else:
                watch = swap.serving
                state = watch.state
                if watch.token() == state.token and _monotonic() < state.due:
                    return live.model
        if force_reload:
            self.check(reload=True)
            return self.require_live().model
        return self.get().model

    def stale(self) -> bool:
        """Whether the served source needs a look: its token changed, or a retry or a verify is
        due. Lock-free (one `os.stat`, or nothing within `check_interval`); reads no contents."""
        if self._interval:
            now = _monotonic()
            if now < self._next_check:
                return False
            self._next_check = now + self._interval
        watch = self._swap.serving
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
        return self._swap.live

    def require_live(self) -> LiveModel:
        """`current`, or ModelNotAvailable saying why nothing is live."""
        swap = self._swap
        if swap.live is not None:
            return swap.live
        if swap.serving.missing:
            raise ModelNotAvailable(f"{self.name}: no checkpoint at {swap.serving.source.path} yet")
        exc = self._attempts.last_exc
        reason = str(exc) if exc is not None else "no checkpoint loaded yet"
        raise ModelNotAvailable(f"{self.name}: no model is live ({reason})") from exc

    def check(self, *, reload: bool = False, force: bool = False) -> LoadAttempt | None:
        """Look at the source now and load in this thread if needed; return the attempt made.
        Ignores `check_interval` and the swap mode: the server, the worker and tests step with it.

        Args:
            reload: load the served checkpoint even if it is unchanged.
            force: also take a candidate whose sizes differ from the live model's (an admin's
                decision, logged); the integrity and signature checks are never skipped.
        """
        with self._lock:
            self._next_check = _monotonic() + self._interval  # this is a look at the source
            return self._swap.step(reload=reload or force, force=force)

    # ---- scheduling.Schedulable, pinning ------------------------------------------------------

    def token_changed(self) -> bool:
        watch = self._swap.serving
        return watch.token() != watch.state.token

    def turn_taken(self) -> bool:
        return self._swap.turn_taken()

    def schedule(self) -> None:
        if not self._swap.closed and not self._worker.busy:
            self._worker.submit(self._check_in_worker)

    def look_again(self) -> None:
        """Look again soon, on the worker, as if a retry or a verify were due (SIGHUP)."""
        if not self._swap.closed and not self._worker.busy:
            self._worker.submit(lambda: self._check_in_worker(look_again=True))

    def _check_in_worker(self, look_again: bool = False) -> None:
        try:
            if look_again:
                with self._lock:
                    self._swap.look_again()
            self.check()
        except Exception:  # the worker must never die silently; the swapper records failures
            log.exception("background load failed", extra={"model": self.name})

    def roll_back(self, sha256: str, reason: str) -> LiveModel | None:
        """Go back to the previous resident version at once, marking `sha256` bad (Rollout)."""
        return self.rollout.roll_back(sha256, reason)

    def pin(self, path: str | os.PathLike[str], *, force: bool = False) -> LiveModel:
        """Serve the checkpoint at `path` (e.g. an older timestamped one) until `unpin()`,
        checked as the watched source is (beside a manifest: through its signed record). `force`
        takes it even if its sizes differ from the live model's.

        Raises:
            CheckpointError: it cannot be loaded, verified or is rejected; the live model stays.
        """
        with self._lock:
            self._swap.pin(Path(path), force=force)
            return self.require_live()

    def unpin(self) -> LiveModel | None:
        """Follow the watched path again, loading what it points at now."""
        with self._lock:
            self._swap.unpin()
            return self._swap.live

    @property
    def pinned(self) -> Path | None:
        return self._swap.pinned

    # ---- observing -----------------------------------------------------------------------------

    def add_listener(self, listener: Callable[[ModelRegistry, LoadAttempt], None]) -> None:
        """Call `listener(registry, attempt)` after every load attempt (metrics, logs)."""
        self._attempts.listeners.append(listener)

    @property
    def version(self) -> ModelVersion | None:
        return None if (live := self._swap.live) is None else live.version

    @property
    def load_count(self) -> int:
        """Successful loads so far (forced reloads included, unchanged content not)."""
        return self._swap.load_count

    @property
    def is_loaded(self) -> bool:  # the original API
        return self._swap.live is not None

    @property
    def fallback(self) -> Fallback | None:
        """The earlier checkpoint served because the newest could not be, if one is."""
        return self._swap.fallback

    @property
    def history(self) -> list[LoadAttempt]:
        return list(self._attempts.history)

    @property
    def last_error(self) -> dict[str, Any] | None:
        return self._attempts.last_error

    @property
    def file_missing(self) -> bool:
        return self._swap.serving.missing

    @property
    def loading(self) -> bool:
        return self._worker.busy

    @property
    def source(self) -> Source:
        """The source served now: the watched path's, or a pin's."""
        return self._swap.serving.source

    def status(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot: the original fields plus version, errors and history."""
        head = {"name": self.name, "swap": self.policy.name, "loading": self.loading}
        return {**head, **self._swap.status(str(self.model_path)), **self.rollout.status()}

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no background load is in flight; True if idle within `timeout`."""
        return self._worker.wait_idle(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the background worker and the source's poll thread, and remove the private
        copies, after waiting (at most `timeout` s) for a load in another thread to end."""
        deadline = _monotonic() + timeout
        self._worker.close(timeout)
        acquired = self._lock.acquire(timeout=max(0.0, deadline - _monotonic()))
        self._swap.closed = True  # a load that starts (or, not waited for, ends) now keeps nothing
        try:
            self._swap.close_sources()
            self._copies.close()
        finally:
            if acquired:
                self._lock.release()

    def __enter__(self) -> ModelRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        source, count = self._swap.serving.source, self._swap.load_count
        return f"ModelRegistry({self.name!r}, {source!r}, load_count={count})"
