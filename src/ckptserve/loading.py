"""LOAD + VALIDATE, as one step: turn a fetched snapshot into a checked candidate, or raise.

`load_candidate` checks and loads the snapshot's private copy (the file `Source.fetch` wrote),
works out what the model must look like (options + the checkpoint's metadata), runs the probe
and the user's `validate`, and returns a `LiveModel`. It reads no registry state, so anything
that wants a verified candidate (the registry's swap, a shadow or canary evaluation) calls the
same function. `PrivateCopies` owns the directory those copies live in.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import tempfile
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .formats import load_checkpoint
from .options import RegistryOptions
from .sources import Snapshot
from .validation import Expectations, expectations_for, run_checks
from .versions import ModelVersion

__all__ = ["LiveModel", "PrivateCopies", "load_candidate"]

#: Private copies in the cache are named by their sha256 (`.spool-*` while being written, see
#: `sources._spool`); nothing else there is ours.
_CACHED = re.compile(r"^(\.?[0-9a-f]{64}|\.spool-)")


@dataclass(frozen=True, slots=True)
class LiveModel:
    """The handle a request uses from start to end: the model and the version it came from."""

    model: Any
    version: ModelVersion
    expect: Expectations = field(repr=False)


class PrivateCopies:
    """The directory that checkpoints are loaded from: one private copy per sha256.

    Args:
        directory: where the copies live; None = a new temp dir, removed by `close()`. In a
            directory given here only our copies (named by sha256) are ever removed.

    Example:
        copies = PrivateCopies()
        snapshot = source.fetch(copies.directory)
        candidate = load_candidate(snapshot, device="cpu", options=options)
        copies.keep_while(candidate.version.sha256, candidate.model)
        copies.prune(keep=candidate.version.sha256)
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        owned = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="ckptserve-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self._reaper = _Reaper(self.directory)
        self._finalizer = weakref.finalize(self, _cleanup, self.directory, owned, self._reaper)

    def path_for(self, sha256: str) -> Path:
        """Where the copy of the bytes with this sha256 goes (`Source.fetch` writes it)."""
        return self.directory / sha256

    def keep_while(self, sha256: str, holder: object) -> None:
        """Keep the copy of `sha256` while `holder` (the model loaded from it) is alive.

        mmap loading (state_dict, safetensors) leaves the weights mapped from the copy. Unlinking
        a file that is still mapped defers freeing its page cache (~6 ms per 100 MB) to the last
        unmap, i.e. to whichever thread drops the model last: in a server, the event loop. So a
        copy is removed only after its model is gone, by a thread of its own.
        """
        self._reaper.hold(sha256, holder)

    @contextlib.contextmanager
    def loading(self) -> Iterator[None]:
        """Hold back removing copies whose models are gone while a load runs: it may be about to
        open a copy of the same bytes (a rollback to a version old requests still hold)."""
        self._reaper.begin_load()
        try:
            yield
        finally:
            self._reaper.end_load()

    def discard(self, sha256: str) -> None:
        """Remove the copy of one sha256 (a candidate that was not kept) unless a model maps it."""
        if self._reaper.removable(sha256):
            _unlink(self.path_for(sha256))

    def prune(self, keep: str) -> None:
        """Remove every copy but those of `keep` (a sha256) and of models still alive."""
        _remove_copies(self.directory, spare=self._reaper.spare(keep))

    def close(self) -> None:
        """Remove the copies (and the directory if it was ours). Also runs on garbage collection."""
        self._finalizer()


