"""Dynamic batching: concurrent requests for one model answered by one forward pass.

On by default (`--batch-max-size 32`; 1 turns it off). A validated request hands its
state tensor to the model's `Batcher` and awaits its rows of the result. The first request of a
batch schedules a flush on the event loop (`call_soon`, or `call_later(max_wait)`): every request
the loop has already read joins it, so the batch grows with the load by itself and a lone request
waits one loop turn, not a timer. Under light load (the last batch held one request) requests
skip the queue and run at once, all but every `PROBE`-th, which queues to find out whether others
join it: at concurrency 1 batching costs nothing. A batch reaching `max_size` rows flushes at
once. The flush runs one forward pass per live version among the waiting requests (a swap in the
middle of a batch never mixes versions), on the event loop as the unbatched path does, or in a
worker thread when it is expected to take longer than `OFF_LOOP_SECONDS` (`ForwardCost`, both
paths).

A pass that fails (the model raises for one client's input) is tried again in two halves, and so
on down to single requests: only the requests whose input fails get the error, and one bad
request in a batch of N costs about 2 log2(N) extra passes, not N.

Worth it for models whose forward pass is memory-bound at batch 1 (large hidden layers): one pass
over the weights serves the whole batch. For tiny models the per-request work around the forward
pass dominates and batching buys little; `benchmarks/bench_batching.py` measures both.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import anyio.to_thread
import torch

if TYPE_CHECKING:
    from ..registry import LiveModel

__all__ = [
    "FORWARD_COST",
    "OFF_LOOP_ROWS",
    "OFF_LOOP_SECONDS",
    "Batcher",
    "Forward",
    "ForwardCost",
    "pass_clock",
]

#: Under light load (a batch of one), this many requests run at once before one queues again.
PROBE = 8

#: A forward pass over fewer states than this always runs on the event loop. Measured on the
#: 2-core machine (torch threads 1, loaded): the benchmark actor (32-256-256-1) takes 0.1 ms for
#: 64 states, less than a thread hop costs it (64-state requests: 25-35 % fewer per second off
#: the loop); the 12.7 MB actor (1024 x 4) 6 ms for 64 states and 0.6 s for 4096, which on the
#: loop held every other request.
OFF_LOOP_ROWS = 64
#: A pass of OFF_LOOP_ROWS states or more runs in a worker thread unless the model's measured
#: time per state says it takes less than this.
OFF_LOOP_SECONDS = 0.001
#: Passes of fewer states than this are not timed: their fixed cost hides the cost per state.
_TIMED_ROWS = 16
#: The models whose cost is remembered (the oldest is forgotten first).
_REMEMBERED = 64

#: `forward(live, x)` -> a `[len(x), action_dim]` tensor; raises for a bad input or output.
Forward = Callable[["LiveModel", torch.Tensor], torch.Tensor]


class ForwardCost:
    """How long a model's forward pass takes per state, timed on the passes it runs, and from it
    which passes leave the event loop: OFF_LOOP_ROWS states or more whose expected time is over
    `budget` seconds, or whose model has not been timed yet (a first large pass goes to a thread).

    Keyed by the model object's id (a model collected and another given its id inherits its
    estimate until the next timed pass corrects it: the decision is only where a pass runs).
    """

    def __init__(self, budget: float = OFF_LOOP_SECONDS, min_rows: int = OFF_LOOP_ROWS) -> None:
        self.budget = budget
        self.min_rows = min_rows
        self._per_row: dict[int, float] = {}
        self._lock = threading.Lock()  # passes are timed on the loop and in worker threads

    def off_loop(self, live: object, rows: int) -> bool:
        if rows < self.min_rows:
            return False
        per_row = self._per_row.get(id(getattr(live, "model", live)))
        return per_row is None or rows * per_row > self.budget

    def timed(self, forward: Forward) -> Forward:
        """`forward`, timing the passes of `_TIMED_ROWS` states or more."""

        def run(live: LiveModel, x: torch.Tensor) -> torch.Tensor:
            rows = x.shape[0]
            if rows < _TIMED_ROWS:
                return forward(live, x)
            clock = pass_clock()
            started = clock()
            out = forward(live, x)
            self.record(live, rows, clock() - started)
            return out

        return run

    def record(self, live: object, rows: int, seconds: float) -> None:
        """One pass of `rows` states took `seconds` (passes of fewer than 16 are not counted)."""
        if rows < _TIMED_ROWS:
            return
        key = id(getattr(live, "model", live))
        per_row = seconds / rows
        with self._lock:
            old = self._per_row.pop(key, None)  # re-inserted: the newest is forgotten last
            self._per_row[key] = per_row if old is None else old + 0.25 * (per_row - old)
            if len(self._per_row) > _REMEMBERED:
                del self._per_row[next(iter(self._per_row))]


def pass_clock() -> Callable[[], float]:
    """The clock a pass is timed with: this thread's CPU time when torch computes in the calling
    thread alone (a pass in a worker thread then does not count the time it waited for the GIL
    while the loop was busy, which would keep a quick model off the loop for as long as the load
    lasts), else the wall clock."""
    return time.thread_time if torch.get_num_threads() == 1 else time.perf_counter


#: The server's one cost table: a model's cost is the same in every handle and batcher.
FORWARD_COST = ForwardCost()


class _Item:
    __slots__ = ("future", "live", "n", "x")

    def __init__(self, live: LiveModel, x: torch.Tensor, n: int,
                 future: asyncio.Future[torch.Tensor]) -> None:  # fmt: skip
        self.live = live
        self.x = x
        self.n = n
        self.future = future


class Batcher:
    """Gathers concurrent forward passes of one model into one (per event loop).

    Args:
        max_size: most rows (states) in one forward pass; a request with more runs alone.
        max_wait: seconds the first request of a batch waits for others (0: one loop turn).
        cost: decides which passes run in a worker thread (default: the server's FORWARD_COST).
    """

    def __init__(self, max_size: int, max_wait: float = 0.0, *,
                 cost: ForwardCost | None = None) -> None:  # fmt: skip
        if max_size < 1 or max_wait < 0:
            raise ValueError("max_size must be >= 1 and max_wait >= 0")
        self.max_size = max_size
        self.max_wait = max_wait
        self.cost = cost if cost is not None else FORWARD_COST
        self._off_loop: set[asyncio.Task[None]] = set()
        self._pending: list[_Item] = []
        self._rows = 0
        self._scheduled: asyncio.Handle | asyncio.TimerHandle | None = None
        self.batches = 0  # forward passes run, for tests and benchmarks
        self.requests = 0
        self.queued = 0  # requests that went through the queue (not run at once)
        self._inline = 0  # requests that may still skip the queue before the next probe

    async def run(self, live: LiveModel, x: torch.Tensor, forward: Forward) -> torch.Tensor:
        """`forward(live, x)`, possibly computed as part of a larger batch."""
        n = x.shape[0]
        if n >= self.max_size or (self._inline > 0 and not self._pending):
            # Alone: too big to share, or the load is light (the last batch held one request
            # and nobody is waiting): no loop turn. Every PROBE-th request queues to sample it.
            self._inline -= 1
            self.batches += 1
            self.requests += 1
            if self.cost.off_loop(live, n):
                return await anyio.to_thread.run_sync(forward, live, x)
            return forward(live, x)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[torch.Tensor] = loop.create_future()
        self.queued += 1
        self._pending.append(_Item(live, x, n, future))
        self._rows += n
        if self._rows >= self.max_size:
            self._flush(forward)
        elif self._scheduled is None:
            if self.max_wait > 0:
                self._scheduled = loop.call_later(self.max_wait, self._flush, forward)
            else:
                self._scheduled = loop.call_soon(self._flush, forward)
        return await future

    def _take(self) -> list[_Item]:
        """The oldest waiting requests, up to max_size rows (at least one)."""
        pending, taken, rows = self._pending, 0, 0
        while taken < len(pending) and (taken == 0 or rows + pending[taken].n <= self.max_size):
            rows += pending[taken].n
            taken += 1
        batch = pending[:taken]
        del pending[:taken]
        self._rows -= rows
        return batch

    def _flush(self, forward: Forward) -> None:
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        batch = [item for item in self._take() if not item.future.done()]  # done: client gone
        self._inline = PROBE if len(batch) <= 1 and not self._pending else 0
        if self._pending:  # more than one batch was waiting: the rest goes next loop turn
            self._scheduled = asyncio.get_running_loop().call_soon(self._flush, forward)
        groups: dict[int, list[_Item]] = {}
        for item in batch:
            groups.setdefault(id(item.live), []).append(item)
        for items in groups.values():
            self.requests += len(items)
            if self.cost.off_loop(items[0].live, sum(item.n for item in items)):
                task = asyncio.ensure_future(self._run_off_loop(items, forward))
                self._off_loop.add(task)  # held until done: the loop keeps only weak references
                task.add_done_callback(partial(self._done, items))
                continue
            work = [items]
            while work:
                group = work.pop()
                work.extend(self._settle(group, *_attempt(forward, group)))
                self.batches += 1

    def _done(self, items: list[_Item], task: asyncio.Task[None]) -> None:
        self._off_loop.discard(task)
        for item in items:  # cancelled (shutdown): no request waits forever
            item.future.cancel()

    async def _run_off_loop(self, items: list[_Item], forward: Forward) -> None:
        """`_flush`'s passes for one version, each in a worker thread."""
        work = [items]
        while work:
            group = work.pop()
            work.extend(
                self._settle(group, *await anyio.to_thread.run_sync(_attempt, forward, group))
            )
            self.batches += 1

    def _settle(self, items: list[_Item], out: torch.Tensor | None,
                error: Exception | None) -> list[list[_Item]]:  # fmt: skip
        """Hand each request its rows of `out`; after a failed pass, the two halves to try again
        (one request's bad input must not fail the others), or the error to a lone request."""
        if error is not None:
            if len(items) > 1:
                half = len(items) // 2
                return [items[half:], items[:half]]  # popped last first: oldest half first
            if not items[0].future.done():
                items[0].future.set_exception(error)
            return []
        assert out is not None
        start = 0
        for item in items:
            stop = start + item.n
            if not item.future.done():
                item.future.set_result(out if len(items) == 1 else out[start:stop])
            start = stop
        return []


def _attempt(forward: Forward, items: list[_Item]) -> tuple[torch.Tensor | None, Exception | None]:
    """One forward pass over `items`' rows: its output, or the error it raised."""
    try:
        x = items[0].x if len(items) == 1 else torch.cat([item.x for item in items])
        return forward(items[0].live, x), None
    except Exception as exc:
        return None, exc
