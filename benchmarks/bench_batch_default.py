"""What dynamic batching on by default would cost (issue 16, item 1): the server's app driven
in-process, no sockets, today's default (`batch_max_size=1`) against `--batch-max-size 32`.

    .venv/bin/python benchmarks/bench_batch_default.py [--requests 3000] [--pairs 7] [--routes rl,oip]

HTTP on a shared 2-core machine swings ±15 % from run to run, more than the 5 % being looked
for; in-process, the per-request cost of the app is measured without the kernel, uvicorn and
the load generator. `create_app` with the benchmark actor (`make_actor.py`, TorchScript), its
lifespan run as uvicorn runs it, on uvloop, torch threads 1. Each request is one ASGI call in a
task of its own (as uvicorn runs each request), body `{"state": [32 floats]}` on `/rl/predict`
or the same state as OIP infer.

c=1: `--requests` requests one after the other; the figure is the mean time per request. c=64:
64 tasks that each send their next request when the previous answer came, `--requests` in all;
the figure is requests per second. Each pair builds and starts one app per configuration, in
alternating order, and measures both; the tables give the median over `--pairs` pairs of each
figure and of the per-pair ratio (batching on ÷ off).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import (
    machine,
    make_actor,
    now_utc,
    results_path,
    table,
    versions,
    write_doc_block,
)

OBS = 32
CONFIGS = {"default (batch_max_size 1)": 1, "--batch-max-size 32": 32}


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


async def measure(model: Path, batch: int, routes: dict[str, tuple[str, bytes]],
                  requests: int) -> dict[str, dict[str, float]]:  # fmt: skip
    from ckptserve.server.app import create_app
    from ckptserve.server.settings import ModelSpec, Settings

    settings = Settings(models=(ModelSpec(name="actor", path=str(model)),), batch_max_size=batch,
                        log_level="warning")  # fmt: skip
    app = create_app(settings)
    loop = asyncio.get_running_loop()
    out: dict[str, dict[str, float]] = {}
    async with app.router.lifespan_context(app):
        runtime = app.state.runtime
        deadline = time.monotonic() + 60
        while runtime.models["actor"].registry.current is None:
            if time.monotonic() > deadline:
                raise RuntimeError("the model did not load within 60 s")
            await asyncio.sleep(0.01)
        for route, (path, body) in routes.items():
            for _ in range(200):  # warm-up
                await loop.create_task(_one(app, path, body))
            bad = 0
            clock = time.perf_counter_ns
            t0 = clock()
            for _ in range(requests):
                bad += await loop.create_task(_one(app, path, body)) != 200
            c1 = (clock() - t0) / requests / 1e3

            left = [requests]
            t0 = clock()
            bad += sum(await asyncio.gather(*(_client(app, path, body, left) for _ in range(64))))
            c64 = requests / ((clock() - t0) / 1e9)
            if bad:
                raise RuntimeError(f"{bad} requests on {route} did not answer 200")
            out[route] = {"c1_us": c1, "c64_rps": c64}
    return out


def run_loop(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # the server falls back to asyncio the same way
        return asyncio.run(coro)
    return uvloop.run(coro)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=3000, help="requests per figure")
    p.add_argument("--pairs", type=int, default=7)
    p.add_argument("--routes", default="rl,oip")
    p.add_argument("--out", help="write OUT.md and OUT.json (default: benchmarks/results/batch_default; "
                   "a smoke run: $TMPDIR/ckptserve-smoke/batch_default)")  # fmt: skip
    p.add_argument("--docs", action="store_true",
                   help="also write the figures into docs/benchmarks.md (not for smoke runs)")  # fmt: skip
    args = p.parse_args()
    if args.docs and (args.requests < 1000 or args.pairs < 3):
        sys.exit("--docs: a smoke run's figures do not go into the docs")
    os.environ.setdefault("CKPTSERVE_TORCH_THREADS", "1")
    state = [0.1] * OBS
    all_routes = {
        "/rl/predict": ("/rl/predict", json.dumps({"state": state}).encode()),
        "OIP infer": ("/v2/models/actor/infer", json.dumps({"inputs": [
            {"name": "state", "shape": [1, OBS], "datatype": "FP32", "data": state}]}).encode()),
    }  # fmt: skip
    keys = {"rl": "/rl/predict", "oip": "OIP infer"}
    routes = {keys[k]: all_routes[keys[k]] for k in args.routes.split(",")}
    pairs: list[dict[str, dict[str, dict[str, float]]]] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ckptserve-batch-default-") as tmp:
        model = make_actor(Path(tmp) / "actor.pt")
        for i in range(args.pairs):
            order = list(CONFIGS.items())
            if i % 2:
                order.reverse()
            pair = {}
            for name, batch in order:
                pair[name] = run_loop(measure(model, batch, routes, args.requests))
            pairs.append(pair)
            print(f"pair {i + 1}/{args.pairs}: " + json.dumps(pair), file=sys.stderr, flush=True)
    off_name, on_name = list(CONFIGS)
    rows = []
    for route in routes:
        for name in CONFIGS:
            c1 = statistics.median(p[name][route]["c1_us"] for p in pairs)
            c64 = statistics.median(p[name][route]["c64_rps"] for p in pairs)
            if name == off_name:
                rows.append([route, name, f"{c1:.1f}", "0", f"{c64:,.0f}", "1.00", "-"])
                continue
            d1 = [p[on_name][route]["c1_us"] / p[off_name][route]["c1_us"] - 1 for p in pairs]
            r64 = [p[on_name][route]["c64_rps"] / p[off_name][route]["c64_rps"] for p in pairs]
            rows.append([route, name, f"{c1:.1f}", f"{statistics.median(d1):+.1%}",
                         f"{c64:,.0f}", f"{statistics.median(r64):.2f}",
                         ", ".join(f"{d:+.1%}" for d in d1)])  # fmt: skip
    smoke = args.requests < 1000 or args.pairs < 3
    text = "\n".join([
        "# Dynamic batching on by default? (in-process)" + (" — SMOKE RUN (tiny sizes)" if smoke else ""), "",
        f"Measured {now_utc()} by `python benchmarks/bench_batch_default.py {' '.join(sys.argv[1:])}` "
        f"({time.monotonic() - started:.0f} s); {machine()}; {versions()}. {args.pairs} pairs of "
        f"{args.requests} requests per figure.", "",
        table(["route", "config", "c=1 µs/request (median of pairs)", "c=1 vs default",
               "c=64 req/s", "c=64 vs default", "c=1 vs default, each pair"], rows), ""])  # fmt: skip
    print(text)
    out = results_path("batch_default", args.out, args.requests < 1000 or args.pairs < 3)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"when": now_utc(), "argv": sys.argv[1:],
                                                    "machine": machine(), "pairs": pairs}, indent=1))  # fmt: skip
    if args.docs:
        write_doc_block("bench-batch-default", text)


if __name__ == "__main__":
    main()
