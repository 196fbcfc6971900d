"""What the rollout mechanisms cost on the request path (issue 14, item 8), in-process.

    .venv/bin/python benchmarks/bench_rollout.py [--blocks 30] [--requests 300]

HTTP req/s on this machine swings more than the 1 % being looked for, so the app is driven
in-process (as bench_batch_default.py does: `create_app`, the benchmark actor, TorchScript, one
ASGI call per request, torch threads 1) and its CPU time per `/rl/predict` request (c=1, one
state of 32 values; the request path as it is, rollout included) is set against the CPU time of
what the rollout adds to it, each piece called as the request path calls it, on the server's own
objects, in the same blocks (alternating, medians over the blocks):

    handle.buffer.record(rows)     the shadow states (--shadow-states 256, the default)
    runtime.ids.issue(sha256)      the signed request id every answer carries, and its header
    header scan                    the fast lane reading two more headers (X-Model-Version,
                                   X-Session-Id) over a request's usual ones: its scan now
                                   against the one before (each on fresh header objects)
    Canary.pick(sid)               which version answers, only with --canary-fraction > 0

It also prints the resident memory of one version of the benchmark actor (`model_bytes`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench_batch_default import _one, run_loop
from harness import machine, make_actor

OBS = 32


def _cpu_per_call(f: Callable[[], object], n: int) -> float:
    c0 = time.thread_time_ns()
    for _ in range(n):
        f()
    return (time.thread_time_ns() - c0) / n


_HEADERS = [(b"host", b"127.0.0.1:8000"), (b"accept", b"*/*"), (b"accept-encoding", b"gzip"),
            (b"connection", b"keep-alive"), (b"user-agent", b"python-httpx/0.28"),
            (b"content-length", b"200"), (b"content-type", b"application/json")]  # fmt: skip


def _scan_before(headers: list[tuple[bytes, bytes]]) -> object:
    length = authorization = header_length = None
    for key, value in headers:
        if key == b"content-length":
            length = value
        elif key == b"authorization":
            authorization = value
        elif key == b"inference-header-content-length":
            header_length = value
    return length, authorization, header_length


_READ = {b"content-length": 0, b"authorization": 1, b"inference-header-content-length": 2,
         b"x-model-version": 3, b"x-session-id": 4}  # fmt: skip


def _scan_now(headers: list[tuple[bytes, bytes]]) -> object:
    found: list[bytes | None] = [None, None, None, None, None]  # one slot per _READ entry
    read = _READ.get
    for key, value in headers:
        slot = read(key)
        if slot is not None:
            found[slot] = value
    return found


def _fresh(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The headers as new objects, as each request's are (a bytes object caches its hash)."""
    return [(bytes(bytearray(k)), v) for k, v in headers]


async def measure(blocks: int, requests: int) -> None:
    from ckptserve.rollout import Canary, CanaryConfig, model_bytes
    from ckptserve.server.app import create_app
    from ckptserve.server.settings import ModelSpec, Settings

    with tempfile.TemporaryDirectory(prefix="ckptserve-rollout-") as tmp:
        model = make_actor(Path(tmp) / "actor.pt")
        app = create_app(Settings(models=(ModelSpec(name="actor", path=str(model)),),
                                  log_level="warning"))  # fmt: skip
        body = json.dumps({"state": [0.1] * OBS}).encode()
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(app.app.router.lifespan_context(app.app))
            runtime = app.state.runtime
            handle = runtime.models["actor"]
            registry = handle.registry
            deadline = time.monotonic() + 60
            while registry.current is None:
                if time.monotonic() > deadline:
                    raise RuntimeError("the model did not load within 60 s")
                await asyncio.sleep(0.01)
            live = registry.current
            buffer, ids = handle.buffer, runtime.ids
            assert buffer is not None and buffer.size == 256, "the default --shadow-states"
            running = Canary(CanaryConfig(fraction=0.1))
            running.start(live, live)
            rows = [[0.1] * OBS]
            sha = live.version.sha256
            calls: dict[str, Callable[[], object]] = {
                "handle.buffer.record(rows)": lambda: buffer.record(rows),
                "runtime.ids.issue + header": lambda: ids.issue(sha).encode(),
                "header scan (before)": lambda: _scan_before(_fresh(_HEADERS)),
                "header scan (now)": lambda: _scan_now(_fresh(_HEADERS)),
                "Canary.pick(session) (--canary-fraction > 0)": lambda: running.pick("ep-17"),
            }
            loop = asyncio.get_running_loop()
            for _ in range(requests):  # warm-up
                await loop.create_task(_one(app, "/rl/predict", body))
            per_request: list[float] = []
            per_call: dict[str, list[float]] = {name: [] for name in calls}
            for _ in range(blocks):
                c0 = time.thread_time_ns()
                for _ in range(requests):
                    await loop.create_task(_one(app, "/rl/predict", body))
                per_request.append((time.thread_time_ns() - c0) / requests)
                for name, f in calls.items():
                    per_call[name].append(_cpu_per_call(f, 20_000))
            resident = model_bytes(live.model)
    request = statistics.median(per_request)
    ns = {name: statistics.median(values) for name, values in per_call.items()}
    scan = ns.pop("header scan (now)") - ns.pop("header scan (before)")
    ns = {**dict(list(ns.items())[:2]), "header scan: the two added headers": scan,
          **dict(list(ns.items())[2:])}  # fmt: skip
    print(f"Machine: {machine()}; {blocks} blocks of {requests} requests\n")
    print(f"/rl/predict in-process, CPU per request (c=1): {request / 1e3:.1f} µs\n")
    print("| call | CPU per call | share of a request |\n|---|---|---|")
    every = 0.0
    for name, value in ns.items():
        if "canary" not in name:
            every += value
        print(f"| {name} | {value:.0f} ns | {value / request:.2%} |")
    print(f"| every request (record + id + scan) | {every:.0f} ns | {every / request:.2%} |")
    print("\n(the id's field in the response body adds what orjson takes for one ~60-byte string)")
    print(f"\nOne resident version of the benchmark actor: {resident} bytes")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--blocks", type=int, default=30)
    p.add_argument("--requests", type=int, default=300)
    args = p.parse_args()
    os.environ.setdefault("CKPTSERVE_TORCH_THREADS", "1")
    run_loop(measure(args.blocks, args.requests))


if __name__ == "__main__":
    sys.exit(main())
