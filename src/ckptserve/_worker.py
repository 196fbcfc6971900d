"""The registry's background worker: one thread, started on first use, that runs one load at a
time at a lower CPU priority than the threads serving requests."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout

__all__ = ["BackgroundWorker"]


class BackgroundWorker:
    """Runs a function on its own thread, never two at once.

    Args:
        name: the thread's name prefix (`ckptserve-<model>`).
        nice: nice levels the thread runs below the process (Linux; 0 = the same).
    """

    def __init__(self, name: str, nice: int = 10) -> None:
        self._name = name
        self._nice = nice
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None
        self._closed = False

    @property
    def busy(self) -> bool:
        """A run is submitted and not finished."""
        pending = self._pending
        return pending is not None and not pending.done()

    def submit(self, run: Callable[[], None]) -> None:
        """Start `run` on the worker thread. Callers check `busy` first (under their own lock).
        After `close` (or at interpreter exit) nothing starts: what it would load, nobody keeps."""
        if self._closed:
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                1, thread_name_prefix=self._name, initializer=_yield_cpu, initargs=(self._nice,)
            )
        try:
            self._pending = self._executor.submit(run)
        except RuntimeError:  # shut down meanwhile: by close() in another thread, or at exit
            return

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no run is in flight; True if idle within `timeout`."""
        pending = self._pending
        if pending is None:
            return True
        try:
            pending.result(timeout)
        except FutureTimeout:
            return False
        return True

    def close(self, timeout: float | None = None) -> None:
        """Cancel what has not started and wait (at most `timeout` s) for what has."""
        self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            if self._pending is not None:
                wait([self._pending], timeout)


def _yield_cpu(nice: int) -> None:
    """Run background loads `nice` levels below the process (Linux sets it per thread; elsewhere
    a thread id is not a process id, so nothing is done). Where the cores are busy, the serving
    threads then get the CPU first; a load takes longer, requests do not wait for it."""
    if not nice or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
