"""What each piece of a request costs (issue 16, item 1): the server's app driven in-process, as
`bench_batch_default.py` drives it, with one piece at a time switched off.

    .venv/bin/python benchmarks/bench_parts.py [--requests 2000] [--blocks 12] [--routes rl,oip] [--docs]

One app (`create_app`, the defaults, the benchmark actor), one event loop (uvloop). A block is
`--requests` requests from 64 closed-loop tasks; blocks of the variants alternate (A B C ... C B
A ...), and each variant's figure is the median over its blocks of the CPU time per request and
the median ratio to the adjacent "as shipped" blocks. A variant replaces one piece by a no-op
(the Prometheus request metrics, the live page's series, the signed request id, the shadow
buffer, the look at the source) or sets the garbage collector back to Python's default
threshold, so its ratio says what that piece costs: 0.95 means 5 % of the request's cost in the
app. What the app does not spend (uvicorn, the kernel, the client) is not in these figures.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_batch_default import OBS, _client, run_loop
from harness import machine, make_actor, now_utc, save_results, table, versions


def _patch(owner: Any, name: str, value: Any) -> tuple[Callable[[], None], Callable[[], None]]:
    old = getattr(owner, name)
    return (lambda: setattr(owner, name, value)), (lambda: setattr(owner, name, old))


def variants() -> dict[str, tuple[Callable[[], None], Callable[[], None]]]:
    from ckptserve import ModelRegistry
    from ckptserve.rollout.feedback import RequestIds
    from ckptserve.rollout.shadow import StateBuffer
    from ckptserve.server.live import LiveRecorder
    from ckptserve.server.metrics import Metrics

    shipped = gc.get_threshold()

    def nothing() -> None:
        pass

    return {
        "as shipped": (nothing, nothing),
        "no request metrics (Prometheus)": _patch(Metrics, "observe", lambda *a: None),
        "no live page series": _patch(LiveRecorder, "record", lambda *a: None),
        "no signed request id": _patch(RequestIds, "issue", lambda self, sha: "id"),
        "no shadow buffer": _patch(StateBuffer, "record", lambda *a: None),
        "no look at the source": _patch(ModelRegistry, "stale", lambda self: False),
        "gc at Python's default threshold": (
            lambda: gc.set_threshold(700, *shipped[1:]),
            lambda: gc.set_threshold(*shipped),
        ),
    }


async def measure(model: Path, path: str, body: bytes, requests: int,
                  blocks: int) -> dict[str, list[float]]:  # fmt: skip
    from ckptserve.server.app import create_app
    from ckptserve.server.settings import ModelSpec, Settings

    app = create_app(Settings(models=(ModelSpec(name="actor", path=str(model)),),
                              log_level="warning"))  # fmt: skip
    table_ = variants()
    cpu: dict[str, list[float]] = {name: [] for name in table_}
    async with app.app.router.lifespan_context(app.app):
        deadline = time.monotonic() + 60
        while app.state.runtime.models["actor"].registry.current is None:
            if time.monotonic() > deadline:
                raise RuntimeError("the model did not load within 60 s")
            await asyncio.sleep(0.01)
        names = list(table_)
        for i in range(blocks + 1):  # block 0 warms up
            for name in names if i % 2 == 0 else names[::-1]:
                on, off = table_[name]
                on()
                left = [requests]
                started = time.process_time()
                try:
                    bad = sum(await asyncio.gather(*(_client(app, path, body, left)
                                                     for _ in range(64))))  # fmt: skip
                finally:
                    off()
                if bad:
                    raise RuntimeError(f"{bad} requests on {path} did not answer 200")
                if i:
                    cpu[name].append((time.process_time() - started) / requests * 1e6)
    return cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=2000, help="requests per block")
    p.add_argument("--blocks", type=int, default=12, help="blocks per variant")
    p.add_argument("--routes", default="rl,oip")
    p.add_argument("--out", help="write OUT.md and OUT.json (default: benchmarks/results/parts)")
    p.add_argument("--docs", action="store_true",
                   help="also write the figures into docs/benchmarks.md (not for smoke runs)")  # fmt: skip
    args = p.parse_args()
    smoke = args.requests < 1000 or args.blocks < 6
    if args.docs and smoke:
        sys.exit("--docs: a smoke run's figures do not go into the docs")
    os.environ.setdefault("CKPTSERVE_TORCH_THREADS", "1")
    state = [0.1] * OBS
    all_routes = {
        "rl": ("/rl/predict", "/rl/predict", {"state": state}),
        "oip": ("OIP infer", "/v2/models/actor/infer", {"inputs": [
            {"name": "state", "shape": [1, OBS], "datatype": "FP32", "data": state}]}),
    }  # fmt: skip
    started = time.monotonic()
    rows, raw = [], {}
    with tempfile.TemporaryDirectory(prefix="ckptserve-parts-") as tmp:
        model = make_actor(Path(tmp) / "actor.pt")
        for key in args.routes.split(","):
            label, path, payload = all_routes[key]
            cpu = run_loop(measure(model, path, json.dumps(payload).encode(), args.requests,
                                   args.blocks))  # fmt: skip
            raw[label] = cpu
            base = cpu["as shipped"]
            for name, values in cpu.items():
                ratios = [v / b for v, b in zip(values, base, strict=True)]
                rows.append([label, name, f"{statistics.median(values):.1f}",
                             "1" if name == "as shipped" else f"{statistics.median(ratios):.3f}"])  # fmt: skip
    text = "\n".join([
        "# What each piece of a request costs (in-process, c=64)" + (" — SMOKE RUN" if smoke else ""), "",
        f"Measured {now_utc()} by `python benchmarks/bench_parts.py {' '.join(sys.argv[1:])}` "
        f"({time.monotonic() - started:.0f} s); {machine()}; {versions()}. {args.blocks} blocks "
        f"per variant, {args.requests} requests per block from 64 tasks.", "",
        table(["route", "variant", "CPU µs/request", "÷ as shipped"], rows), "",
        "A ratio under 1 is what the piece switched off costs (0.95: 5 % of the app's work per "
        "request); over 1, the piece saves more than it costs.", ""])  # fmt: skip
    print(text)
    save_results("parts", args.out, smoke, text, {"cpu_us": raw}, docs=args.docs)


if __name__ == "__main__":
    main()
