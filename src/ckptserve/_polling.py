"""A token read by a thread of its own, so that a source's `token()` never waits for I/O.

A source on a network (an object store, an NFS mount) cannot be asked on the request path: a
HEAD costs milliseconds and a hung mount blocks a `stat` for minutes. `Poll` reads the token on a
daemon thread every `interval` seconds and keeps the last value read; `token()` returns it. A read
that fails keeps the last value and records why (the source's `health()`), and a read that hangs
holds up only that thread. A fetch that learns a fresher token (the manifest it just read) hands
it in with `offer`, and a poll that was already under way then does not overwrite it.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["PENDING", "Poll"]

#: The token before the first poll has answered: equal to nothing else, so a first look at the
#: source loads (the fetch reads the source itself) instead of calling it missing.
PENDING: Hashable = object()


class Poll:
    """Read `read()` every `interval` seconds on a daemon thread; `value` is the last result.

    Args:
        read: returns the token (None: nothing there); raising keeps the last token.
        interval: seconds between the end of one read and the start of the next.
        name: the thread's name.

    The thread holds the poll only by a weak reference: when the source that owns it is
    collected (or `close()` is called) the thread ends at its next wake-up.
    """

    def __init__(self, read: Callable[[], Hashable | None], interval: float, *, name: str) -> None:
        if interval <= 0:
            raise ValueError("a poll interval must be > 0")
        self.value: Hashable | None = PENDING
        self.interval = interval
        self._read = read
        # _lock guards value against a poll that started before an offer and ends after it.
        self._lock = threading.Lock()
        self._offers = 0
        self.polls = 0
        self.polled_at: float | None = None  # time.time() of the last read that answered
        self.error: str | None = None  # why the last read failed (None: it answered)
        self.error_at: float | None = None
        self.reading_since: float | None = None  # time.monotonic() of a read under way
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_run, args=(weakref.ref(self), self._stop, interval), name=name, daemon=True
        )
        weakref.finalize(self, self._stop.set)
        self._thread.start()

    def offer(self, value: Hashable | None) -> None:
        """Take a token learned another way (a fetch read the source): fresher than any poll
        that is under way now."""
        with self._lock:
            self._offers += 1
            self.value = value

    def poll_once(self) -> None:
        """One read, in the calling thread (the poll thread; tests step it by hand)."""
        with self._lock:
            offers = self._offers
        self.reading_since = time.monotonic()
        try:
            value = self._read()
        except Exception as exc:
            self.error, self.error_at = (
                " ".join(f"{type(exc).__name__}: {exc}".split()),
                time.time(),
            )
            return
        finally:
            self.reading_since = None
            self.polls += 1
        with self._lock:
            if self._offers == offers:
                self.value = value
            self.polled_at, self.error, self.error_at = time.time(), None, None

    def health(self) -> dict[str, Any]:
        """What status shows: when the source last answered, the last error, a read that hangs."""
        since = self.reading_since
        return {
            "interval": self.interval,
            "polls": self.polls,
            "polled_at": self.polled_at,
            "error": self.error,
            "error_at": self.error_at,
            "reading_for": None if since is None else round(time.monotonic() - since, 6),
        }

    def close(self) -> None:
        """Stop the thread at its next wake-up (a read under way is not interrupted)."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)


def _run(ref: weakref.ref[Poll], stop: threading.Event, interval: float) -> None:
    while not stop.is_set():
        poll = ref()
        if poll is None:
            return
        with contextlib.suppress(Exception):  # poll_once records errors: nothing may end the loop
            poll.poll_once()
        del poll
        if stop.wait(interval):
            return
