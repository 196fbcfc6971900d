"""Reloads under load and freshness (issue 6, goals 3 and 7).

    .venv/bin/python benchmarks/bench_reload.py [--duration 30] [--interval 0.5] [--publishes 50]
        [--plot docs/reload_latency.png]

The server (`ckptserve serve`, the benchmark actor, torch threads 1) runs on CPU 1. On CPU 0:
`loadgen.py` (64 keep-alive connections, closed loop, every response recorded with its
`X-Model-Version`) and a publisher process that calls `publish()` every `--interval` seconds with a
slightly changed actor and records when `publish()` returned and the new sha256.

Goal 3: `--duration` s runs without reloads, with background swap and with sync swap (local file):
non-2xx count, p50/p99 of every request, p99 against the run without reloads; the plot shows
latency over time with the publish and swap moments.
Goal 7 (freshness): for each publish, the time from `publish()` returning to the first response
that carries the new sha256 (median, p99); local file mode from the same runs, manifest mode from
runs of `--publishes` publishes. The server's own load time (`/rl/status` history) is the yardstick.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from harness import (
    HERE,
    LOAD_CPUS,
    Server,
    body_file,
    ckptserve_cmd,
    fmt_time,
    machine,
    make_actor,
    table,
    workdir,
)

PORT = 8011
URL = f"http://127.0.0.1:{PORT}/rl/predict"
LEAD = 3.0  # seconds from the start of the load to the first publish
TAIL = 2.0  # seconds of load after the last publish
WARMUP = 1.0  # seconds at the start left out of the latency statistics (not of the non-2xx count)


def publisher(directory: Path, actor: Path, interval: float, count: int, start: float,
              out: Path) -> None:  # fmt: skip
    """Child-process mode: publish `count` changed actors, one every `interval` s from `start`."""
    import torch

    from ckptserve import publish

    torch.set_num_threads(1)
    model = torch.jit.load(str(actor))
    first = next(model.parameters())
    events = []
    due = start
    for _ in range(count):
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        # running late (a slow publish on a busy machine) never means publishing back to back
        due = max(due + interval, time.monotonic() + interval / 2)
        with torch.no_grad():
            first.add_(1e-3)
        path = publish(model, directory, format="torchscript")
        returned = time.monotonic_ns()
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        events.append((returned, sha))
    out.write_text(json.dumps(events))


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def one_run(work: Path, actor: Path, *, swap: str, mode: str, duration: float,
            interval: float, publishes: int | None) -> dict[str, Any]:  # fmt: skip
    """One server, one load run, optionally with a publisher; every response and publish."""
    import shutil

    from ckptserve import publish

    directory = work / f"models-{swap}-{mode}-{publishes}"
    shutil.rmtree(directory, ignore_errors=True)
    import torch

    publish(torch.jit.load(str(actor)), directory, format="torchscript")
    watched = directory / ("actor_latest.json" if mode == "manifest" else "actor_latest.pt")
    body = body_file(work, {"state": [0.1] * 32}, "one.json")
    cmd = ckptserve_cmd(str(watched), "--port", str(PORT), "--swap", swap)
    rows_file, events_file = work / "rows.json", work / "events.json"
    with Server(cmd, URL, body.read_bytes()):
        pub = None
        if publishes:  # started first: its imports take a while; it publishes from +LEAD s
            pub = subprocess.Popen(["taskset", "-c", LOAD_CPUS, sys.executable, __file__,
                                    "--publisher", str(directory), "--actor", str(actor),
                                    "--interval", str(interval), "--count", str(publishes),
                                    "--start", str(time.monotonic() + LEAD),
                                    "--events", str(events_file)])  # fmt: skip
        load = subprocess.Popen(["taskset", "-c", LOAD_CPUS, sys.executable,
                                 str(HERE / "loadgen.py"), URL, str(body), "--connections", "64",
                                 "--duration", str(duration), "--out", str(rows_file)])  # fmt: skip
        if load.wait(duration + 60) != 0:
            raise RuntimeError("loadgen failed")
        if pub is not None and pub.wait(60) != 0:
            raise RuntimeError("publisher failed")
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/rl/status", timeout=5) as resp:
            status = json.loads(resp.read())
    rows = json.loads(rows_file.read_text())["rows"]
    events = json.loads(events_file.read_text()) if publishes else []
    return {"rows": rows, "events": events, "status": status, "swap": swap, "mode": mode}


def summarise(run: dict[str, Any]) -> dict[str, Any]:
    rows = run["rows"]
    t0 = min(r[0] for r in rows)
    bad = sum(1 for r in rows if not 200 <= r[2] < 300)
    # latency statistics leave out the first WARMUP s (64 connections opening at once)
    lat = [(r[1] - r[0]) / 1e9 for r in rows if r[0] >= t0 + WARMUP * 1e9]
    # first response that carries each tag (the swap moment as a client sees it)
    first_seen: dict[str, int] = {}
    for r in sorted(rows, key=lambda r: r[1]):
        first_seen.setdefault(r[3].rsplit("@", 1)[-1], r[1])
    fresh = []
    by_time = sorted(rows, key=lambda r: r[1])
    for returned, sha in run["events"]:
        tag = sha[:12]
        seen = next((r[1] for r in by_time if r[1] >= returned and r[3].endswith("@" + tag)), None)
        if seen is not None:
            fresh.append((seen - returned) / 1e9)
    loads = [a["duration"] for a in run["status"].get("history", []) if a.get("result") == "ok"]
    span = (max(r[1] for r in rows) - t0) / 1e9
    return {
        "requests": len(rows),
        "rps": len(rows) / span if span else float("nan"),
        "p50": _percentile(lat, 0.50),
        "p99": _percentile(lat, 0.99),
        "max": max(lat),
        "non2xx": bad,
        "publishes": len(run["events"]),
        "fresh": fresh,
        "missed": len(run["events"]) - len(fresh),
        "load_median": _percentile(loads[1:], 0.5) if len(loads) > 1 else float("nan"),
        "t0": t0,
        "swaps": sorted(first_seen.values())[1:],
    }


def plot(runs: dict[str, dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 1, figsize=(11, 2.6 * len(runs)), sharex=True, sharey=True)
    for ax, (name, run) in zip(axes, runs.items(), strict=True):
        s = summarise(run)
        t0 = s["t0"]
        rows = run["rows"]
        step = max(1, len(rows) // 40000)
        xs = [(r[1] - t0) / 1e9 for r in rows[::step]]
        ys = [(r[1] - r[0]) / 1e6 for r in rows[::step]]
        ax.scatter(xs, ys, s=1, alpha=0.35, color="tab:blue", rasterized=True)
        for returned, _ in run["events"]:
            ax.axvline((returned - t0) / 1e9, color="0.6", lw=0.5, ls=":")
        for i, t in enumerate(s["swaps"]):
            ax.axvline((t - t0) / 1e9, color="tab:red", lw=0.6, alpha=0.7,
                       label="first response with the new sha256" if i == 0 else None)  # fmt: skip
        ax.axhline(s["p99"] * 1e3, color="k", lw=0.8, ls="--", label=f"p99 {s['p99'] * 1e3:.1f} ms")
        ax.set_yscale("log")
        ax.set_ylabel("latency (ms)")
        ax.set_title(f"{name}: {s['requests']:,} requests, {s['non2xx']} non-2xx, "
                     f"{s['publishes']} publishes", fontsize=9)  # fmt: skip
        ax.legend(loc="upper right", fontsize=7)
    axes[-1].set_xlabel("seconds since the load started (dotted grey: publish() returned; "
                        f"statistics from {WARMUP:g} s)")  # fmt: skip
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--interval", type=float, default=0.5)
    p.add_argument("--publishes", type=int, default=50, help="publishes in each manifest-mode run")
    p.add_argument("--plot", help="write the latency-over-time PNG here")
    p.add_argument("--json", help="write the summaries here")
    p.add_argument("--workdir")
    # publisher child mode
    p.add_argument("--publisher", help=argparse.SUPPRESS)
    p.add_argument("--actor", help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, help=argparse.SUPPRESS)
    p.add_argument("--start", type=float, help=argparse.SUPPRESS)
    p.add_argument("--events", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.publisher:
        publisher(Path(args.publisher), Path(args.actor), args.interval, args.count, args.start,
                  Path(args.events))  # fmt: skip
        return
    os.environ.setdefault("CKPTSERVE_TORCH_THREADS", "1")
    print(f"Machine: {machine()}.\n")
    with workdir(args.workdir) as work:
        actor = make_actor(work / "actor.pt")
        count = int((args.duration - LEAD - TAIL) / args.interval) + 1
        runs = {
            "no reloads": one_run(work, actor, swap="background", mode="file",
                                  duration=args.duration, interval=args.interval, publishes=None),
            "background swap": one_run(work, actor, swap="background", mode="file",
                                       duration=args.duration, interval=args.interval, publishes=count),
            "sync swap": one_run(work, actor, swap="sync", mode="file",
                                 duration=args.duration, interval=args.interval, publishes=count),
        }  # fmt: skip
        man_duration = LEAD + (args.publishes - 1) * args.interval + TAIL
        fresh_runs = {
            ("file", "background"): runs["background swap"],
            ("file", "sync"): runs["sync swap"],
            ("manifest", "background"): one_run(work, actor, swap="background", mode="manifest",
                                                duration=man_duration, interval=args.interval,
                                                publishes=args.publishes),
            ("manifest", "sync"): one_run(work, actor, swap="sync", mode="manifest",
                                          duration=man_duration, interval=args.interval,
                                          publishes=args.publishes),
        }  # fmt: skip
    sums = {k: summarise(v) for k, v in runs.items()}
    base = sums["no reloads"]["p99"]
    rows = [[name, f"{s['requests']:,}", f"{s['rps']:,.0f}", s["publishes"], s["non2xx"],
             fmt_time(s["p50"]), fmt_time(s["p99"]), f"{s['p99'] / base:.2f}", fmt_time(s["max"])]
            for name, s in sums.items()]  # fmt: skip
    print(f"### Goal 3: reloads under load (c=64, {args.duration:g} s, a publish every "
          f"{args.interval:g} s)\n")  # fmt: skip
    print(table(["run", "requests", "req/s", "publishes", "non-2xx", "p50", "p99",
                 "p99 ÷ no reloads", "max"], rows) + "\n")  # fmt: skip
    frows = []
    fsums = {}
    for (mode, swap), run in fresh_runs.items():
        s = summarise(run)
        fsums[f"{mode}/{swap}"] = s
        f = s["fresh"][: args.publishes]
        frows.append([mode, swap, len(f), s["missed"], fmt_time(_percentile(f, 0.5)),
                      fmt_time(_percentile(f, 0.99)), fmt_time(max(f) if f else float("nan")),
                      fmt_time(s["load_median"]), s["non2xx"]])  # fmt: skip
    print(
        "### Goal 7: freshness (publish() returned -> first response with the new sha256, c=64)\n"
    )
    print(table(["source", "swap", "publishes", "never seen", "median", "p99", "max",
                 "server load time (median)", "non-2xx"], frows) + "\n")  # fmt: skip
    if args.plot:
        plot(runs, Path(args.plot))
        print(f"plot: {args.plot}")
    if args.json:
        keep = ("requests", "rps", "p50", "p99", "max", "non2xx", "publishes", "fresh", "missed",
                "load_median")  # fmt: skip
        Path(args.json).write_text(json.dumps(
            {k: {f: v[f] for f in keep} for k, v in {**sums, **fsums}.items()}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
