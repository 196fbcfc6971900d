"""What the status page charts: per model, requests and latency per second over the last minutes,
and a sample of the actions served, tagged with the version that served them.

`LiveRecorder.record` is called once per model request, on the event loop, so it needs no lock.
Its memory is bounded: per model, a ring of `window` one-second latency histograms (sparse dicts
of at most `_BINS` + 1 keys, the extra one counting errors) and a deque of at most `max_samples`
actions. A call is O(1): one clock read, one log2, one or two dict increments; at most one call in
`sample_interval` seconds per model also parses its reply to keep the first action.
"""

from __future__ import annotations

import math
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from .errors import Reply

__all__ = ["LiveRecorder"]

_PER_OCTAVE = 8  # latency resolution: 2 ** (1/8) = 9 % per histogram bin
_BINS = 40 * _PER_OCTAVE  # 1 µs to ~13 days: nothing falls off the end
_ERRORS = -1  # the histogram key that counts replies with a status >= 400
_MAX_ACTION_VALUES = 16
_log2 = math.log2


def _bin_ms(b: int) -> float:
    """A bin's geometric middle, in milliseconds."""
    return float(2 ** ((b + 0.5) / _PER_OCTAVE) / 1000.0)


def _summary(hist: dict[int, int]) -> tuple[int, float, float]:
    """(requests, p50 ms, p99 ms) of one second's histogram."""
    bins = sorted(b for b in hist if b != _ERRORS)
    count = sum(hist[b] for b in bins)
    want50, want99 = 0.5 * count, 0.99 * count
    p50 = p99 = 0.0
    seen = 0
    for b in bins:
        seen += hist[b]
        if not p50 and seen >= want50:
            p50 = _bin_ms(b)
        if seen >= want99:
            p99 = _bin_ms(b)
            break
    return count, p50, p99


class _Series:
    """One model's ring of one-second latency histograms and its action samples."""

    __slots__ = ("hist", "hists", "next_sample", "samples", "second", "seconds")

    def __init__(self, window: int, max_samples: int) -> None:
        self.seconds = [-1] * window  # the epoch second each slot holds
        self.hists: list[dict[int, int]] = [{} for _ in range(window)]
        self.second = -1
        self.hist = self.hists[0]  # the current second's histogram
        self.samples: deque[tuple[float, str, list[float]]] = deque(maxlen=max_samples)
        self.next_sample = 0.0

    def begin(self, second: int) -> None:
        i = second % len(self.seconds)
        self.seconds[i] = self.second = second
        self.hists[i] = self.hist = {}


class LiveRecorder:
    """Requests per second, p50/p99 and sampled actions per model, for the status page.

    Args:
        window: seconds of history kept (and charted).
        sample_interval: at most one action is kept per model in this many seconds.
        max_samples: actions kept per model (the oldest are dropped).
        clock: the wall clock, in seconds since the epoch.

    Example:
        >>> recorder = LiveRecorder(window=60)
        >>> recorder.record("actor", 200, 0.0004, None)
        >>> recorder.snapshot("actor")["requests"]["count"][-1]
        1
    """

    def __init__(
        self,
        *,
        window: int = 300,
        sample_interval: float = 0.5,
        max_samples: int = 600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if window < 1 or max_samples < 1 or sample_interval < 0:
            raise ValueError("window and max_samples must be >= 1, sample_interval >= 0")
        self.window = window
        self.sample_interval = sample_interval
        self.max_samples = max_samples
        self._clock = clock
        self._series: dict[str, _Series] = {}

    def record(self, model: str, status: int, seconds: float, reply: Reply | None) -> None:
        """Count one answered request for `model` that took `seconds`; `reply` may give an action."""
        series = self._series.get(model)
        if series is None:
            series = self._series[model] = _Series(self.window, self.max_samples)
        now = self._clock()
        second = int(now)
        if second != series.second:
            series.begin(second)
        us = seconds * 1e6
        b = int(_log2(us) * _PER_OCTAVE) if us > 1.0 else 0
        if b >= _BINS:
            b = _BINS - 1
        hist = series.hist
        hist[b] = hist.get(b, 0) + 1
        if status >= 400:
            hist[_ERRORS] = hist.get(_ERRORS, 0) + 1
        elif status == 200 and now >= series.next_sample and reply is not None:
            series.next_sample = now + self.sample_interval
            sample = _first_action(reply)
            if sample is not None:
                series.samples.append((now, *sample))

    def snapshot(self, model: str, now: float | None = None) -> dict[str, Any]:
        """The last `window` seconds for `model` (oldest first) and its sampled actions."""
        now = self._clock() if now is None else now
        end = int(now)
        start = end - self.window + 1
        count = [0] * self.window
        errors = [0] * self.window
        p50: list[float | None] = [None] * self.window
        p99: list[float | None] = [None] * self.window
        series = self._series.get(model)
        samples: list[dict[str, Any]] = []
        if series is not None:
            for second, hist in zip(series.seconds, series.hists, strict=True):
                if start <= second <= end and hist:
                    at = second - start
                    errors[at] = hist.get(_ERRORS, 0)
                    count[at], p50[at], p99[at] = _summary(hist)
            samples = [
                {"at": at, "version": version, "action": action}
                for at, version, action in series.samples
                if at >= start
            ]
        return {
            "requests": {"start": start, "count": count, "errors": errors,
                         "p50_ms": p50, "p99_ms": p99},
            "actions": samples,
        }  # fmt: skip


def _first_action(reply: Reply) -> tuple[str, list[float]] | None:
    """The served version and the first action of a successful predict or infer reply."""
    headers = dict(reply.headers)
    version = headers.get(b"x-model-version", b"").decode("latin-1")
    head_length = headers.get(b"inference-header-content-length")
    body = reply.body
    try:
        head = body[: int(head_length)] if head_length is not None else body
        doc = orjson.loads(head)
        row: Any
        if "action" in doc:
            row = doc["action"]
        elif "actions" in doc:
            row = doc["actions"][0]
        elif isinstance(doc.get("outputs"), dict):  # named outputs: the first one
            row = next(iter(doc["outputs"].values()))
            row = row[0] if row and isinstance(row[0], list) else row
        else:
            out = doc["outputs"][0]
            width = int(out["shape"][-1])
            if "data" in out:
                row = out["data"][:width]
            else:
                tail = memoryview(body)[len(head) : len(head) + 4 * width]
                row = list(struct.unpack(f"<{len(tail) // 4}f", tail))
    except (ValueError, KeyError, TypeError, IndexError, StopIteration):
        return None
    if type(row) is not list:
        row = [row]
    values = [float(v) for v in row[:_MAX_ACTION_VALUES] if isinstance(v, (int, float))]
    return (version, values) if values else None
