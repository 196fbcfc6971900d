"""The private copies checkpoints are loaded from: one file per sha256 in a cache directory that
this process owns, removed when the model that maps a copy is gone (by a thread of its own) and
when the registry closes. A process killed with -9 leaves its directory behind: the next one to
start removes the directories of processes that no longer exist."""

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
from pathlib import Path

__all__ = ["PrivateCopies", "remove_stale_caches"]

#: A cache directory this package made: `ckptserve-copies-<pid>-<random>` in the temp dir.
_PREFIX = "ckptserve-copies-"
_OWNED = re.compile(rf"^{_PREFIX}(\d+)-")

#: Private copies in the cache are named by their sha256 (`.spool-*` while being written);
#: nothing else there is ours.
_CACHED = re.compile(r"^(\.?[0-9a-f]{64}|\.spool-)")


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
        if owned:
            remove_stale_caches()
        self.directory = Path(directory or tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self._reaper = _Reaper(self.directory)
        self._finalizer = weakref.finalize(self, _cleanup, self.directory, owned, self._reaper)

    def path_for(self, sha256: str) -> Path:
        """Where the copy of the bytes with this sha256 goes (`Source.fetch` writes it)."""
        return self.directory / sha256

    def spool_file(self) -> tuple[int, Path]:
        """A new temporary file in the cache to stream bytes into: (fd, path). `adopt` names it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".spool-")
        return fd, Path(tmp)

    def adopt(self, tmp: Path, sha256: str, size: int) -> Path:
        """Name a finished spool file by its sha256; return the copy's path. Where a copy of the
        same bytes is there already (a model that still maps it, a touch, a rollback), that file
        is kept and `tmp` removed, so its pages are not freed on the last unmap."""
        target = self.path_for(sha256)
        try:
            same = target.stat().st_size == size
        except OSError:
            same = False
        if same:
            _unlink(tmp)
        else:
            os.replace(tmp, target)
        return target

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


def remove_stale_caches(root: str | os.PathLike[str] | None = None) -> int:
    """Remove the cache directories that processes of this user left behind when they died (a
    `kill -9` leaves its copies); return how many. A directory whose process still runs, or one
    another user owns, is never touched."""
    base = Path(root or tempfile.gettempdir())
    removed = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(base):
            m = _OWNED.match(entry.name)
            if m is None or not entry.is_dir(follow_symlinks=False):
                continue
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_uid != os.getuid():
                    continue
                if _alive(int(m.group(1))):
                    continue
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True
