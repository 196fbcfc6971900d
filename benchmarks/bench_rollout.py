"""What the rollout mechanisms cost on the request path (issue 14, item 8), in-process.

    .venv/bin/python benchmarks/bench_rollout.py [--blocks 30] [--requests 300]

HTTP req/s on this machine swings more than the 1 % being looked for, so the app is driven
in-process (as bench_batch_default.py does: `create_app`, the benchmark actor, TorchScript, one
ASGI call per request, torch threads 1) and its CPU time per `/rl/predict` request (c=1, one
state of 32 values) is set against the CPU time of the calls a request would add, measured in
the same blocks (alternating, medians over the blocks):

    StateBuffer.record(rows)       the shadow states (--shadow-states 256)
    RequestIds.issue(sha256)       the signed request id every response carries
    Canary.route() / route(sid)    which version answers (no canary; a canary with a session)

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


async def measure(blocks: int, requests: int) -> None:
    from ckptserve.rollout import Canary, CanaryConfig, RequestIds, StateBuffer, model_bytes
    from ckptserve.server.app import create_app
    from ckptserve.server.settings import ModelSpec, Settings

    with tempfile.TemporaryDirectory(prefix="ckptserve-rollout-") as tmp:
        model = make_actor(Path(tmp) / "actor.pt")
        app = create_app(Settings(models=(ModelSpec(name="actor", path=str(model)),),
                                  log_level="warning"))  # fmt: skip
        body = json.dumps({"state": [0.1] * OBS}).encode()
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(app.app.router.lifespan_context(app.app))
            registry = app.state.runtime.models["actor"].registry
            deadline = time.monotonic() + 60
            while registry.current is None:
                if time.monotonic() > deadline:
                    raise RuntimeError("the model did not load within 60 s")
                await asyncio.sleep(0.01)
            live = registry.current
            buffer, ids = StateBuffer(256), RequestIds(os.urandom(32))
            idle, running = Canary(CanaryConfig(fraction=0.1)), Canary(CanaryConfig(fraction=0.1))
            running.start(live, live)
            rows = [[0.1] * OBS]
            sha = live.version.sha256
            calls: dict[str, Callable[[], object]] = {
                "StateBuffer.record": lambda: buffer.record(rows),
                "RequestIds.issue": lambda: ids.issue(sha),
                "Canary.route() (none running)": idle.route,
                "Canary.route(session) (running)": lambda: running.route("episode-17"),
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
    print(f"Machine: {machine()}; {blocks} blocks of {requests} requests\n")
    print(f"/rl/predict in-process, CPU per request (c=1): {request / 1e3:.1f} µs\n")
    print("| call | CPU per call | share of a request |\n|---|---|---|")
    every = 0.0
    for name, values in per_call.items():
        ns = statistics.median(values)
        if name != "Canary.route(session) (running)":
            every += ns
        print(f"| {name} | {ns:.0f} ns | {ns / request:.2%} |")
    print(f"| every request (record + issue + route) | {every:.0f} ns | {every / request:.2%} |")
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