class _Reaper:
    """Which copies live models still map, and a thread that removes a copy once its model is
    gone. The model's finalizer may run on any thread, inside a garbage collection or while
    this object's lock is held, so it only puts the sha256 on a queue (SimpleQueue.put is
    reentrant); everything else happens in the reaper's thread."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._lock = threading.Lock()
        self._held: Counter[str] = Counter()
        self._keep: str | None = None
        self._loads = 0  # loads running: copies released meanwhile wait in _deferred
        self._deferred: set[str] = set()
        self._stopped = False
        self._released: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def hold(self, sha256: str, holder: object) -> None:
        if self._stopped:  # closed: nothing would remove the copy later, prune/close do
            return
        try:
            weakref.finalize(holder, self._released.put, sha256)
        except TypeError:  # not weak-referenceable: prune removes its copy at the next swap
            return
        with self._lock:
            self._held[sha256] += 1
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(
                    target=self._run, name="ckptserve-copies", daemon=True
                )
                self._thread.start()

    def spare(self, keep: str) -> tuple[str, ...]:
        """Record `keep` as the copy to keep; return every sha256 that must not be removed."""
        with self._lock:
            self._keep = keep
            return (keep, *self._held)

    def removable(self, sha256: str) -> bool:
        with self._lock:
            return sha256 not in self._held and sha256 != self._keep

    def begin_load(self) -> None:
        with self._lock:
            self._loads += 1

    def end_load(self) -> None:
        with self._lock:
            self._loads -= 1
            if not self._loads:
                deferred, self._deferred = self._deferred, set()
                for sha256 in deferred:
                    self._remove(sha256)

    def _remove(self, sha256: str) -> None:
        """With the lock held (so no load starts meanwhile): remove a copy nothing holds."""
        if sha256 in self._held or sha256 == self._keep:
            return
        if self._loads:
            self._deferred.add(sha256)
            return
        _unlink(self._directory / sha256)

    def _run(self) -> None:
        while (sha256 := self._released.get()) is not None:
            # The finalizer runs as the model is torn down, before its storage is unmapped:
            # give that thread the moment it needs to finish.
            time.sleep(0.05)
            with self._lock:
                self._held[sha256] -= 1
                if self._held[sha256] <= 0:
                    del self._held[sha256]
                    self._remove(sha256)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            thread, self._thread = self._thread, None
        if thread is not None:
            self._released.put(None)
            if thread is not threading.current_thread():  # a collection on the reaper's thread
                thread.join(timeout=5)


def _cleanup(directory: Path, owned: bool, reaper: _Reaper) -> None:
    try:
        reaper.stop()
    finally:
        if owned:
            shutil.rmtree(directory, ignore_errors=True)
        else:
            _remove_copies(directory)


def _remove_copies(directory: Path, spare: tuple[str, ...] = ()) -> None:
    """Remove our copies in `directory` (files named by a sha256) but those in `spare`."""
    with contextlib.suppress(OSError):  # a closed cache has no directory left
        for entry in directory.iterdir():
            if _CACHED.match(entry.name) and not entry.name.lstrip(".").startswith(spare):
                _unlink(entry)


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def load_candidate(
    snapshot: Snapshot,
    *,
    device: str,
    options: RegistryOptions,
    path: str | os.PathLike[str] | None = None,
    started: float | None = None,
) -> LiveModel:
    """Load, probe and validate one snapshot; return it as a handle that is not live anywhere.

    Args:
        snapshot: the checkpoint as a source fetched it: a private copy, named by its sha256.
        device: where the model is loaded ("cpu", "cuda:0", ...).
        options: the loader, allowed formats, expectations and `validate` to apply.
        path: the path recorded as the version's `path` (default: the snapshot's).
        started: `time.perf_counter()` when the attempt began, for `load_seconds` (default: now).

    Raises:
        CheckpointError: the bytes do not load (IntegrityError) or the model is rejected
            (ValidationError). Other exceptions (a loader's bug) propagate as they are.

    Example:
        candidate = load_candidate(source.fetch(PrivateCopies().directory), device="cpu",
                                   options=RegistryOptions())
    """
    if started is None:
        started = time.perf_counter()
    loaded = load_checkpoint(
        snapshot.file, device=device, loader=options.loader, allow_formats=options.allow_formats
    )
    metadata = {**snapshot.metadata, **loaded.metadata}
    expect = expectations_for(
        metadata,
        obs_dim=options.obs_dim, action_dim=options.action_dim,
        obs_low=options.obs_low, obs_high=options.obs_high,
        action_low=options.action_low, action_high=options.action_high,
    )  # fmt: skip
    probed = run_checks(loaded.model, expect, options.validate)
    if expect.obs_dim is None and probed is not None:
        expect = replace(expect, obs_dim=probed)
    version = ModelVersion(
        path=str(snapshot.path if path is None else path),
        resolved=str(snapshot.resolved),
        key=snapshot.key,
        mtime=snapshot.key.mtime_ns / 1e9,
        size=snapshot.size,
        sha256=snapshot.sha256,
        format=loaded.format,
        metadata=metadata,
        loaded_at=time.time(),
        load_seconds=time.perf_counter() - started,
    )
    return LiveModel(loaded.model, version, expect)
