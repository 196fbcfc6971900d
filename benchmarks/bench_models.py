"""How cost grows with the number of models in one server (issue 16, item 2): 1, 10 and 100
models, each with its own checkpoint, idle and reloading: the cost per request and the memory,
over HTTP and for the reload check in-process; with a plot.

    .venv/bin/python benchmarks/bench_models.py [--models 1,10,100] [--rounds 2] [--duration 4]
        [--publish-rate 2] [--plot docs/bench_models.png] [--out benchmarks/results/models]

HTTP: one server (`ckptserve serve m0=DIR0/actor_latest.pt m1=... `, defaults) pinned to CPU 1
serves N copies of the benchmark actor (TorchScript, each slightly changed, so N checkpoints);
wrk on CPU 0 sends `/rl/{name}/predict` to the N models in turn (`paths.lua`, the same script for
every N), at c=1 and c=64, first with no publishes, then while a publisher (CPU 0) republishes
one model after the other at `--publish-rate` publishes per second in all (the same load work for
every N, so what grows with N is the per-model bookkeeping). Server CPU µs per request, req/s,
p50/p99, and the server's RSS once every model is live (memory per model = the growth over one
model). Rounds interleave the Ns; cells are medians over rounds.

In-process: N `ModelRegistry`s on N files (the default check: one `os.stat` per call), the
hot path `get_model()` called on each in turn, ns per call against a bare `os.stat` of the same N
files in the same order (median of 7 repeats): the check must not grow with N.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import timeit
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness import (
    HERE,
    LOAD_CPUS,
    Row,
    Server,
    body_file,
    ckptserve_cmd,
    fmt_rate,
    fmt_time,
    free_port,
    get_json,
    log_axis,
    machine,
    make_actor,
    median,
    now_utc,
    plot_path,
    proc_status,
    results_path,
    scrape,
    table,
    versions,
    workdir,
    write_doc_block,
    wrk,
)

PATHS_LUA = HERE / "paths.lua"
OBS = 32


def publish_models(actor: Path, root: Path, n: int) -> list[Path]:
    """N directories, model i the benchmark actor with its first weight shifted by i * 1e-3."""
    import torch

    from ckptserve import publish

    model = torch.jit.load(str(actor))
    first = next(model.parameters())
    dirs = []
    for i in range(n):
        directory = root / f"m{i}"
        if not (directory / "actor_latest.pt").exists():
            with torch.no_grad():
                first.add_(1e-3)
            publish(model, directory, format="torchscript", keep=2)
        dirs.append(directory)
    return dirs


def publisher_main(actor: Path, dirs: list[Path], rate: float) -> None:
    """Child mode: republish the models in turn, `rate` publishes per second, until SIGTERM."""
    import torch

    from ckptserve import publish

    torch.set_num_threads(1)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    model = torch.jit.load(str(actor))
    first = next(model.parameters())
    due, i = time.monotonic(), 0
    while True:
        due = max(due + 1 / rate, time.monotonic())
        time.sleep(max(0.0, due - time.monotonic()))
        with torch.no_grad():
            first.add_(1e-4)
        publish(model, dirs[i % len(dirs)], format="torchscript", keep=2)
        if i == 0:
            print("publishing", flush=True)
        i += 1


def wait_ready(url: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            get_json(url + "/readyz")
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} was not ready within {timeout:g} s")


def reloads_ok(url: str) -> float:
    return sum(v for k, v in scrape(url + "/metrics").items()
               if k.startswith("ckptserve_reloads_total{") and 'result="ok"' in k)  # fmt: skip


def http(actor: Path, work: Path, ns: list[int], args: argparse.Namespace) -> tuple[list[Row], dict[int, list[float]], dict[str, float]]:  # fmt: skip
    body = body_file(work, {"state": [0.1] * OBS}, "one.json")
    rows: list[Row] = []
    rss: dict[int, list[float]] = defaultdict(list)
    reloads: dict[str, float] = defaultdict(float)
    for _ in range(args.rounds):
        for n in ns:
            dirs = publish_models(actor, work / f"n{n}", n)
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            specs = [f"m{i}={d / 'actor_latest.pt'}" for i, d in enumerate(dirs)]
            cmd = ckptserve_cmd(*specs, "--port", str(port))
            paths = ",".join(f"/rl/m{i}/predict" for i in range(n))
            env = {"PATHS": paths}
            with Server(
                cmd, f"{url}/rl/m0/predict", body.read_bytes(), ready_timeout=300
            ) as server:
                assert server.proc is not None
                wait_ready(url)
                wrk(url + "/", body, 8, 1.0, script=PATHS_LUA, env=env)  # warm-up, not reported
                rss[n].append(proc_status(server.proc.pid).get("VmRSS", 0) / 1e6)
                rows += [wrk(url + "/", body, c, args.duration, f"{n}|idle", server, script=PATHS_LUA, env=env)
                         for c in (1, 64)]  # fmt: skip
                before = reloads_ok(url)
                pub = subprocess.Popen(["taskset", "-c", LOAD_CPUS, sys.executable, __file__,
                                        "--publisher", str(actor), "--rate", str(args.publish_rate),
                                        *map(str, dirs)], stdout=subprocess.PIPE, text=True)  # fmt: skip
                try:
                    assert pub.stdout is not None
                    if pub.stdout.readline().strip() != "publishing":  # after its imports
                        raise RuntimeError("the publisher did not start")
                    rows += [wrk(url + "/", body, c, args.duration, f"{n}|reloading", server,
                                 script=PATHS_LUA, env=env) for c in (1, 64)]  # fmt: skip
                finally:
                    pub.terminate()
                    pub.wait(30)
                reloads[str(n)] += reloads_ok(url) - before
    return rows, rss, reloads


def in_process(root: Path, ns: list[int], calls: int) -> dict[int, dict[str, float]]:
    from ckptserve import ModelRegistry

    out = {}
    for n in ns:
        dirs = [root / f"n{max(ns)}" / f"m{i}" for i in range(n)]
        paths = [str(d / "actor_latest.pt") for d in dirs]
        registries = [ModelRegistry(p) for p in paths]
        try:
            for r in registries:
                r.get_model()
            gets = [r.get_model for r in registries]
            per = max(1, calls // n)
            ns_stat = _per_call(
                "for p in paths: stat(p)", {"paths": paths, "stat": os.stat}, per, n
            )
            ns_get = _per_call("for g in gets: g()", {"gets": gets}, per, n)
            ns_loop = _per_call("for g in gets: pass", {"gets": gets}, per, n)
        finally:
            for r in registries:
                r.close()
        out[n] = {"stat_ns": ns_stat, "get_model_ns": ns_get, "loop_ns": ns_loop}
    return out


def _per_call(stmt: str, namespace: dict[str, Any], number: int, n: int) -> float:
    timer = timeit.Timer(stmt, globals=namespace)
    timer.timeit(max(1, number // 10))
    return statistics.median(t / (number * n) * 1e9 for t in timer.repeat(repeat=7, number=number))


def render(rows: list[Row], rss: dict[int, list[float]], reloads: dict[str, float],
           inproc: dict[int, dict[str, float]], ns: list[int], args: argparse.Namespace,
           seconds: float) -> str:  # fmt: skip
    by: dict[tuple[str, int], list[Row]] = defaultdict(list)
    for r in rows:
        by[(r.name, r.concurrency)].append(r)
    smoke = args.duration < 2 or args.rounds < 2
    lines = ["# How cost grows with the number of models" + (" — SMOKE RUN (tiny durations)" if smoke else ""), "",
             f"Measured {now_utc()} by `python benchmarks/bench_models.py {' '.join(sys.argv[1:])}` "
             f"({seconds:.0f} s); {machine()}; {versions()}. {args.rounds} rounds, {args.duration:g} s "
             f"per wrk row; requests go to the N models in turn; \"reloading\": {args.publish_rate:g} "
             "publishes per second in all, one model after the other.", ""]  # fmt: skip
    base = {c: median([r.cpu_us for r in by[("1|idle", c)]]) for c in (1, 64)} if 1 in ns else {}
    head = ["models", "publishes", "c", "req/s", "p50", "p99", "server CPU µs/req", "CPU vs 1 model idle",
            "reloads done"]  # fmt: skip
    out = []
    for n in ns:
        for mode in ("idle", "reloading"):
            for c in (1, 64):
                rs = by[(f"{n}|{mode}", c)]
                cpu = median([r.cpu_us for r in rs])
                rel = f"{cpu / base[c] - 1:+.1%}" if base else "-"
                done = f"{reloads[str(n)]:.0f}" if mode == "reloading" and c == 1 else ""
                out.append([n, "none" if mode == "idle" else f"{args.publish_rate:g}/s", c,
                            fmt_rate(median([r.rps for r in rs])), fmt_time(median([r.p50 for r in rs])),
                            fmt_time(median([r.p99 for r in rs])), f"{cpu:.0f}", rel, done])  # fmt: skip
    lines += [table(head, out), ""]
    mem = [[n, f"{median(rss[n]):,.0f}",
            f"{(median(rss[n]) - median(rss[ns[0]])) / (n - ns[0]):.2f}" if n != ns[0] else "-"]
           for n in ns]  # fmt: skip
    lines += [
        table(
            ["models", "server RSS MB (all live, after warm-up)", f"MB per model beyond {ns[0]}"],
            mem,
        ),
        "",
    ]
    ip = [[n, f"{v['stat_ns']:.0f}", f"{v['get_model_ns']:.0f}", f"{v['get_model_ns'] / v['stat_ns']:.2f}x",
           f"{v['loop_ns']:.0f}"] for n, v in inproc.items()]  # fmt: skip
    lines += ["In-process, the reload check per call (`get_model()` with the default check_interval=0 on "
              "N registries in turn, against `os.stat` of the same N files):", "",
              table(["registries", "os.stat ns/call", "get_model() ns/call", "÷ os.stat", "empty loop ns"], ip), ""]  # fmt: skip
    return "\n".join(lines)


def plot(rows: list[Row], rss: dict[int, list[float]], inproc: dict[int, dict[str, float]],
         ns: list[int], out: Path) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in rows:
        by[(r.name, r.concurrency)].append(r.cpu_us)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for mode in ("idle", "reloading"):
        for c in (1, 64):
            axes[0].plot(
                ns, [median(by[(f"{n}|{mode}", c)]) for n in ns], marker="o", label=f"c={c}, {mode}"
            )
    axes[0].set_title("server CPU per request (µs), HTTP", fontsize=9)
    axes[0].set_ylim(bottom=0)
    axes[1].plot(
        ns, [inproc[n]["get_model_ns"] for n in ns], marker="o", label="get_model() (check)"
    )
    axes[1].plot(ns, [inproc[n]["stat_ns"] for n in ns], marker="o", label="os.stat alone")
    axes[1].set_title("reload check per call (ns), in-process", fontsize=9)
    axes[1].set_ylim(bottom=0)
    axes[2].plot(ns, [median(rss[n]) for n in ns], marker="o", label="server RSS")
    axes[2].set_title("server RSS (MB), every model live", fontsize=9)
    for ax in axes:
        ax.set_xscale("log")
        log_axis(ax.xaxis)
        ax.set_xlabel("models in one server", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="1,10,100")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--duration", type=float, default=4.0, help="seconds per wrk row")
    p.add_argument("--publish-rate", type=float, default=2.0, help="publishes per second in all")
    p.add_argument("--calls", type=int, default=100_000, help="in-process calls per repeat")
    p.add_argument("--plot", help="the PNG (default: docs/bench_models.png with --docs, else "
                   "beside OUT)")  # fmt: skip
    p.add_argument("--out", help="write OUT.md and OUT.json (default: benchmarks/results/models; "
                   "a smoke run: $TMPDIR/ckptserve-smoke/models)")  # fmt: skip
    p.add_argument("--docs", action="store_true",
                   help="also write the figures into docs/benchmarks.md (not for smoke runs)")  # fmt: skip
    p.add_argument("--workdir")
    p.add_argument("--publisher", help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    p.add_argument("dirs", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.docs and (args.duration < 2 or args.rounds < 2):
        sys.exit("--docs: a smoke run's figures do not go into the docs")
    if args.publisher:
        publisher_main(Path(args.publisher), [Path(d) for d in args.dirs], args.rate)
        return
    os.environ.setdefault("CKPTSERVE_TORCH_THREADS", "1")
    ns = sorted(int(x) for x in args.models.split(",") if x)
    started = time.monotonic()
    with workdir(args.workdir) as work:
        actor = make_actor(work / "actor.pt")
        rows, rss, reloads = http(actor, work, ns, args)
        publish_models(actor, work / f"n{max(ns)}", max(ns))
        inproc = in_process(work, ns, args.calls)
    text = render(rows, rss, reloads, inproc, ns, args, time.monotonic() - started)
    print(text)
    out = results_path("models", args.out, args.duration < 2 or args.rounds < 2)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    if args.docs:
        write_doc_block(
            "bench-models",
            f"{text}\n![CPU per request, the reload check per call and RSS against the number of models](bench_models.png)\n",
        )
    out.with_suffix(".json").write_text(json.dumps({
        "when": now_utc(), "argv": sys.argv[1:], "machine": machine(), "rss_mb": rss,
        "reloads": reloads, "in_process": inproc, "rows": [asdict(r) for r in rows]}, indent=1))  # fmt: skip
    png = plot_path("models", args.plot, args.docs, out)
    plot(rows, rss, inproc, ns, png)
    print(f"plot: {png}", file=sys.stderr)


if __name__ == "__main__":
    main()
