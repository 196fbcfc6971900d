"""What dynamic batching on by default costs (issue 16, item 1): the server's app driven
in-process, no sockets, unbatched (`--batch-max-size 1`, the default before 0.2.0) against the
default since then, `--batch-max-size 32`.

    .venv/bin/python benchmarks/bench_batch_default.py [--requests 500] [--blocks 40] [--routes rl,oip]

HTTP on a shared 2-core machine swings ±15 % from run to run, more than the 5 % being looked
for; in-process, the per-request cost of the app is measured without the kernel, uvicorn and
the load generator. Two apps (`create_app` with the benchmark actor, `make_actor.py`,
TorchScript), one per configuration, both started in one event loop (uvloop, their lifespans run
as uvicorn runs them, torch threads 1). Each request is one ASGI call in a task of its own (as
uvicorn runs each request), body `{"state": [32 floats]}` on `/rl/predict` or the same state as
OIP infer.

A block: `--requests` requests one after the other (c=1: CPU time and wall time per request),
then `--requests` from 64 closed-loop tasks (c=64: req/s). Blocks alternate between the two
apps (A B B A A B ...), so slow drift on a shared machine reaches both alike; the tables give the
median over `--blocks` blocks and the median of the ratios of adjacent blocks (on ÷ off).
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
from typing import Any

from harness import machine, make_actor, now_utc, save_results, table, versions

OBS = 32
#: name -> (batch_max_size, the batcher's PROBE or None for the shipped value)
CONFIGS: dict[str, tuple[int, int | None]] = {
    "--batch-max-size 1 (unbatched)": (1, None),
    "--batch-max-size 32 (the default)": (32, None),
}


def _request(path: str, body: bytes) -> tuple[dict[str, Any], Callable[[], Any]]:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000),
        "headers": [(b"host", b"bench"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    }  # fmt: skip
    message = {"type": "http.request", "body": body, "more_body": False}

    async def receive() -> dict[str, Any]:
        return message

    return scope, receive


async def _one(app: Any, path: str, body: bytes) -> int:
    scope, receive = _request(path, body)
    status = 0

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def _client(app: Any, path: str, body: bytes, left: list[int]) -> int:
    """A closed-loop client: its next request when the previous answer came, while any are left."""
    loop = asyncio.get_running_loop()
    errors = 0
    while left[0] > 0:
        left[0] -= 1
        errors += await loop.create_task(_one(app, path, body)) != 200
    return errors


async def _block(app: Any, path: str, body: bytes, requests: int) -> dict[str, float]:
    """`requests` requests at c=1, then `requests` at c=64: time and CPU per request."""
    loop = asyncio.get_running_loop()
    clock, cpu = time.perf_counter_ns, time.process_time_ns
    bad = 0
    t0, cpu0 = clock(), cpu()
    for _ in range(requests):
        bad += await loop.create_task(_one(app, path, body)) != 200
    c1, c1_cpu = (clock() - t0) / requests / 1e3, (cpu() - cpu0) / requests / 1e3
    left = [requests]
    t0, cpu0 = clock(), cpu()
    bad += sum(await asyncio.gather(*(_client(app, path, body, left) for _ in range(64))))
    c64, c64_cpu = requests / ((clock() - t0) / 1e9), (cpu() - cpu0) / requests / 1e3
    if bad:
        raise RuntimeError(f"{bad} requests on {path} did not answer 200")
    return {"c1_us": c1, "c1_cpu_us": c1_cpu, "c64_rps": c64, "c64_cpu_us": c64_cpu}


async def measure(model: Path, routes: dict[str, tuple[str, bytes]], requests: int,
                  blocks: int) -> list[dict[str, dict[str, dict[str, float]]]]:  # fmt: skip
    """Every app started in one event loop; blocks alternate between them (ABBA...), so slow
    drift on a shared machine reaches all alike."""
    from ckptserve.server import batching
    from ckptserve.server.app import create_app
    from ckptserve.server.settings import ModelSpec, Settings

    shipped_probe = batching.PROBE
    apps = {name: create_app(Settings(models=(ModelSpec(name="actor", path=str(model)),),
                                      batch_max_size=batch, log_level="warning"))
            for name, (batch, _) in CONFIGS.items()}  # fmt: skip
    out = []
    async with contextlib.AsyncExitStack() as stack:
        for app in apps.values():
            await stack.enter_async_context(app.app.router.lifespan_context(app.app))
        deadline = time.monotonic() + 60
        while any(a.state.runtime.models["actor"].registry.current is None for a in apps.values()):
            if time.monotonic() > deadline:
                raise RuntimeError("the model did not load within 60 s")
            await asyncio.sleep(0.01)
        for app in apps.values():
            for path, body in routes.values():
                await _block(app, path, body, 300)  # warm-up
        for i in range(blocks):
            names = list(apps) if i % 2 == 0 else list(reversed(apps))
            block: dict[str, dict[str, dict[str, float]]] = {}
            for name in names:
                # read at each flush: a module global, set for this app's block only
                batching.PROBE = CONFIGS[name][1] or shipped_probe
                block[name] = {route: await _block(apps[name], path, body, requests)
                               for route, (path, body) in routes.items()}  # fmt: skip
            out.append(block)
    batching.PROBE = shipped_probe
    return out


def _quartiles(values: list[float]) -> str:
    if len(values) < 4:
        return ", ".join(f"{v:+.1%}" for v in values)
    q1, _, q3 = statistics.quantiles(values, n=4)
    return f"{q1:+.1%} … {q3:+.1%}"


def run_loop(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # the server falls back to asyncio the same way
        return asyncio.run(coro)
    return uvloop.run(coro)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=500, help="requests per block and figure")
    p.add_argument("--blocks", type=int, default=40, help="blocks per configuration")
    p.add_argument("--routes", default="rl,oip")
    p.add_argument("--probes", default="",
                   help="also --batch-max-size 32 with the batcher probing every N+1-th request "
                        "under light load, for each N here (comma-separated; shipped: 8)")  # fmt: skip
    p.add_argument("--out", help="write OUT.md and OUT.json (default: benchmarks/results/batch_default; "
                   "a smoke run: $TMPDIR/ckptserve-smoke/batch_default)")  # fmt: skip
    p.add_argument("--docs", action="store_true",
                   help="also write the figures into docs/benchmarks.md (not for smoke runs)")  # fmt: skip
    args = p.parse_args()
    if args.docs and (args.requests < 200 or args.blocks < 10):
        sys.exit("--docs: a smoke run's figures do not go into the docs")
    os.environ.setdefault("CKPTSERVE_TORCH_THREADS", "1")
    for n in (int(x) for x in args.probes.split(",") if x):
        CONFIGS[f"--batch-max-size 32 (the default), PROBE={n}"] = (32, n)
    state = [0.1] * OBS
    all_routes = {
        "/rl/predict": ("/rl/predict", json.dumps({"state": state}).encode()),
        "OIP infer": ("/v2/models/actor/infer", json.dumps({"inputs": [
            {"name": "state", "shape": [1, OBS], "datatype": "FP32", "data": state}]}).encode()),
    }  # fmt: skip
    keys = {"rl": "/rl/predict", "oip": "OIP infer"}
    routes = {keys[k]: all_routes[keys[k]] for k in args.routes.split(",")}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ckptserve-batch-default-") as tmp:
        model = make_actor(Path(tmp) / "actor.pt")
        pairs = run_loop(measure(model, routes, args.requests, args.blocks))
    off_name = next(iter(CONFIGS))
    rows = []
    for route in routes:
        for name in CONFIGS:

            def med(key: str, name: str = name, route: str = route) -> float:
                return statistics.median(p[name][route][key] for p in pairs)

            def vs(key: str, name: str = name, route: str = route) -> list[float]:
                return [p[name][route][key] / p[off_name][route][key] - 1 for p in pairs]

            def extra(key: str, name: str = name, route: str = route) -> float:
                return statistics.median(
                    p[name][route][key] - p[off_name][route][key] for p in pairs
                )

            figures = [route, name, f"{med('c1_cpu_us'):.1f}", f"{med('c1_us'):.1f}",
                       f"{med('c64_rps'):,.0f}", f"{med('c64_cpu_us'):.1f}"]  # fmt: skip
            if name == off_name:
                rows.append([*figures, "0", "0", "0", "0", "-"])
                continue
            cpu1, wall1, rps64 = vs("c1_cpu_us"), vs("c1_us"), vs("c64_rps")
            rows.append([*figures, f"{extra('c1_cpu_us'):+.1f}", f"{statistics.median(cpu1):+.1%}", f"{statistics.median(wall1):+.1%}",
                         f"{statistics.median(rps64):+.1%}", _quartiles(cpu1)])  # fmt: skip
    smoke = args.requests < 200 or args.blocks < 10
    text = "\n".join([
        "# Dynamic batching on by default? (in-process)" + (" — SMOKE RUN (tiny sizes)" if smoke else ""), "",
        f"Measured {now_utc()} by `python benchmarks/bench_batch_default.py {' '.join(sys.argv[1:])}` "
        f"({time.monotonic() - started:.0f} s); {machine()}; {versions()}. {args.blocks} blocks per "
        f"configuration, {args.requests} requests per block and figure.", "",
        table(["route", "config", "c=1 CPU µs/request", "c=1 wall µs/request", "c=64 req/s",
               "c=64 CPU µs/request", "c=1 CPU µs vs unbatched", "c=1 CPU vs unbatched",
               "c=1 wall vs unbatched",
               "c=64 req/s vs unbatched", "c=1 CPU vs unbatched: quartiles of the block ratios"], rows), "",
        "CPU: the process's CPU time per request (what preemption by other work on the machine "
        "does not inflate); wall: elapsed time per request. Medians over the blocks; the "
        "differences are medians of the ratios of adjacent blocks.", ""])  # fmt: skip
    print(text)
    save_results("batch_default", args.out, smoke, text, {"pairs": pairs}, docs=args.docs,
                 block="bench-batch-default")  # fmt: skip


if __name__ == "__main__":
    main()
