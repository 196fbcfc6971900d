"""HTTP benchmarks against the peers, interleaved in one session (issue 6, goals 1, 2, 4, 5).

    .venv/bin/python benchmarks/bench_http.py [--rounds 2] [--duration 5] [--only peers,check,batch,workers]

Every server is pinned to CPU 1 and wrk to CPU 0, torch threads 1 everywhere, the benchmark actor
(`make_actor.py`, 32 -> 256 -> 256 -> 1). Each round runs every server once, in the same order; the
tables give the median over rounds and ratios against the model ceiling of the same session.
Prints markdown; `--json FILE` also writes the raw rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

from harness import (
    Row,
    Server,
    body_file,
    ckptserve_cmd,
    fmt_rate,
    fmt_time,
    machine,
    make_actor,
    median,
    table,
    uvicorn_cmd,
    workdir,
    wrk,
)

PORT = 8011
OBS = 32


def _peers(actor: Path) -> dict[str, tuple[list[str], str, dict[str, str]]]:
    env = {"MODEL": str(actor), "PORT": str(PORT)}
    url = f"http://127.0.0.1:{PORT}/rl/predict"
    return {
        "asgi-ceiling": (uvicorn_cmd("asgi_ceiling:app", PORT), url, env),
        "model-ceiling": (uvicorn_cmd("model_ceiling:app", PORT), url, env),
        "original-design": (uvicorn_cmd("seed_baseline:app", PORT), url, env),
        "litserve": ([sys.executable, "litserve_peer.py"], f"http://127.0.0.1:{PORT}/predict", env),
        "ckptserve": (ckptserve_cmd(str(actor), "--port", str(PORT)), url, {}),
    }


def _run(name: str, cmd: list[str], url: str, env: dict[str, str], body: Path,
         concurrencies: list[int], duration: float) -> list[Row]:  # fmt: skip
    here = Path(__file__).resolve().parent
    with Server(cmd, url, body.read_bytes(), env=env, cwd=here / "peers") as server:
        wrk(url, body, 8, 1.0)  # warm-up, not reported
        return [wrk(url, body, c, duration, name, server) for c in concurrencies]


def _collect(rows: list[Row]) -> dict[tuple[str, int], dict[str, float]]:
    by: dict[tuple[str, int], list[Row]] = defaultdict(list)
    for r in rows:
        by[(r.name, r.concurrency)].append(r)
    return {
        k: {
            "rps": median([r.rps for r in v]),
            "p50": median([r.p50 for r in v]),
            "p99": median([r.p99 for r in v]),
            "cpu_us": median([r.cpu_us for r in v]),
            "non2xx": sum(r.non2xx for r in v),
            "n": len(v),
        }
        for k, v in by.items()
    }


def peers(actor: Path, body: Path, rounds: int, duration: float,
          names: list[str] | None = None) -> tuple[str, list[Row]]:  # fmt: skip
    """Goal 1: /rl/predict at concurrency 1 and 64 against every peer."""
    rows: list[Row] = []
    specs = {k: v for k, v in _peers(actor).items() if not names or k in names}
    for _ in range(rounds):
        for name, (cmd, url, env) in specs.items():
            rows += _run(name, cmd, url, env, body, [1, 64], duration)
    med = _collect(rows)
    out = []
    for name in specs:
        for c in (1, 64):
            m, ceil = med[(name, c)], med[("model-ceiling", c)]
            out.append([name, c, fmt_rate(m["rps"]), fmt_time(m["p50"]), fmt_time(m["p99"]),
                        f"{m['rps'] / ceil['rps']:.2f}", f"{m['p50'] / ceil['p50']:.2f}",
                        f"{m['p99'] / ceil['p99']:.2f}", f"{m['cpu_us']:.0f}",
                        f"{m['cpu_us'] / ceil['cpu_us']:.2f}", int(m["non2xx"])])  # fmt: skip
    head = ["server", "c", "req/s", "p50", "p99", "req/s ÷ ceiling", "p50 ÷ ceiling",
            "p99 ÷ ceiling", "server CPU µs/req", "CPU ÷ ceiling", "non-2xx"]  # fmt: skip
    return table(head, out), rows


def check_cost(actor: Path, body: Path, rounds: int, duration: float) -> tuple[str, list[Row]]:
    """Goal 2: check_interval=0 (one os.stat per request) against the check disabled (inf)."""
    url = f"http://127.0.0.1:{PORT}/rl/predict"
    variants = {"check-interval 0": "0", "check-interval inf (off)": "inf"}
    rows: list[Row] = []
    for _ in range(rounds):
        for name, value in variants.items():
            cmd = ckptserve_cmd(str(actor), "--port", str(PORT), "--check-interval", value)
            rows += _run(name, cmd, url, {}, body, [1, 64], duration)
    med = _collect(rows)
    out = []
    for c in (1, 64):
        on, off = med[("check-interval 0", c)], med[("check-interval inf (off)", c)]
        for name, m in (("check-interval 0", on), ("check-interval inf (off)", off)):
            out.append([name, c, fmt_rate(m["rps"]), fmt_time(m["p50"]), fmt_time(m["p99"]),
                        f"{off['rps'] / m['rps'] - 1:+.1%}", f"{m['cpu_us']:.1f}",
                        f"{m['cpu_us'] / off['cpu_us'] - 1:+.1%}"])  # fmt: skip
    head = ["server", "c", "req/s", "p50", "p99", "time per request vs off",
            "server CPU µs/req", "CPU per request vs off"]  # fmt: skip
    return table(head, out), rows


def batches(actor: Path, work: Path, rounds: int, duration: float) -> tuple[str, list[Row]]:
    """Goal 4: states/s for 64-state batches over /rl/predict and OIP infer."""
    states = [[0.1] * OBS for _ in range(64)]
    rl = body_file(work, {"states": states}, "rl64.json")
    oip = body_file(work, {"inputs": [{"name": "state", "datatype": "FP32", "shape": [64, OBS],
                                       "data": [v for s in states for v in s]}]}, "oip64.json")  # fmt: skip
    urls = {"/rl/predict": (f"http://127.0.0.1:{PORT}/rl/predict", rl),
            "/v2/models/actor/infer": (f"http://127.0.0.1:{PORT}/v2/models/actor/infer", oip)}  # fmt: skip
    one = body_file(work, {"state": [0.1] * OBS}, "one.json")
    rows: list[Row] = []
    cmd = ckptserve_cmd(str(actor), "--port", str(PORT))
    for _ in range(rounds):
        with Server(cmd, urls["/rl/predict"][0], one.read_bytes()):
            for name, (url, body) in urls.items():
                wrk(url, body, 8, 1.0)
                rows += [wrk(url, body, c, duration, name) for c in (1, 16)]
    med = _collect(rows)
    out = [[name, c, fmt_rate(m["rps"]), fmt_rate(m["rps"] * 64), fmt_time(m["p50"]),
            fmt_time(m["p99"]), int(m["non2xx"])]
           for (name, c), m in sorted(med.items())]  # fmt: skip
    head = ["route (64 states per request)", "c", "req/s", "states/s", "p50", "p99", "non-2xx"]
    return table(head, out), rows


def workers(actor: Path, body: Path, rounds: int, duration: float) -> tuple[str, list[Row]]:
    """Goal 5: --workers 2 against 1 (the server on both CPUs, wrk shares CPU 0 with it)."""
    url = f"http://127.0.0.1:{PORT}/rl/predict"
    rows: list[Row] = []
    for _ in range(rounds):
        for n, cpus in (("1", "1"), ("2", "0,1")):
            cmd = ckptserve_cmd(str(actor), "--port", str(PORT), "--workers", n)
            with Server(cmd, url, body.read_bytes(), cpus=cpus):
                wrk(url, body, 8, 1.0)
                rows += [wrk(url, body, 64, duration, f"--workers {n} (CPUs {cpus})")]
    med = _collect(rows)
    base = med[("--workers 1 (CPUs 1)", 64)]["rps"]
    out = [[name, c, fmt_rate(m["rps"]), fmt_time(m["p50"]), fmt_time(m["p99"]),
            f"{m['rps'] / base:.2f}", int(m["non2xx"])]
           for (name, c), m in med.items()]  # fmt: skip
    head = ["server", "c", "req/s", "p50", "p99", "vs 1 worker", "non-2xx"]
    return table(head, out), rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per wrk row")
    p.add_argument("--only", default="peers,check,batch,workers")
    p.add_argument("--peers", help="comma-separated subset of the peers (default: all)")
    p.add_argument("--json", help="write the raw rows here")
    p.add_argument("--workdir", help="keep the actor and bodies here")
    args = p.parse_args()
    parts = args.only.split(",")
    raw: dict[str, list[dict[str, object]]] = {}
    print(f"Machine: {machine()}; {args.rounds} rounds, {args.duration:g} s per row.\n")
    with workdir(args.workdir) as work:
        actor = make_actor(work / "actor.pt")
        body = body_file(work, {"state": [0.1] * OBS}, "one.json")
        jobs = {
            "peers": ("Goal 1: POST /rl/predict against the peers", lambda: peers(actor, body, args.rounds, args.duration, args.peers and args.peers.split(","))),
            "check": ("Goal 2: the reload check's cost", lambda: check_cost(actor, body, args.rounds, args.duration)),
            "batch": ("Goal 4: 64-state batches", lambda: batches(actor, work, args.rounds, args.duration)),
            "workers": ("Goal 5: --workers 2 against 1", lambda: workers(actor, body, args.rounds, args.duration)),
        }  # fmt: skip
        for key in parts:
            title, job = jobs[key]
            text, rows = job()
            raw[key] = [asdict(r) for r in rows]
            print(f"### {title}\n\n{text}\n", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
