"""How cost grows with load (issue 16, item 2): concurrency 1 -> 256 and states per request
1 -> 4096, req/s, states/s and p99 of ckptserve against the model ceiling; with a plot.

    .venv/bin/python benchmarks/bench_scaling.py [--concurrency 1,4,16,64,256]
        [--batches 1,16,256,4096] [--batch-concurrency 1,16] [--rounds 2] [--duration 3]
        [--plot docs/bench_scaling.png] [--out benchmarks/results/scaling]

Servers (each pinned to CPU 1, wrk on CPU 0, torch threads 1, the benchmark actor of
`make_actor.py`): the model ceiling (`peers/model_ceiling.py`: bare ASGI + json + the same
forward, no checks), ckptserve with its defaults (dynamic batching, 32) and unbatched
(`--batch-max-size 1`, the default before 0.2.0).
Concurrency curve: one state per request at each concurrency. Batch curve: B states per request
(`{"states": [...]}` for ckptserve; `{"state": [...]}` of B rows for the ceiling, which runs the
same forward on them) at each of `--batch-concurrency`. Rounds interleave the servers; cells are
medians over rounds, ratios against the ceiling of the same row.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

from harness import (
    HERE,
    Row,
    Server,
    body_file,
    ckptserve_cmd,
    fmt_rate,
    fmt_time,
    free_port,
    log_axis,
    machine,
    make_actor,
    median,
    now_utc,
    plot_path,
    results_path,
    table,
    uvicorn_cmd,
    versions,
    workdir,
    write_doc_block,
    wrk,
)

OBS = 32
CEILING = "model-ceiling"


def servers(actor: Path, port: int) -> dict[str, tuple[list[str], dict[str, str]]]:
    return {
        CEILING: (uvicorn_cmd("model_ceiling:app", port), {"MODEL": str(actor)}),
        "ckptserve defaults": (ckptserve_cmd(str(actor), "--port", str(port)), {}),
        "ckptserve --batch-max-size 1": (
            ckptserve_cmd(str(actor), "--port", str(port), "--batch-max-size", "1"), {}),
    }  # fmt: skip


def bodies(work: Path, batches: list[int]) -> dict[tuple[str, int], Path]:
    out = {}
    for b in sorted({1, *batches}):
        rows = [[0.1] * OBS for _ in range(b)]
        out[("ckptserve", b)] = body_file(work, {"states": rows}, f"states{b}.json")
        out[(CEILING, b)] = body_file(work, {"state": rows}, f"ceiling{b}.json")
    out[("ckptserve", 0)] = body_file(work, {"state": [0.1] * OBS}, "one.json")
    out[(CEILING, 0)] = out[("ckptserve", 0)]
    return out


def run(actor: Path, work: Path, args: argparse.Namespace) -> list[Row]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/rl/predict"
    files = bodies(work, args.batch_list)
    specs = servers(actor, port)
    rows: list[Row] = []
    for i in range(args.rounds):
        names = list(specs)
        k = i % len(names)
        for name in names[k:] + names[:k]:
            cmd, env = specs[name]
            kind = CEILING if name == CEILING else "ckptserve"
            one = files[(kind, 0)]
            print(f"round {i + 1}/{args.rounds}: {name}", file=sys.stderr, flush=True)
            with Server(cmd, url, one.read_bytes(), env=env, cwd=HERE / "peers") as server:
                wrk(url, one, 8, 1.0)  # warm-up, not reported
                for c in args.concurrency_list:
                    rows.append(wrk(url, one, c, args.duration, f"{name}|c|1", server))
                for b in args.batch_list:
                    body = files[(kind, b)]
                    wrk(url, body, 1, 1.0)
                    for c in args.batch_concurrency_list:
                        rows.append(wrk(url, body, c, args.duration, f"{name}|b|{b}", server))
    return rows


def medians(rows: list[Row]) -> dict[tuple[str, str, int, int], dict[str, float]]:
    by: dict[tuple[str, str, int, int], list[Row]] = defaultdict(list)
    for r in rows:
        name, curve, b = r.name.split("|")
        by[(name, curve, int(b), r.concurrency)].append(r)
    return {k: {"rps": median([r.rps for r in v]), "p50": median([r.p50 for r in v]),
                "p99": median([r.p99 for r in v]), "cpu_us": median([r.cpu_us for r in v]),
                "non2xx": sum(r.non2xx for r in v)}
            for k, v in by.items()}  # fmt: skip


def render(med: dict[tuple[str, str, int, int], dict[str, float]], args: argparse.Namespace,
           names: list[str], seconds: float) -> str:  # fmt: skip
    smoke = args.duration < 2 or args.rounds < 2
    lines = ["# How cost grows with load" + (" — SMOKE RUN (tiny durations)" if smoke else ""), "",
             f"Measured {now_utc()} by `python benchmarks/bench_scaling.py {' '.join(sys.argv[1:])}` "
             f"({seconds:.0f} s); {machine()}; {versions()}. {args.rounds} interleaved rounds, "
             f"{args.duration:g} s per wrk row; server on CPU 1, wrk on CPU 0.", ""]  # fmt: skip
    head = [
        "server",
        "c",
        "req/s",
        "p50",
        "p99",
        "req/s ÷ ceiling",
        "p99 ÷ ceiling",
        "server CPU µs/req",
        "non-2xx",
    ]
    out = []
    for c in args.concurrency_list:
        ceil = med.get((CEILING, "c", 1, c))
        for name in names:
            m = med.get((name, "c", 1, c))
            if m is None:
                continue
            out.append([name, c, fmt_rate(m["rps"]), fmt_time(m["p50"]), fmt_time(m["p99"]),
                        f"{m['rps'] / ceil['rps']:.2f}" if ceil else "-",
                        f"{m['p99'] / ceil['p99']:.2f}" if ceil else "-", f"{m['cpu_us']:.0f}",
                        int(m["non2xx"])])  # fmt: skip
    lines += ["**Concurrency** (one state per request):", "", table(head, out), ""]
    head = ["server", "states per request", "c", "req/s", "states/s", "p99", "states/s ÷ ceiling",
            "p99 ÷ ceiling", "non-2xx"]  # fmt: skip
    out = []
    for b in args.batch_list:
        for c in args.batch_concurrency_list:
            ceil = med.get((CEILING, "b", b, c))
            for name in names:
                m = med.get((name, "b", b, c))
                if m is None:
                    continue
                out.append([name, b, c, fmt_rate(m["rps"]), fmt_rate(m["rps"] * b), fmt_time(m["p99"]),
                            f"{m['rps'] / ceil['rps']:.2f}" if ceil else "-",
                            f"{m['p99'] / ceil['p99']:.2f}" if ceil else "-", int(m["non2xx"])])  # fmt: skip
    lines += ["**States per request:**", "", table(head, out), ""]
    return "\n".join(lines)


def plot(med: dict[tuple[str, str, int, int], dict[str, float]], args: argparse.Namespace,
         names: list[str], out: Path) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    cs = args.concurrency_list
    for name in names:
        style = "--" if name == CEILING else "-"
        axes[0][0].plot(
            cs, [med[(name, "c", 1, c)]["rps"] for c in cs], style, marker="o", label=name
        )
        axes[0][1].plot(
            cs, [med[(name, "c", 1, c)]["p99"] * 1e3 for c in cs], style, marker="o", label=name
        )
        for c in args.batch_concurrency_list:
            bs = args.batch_list
            axes[1][0].plot(bs, [med[(name, "b", b, c)]["rps"] * b for b in bs], style, marker="o",
                            label=f"{name}, c={c}")  # fmt: skip
            axes[1][1].plot(bs, [med[(name, "b", b, c)]["p99"] * 1e3 for b in bs], style, marker="o",
                            label=f"{name}, c={c}")  # fmt: skip
    titles = [["req/s, one state per request", "p99 (ms), one state per request"],
              ["states/s", "p99 (ms)"]]  # fmt: skip
    xlabels = ["concurrent connections", "states per request"]
    for i, row in enumerate(axes):
        for j, ax in enumerate(row):
            ax.set_xscale("log")
            ax.set_yscale("log")
            log_axis(ax.xaxis)
            log_axis(ax.yaxis)
            ax.set_title(titles[i][j], fontsize=9)
            ax.set_xlabel(xlabels[i], fontsize=8)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=6)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--concurrency", default="1,4,16,64,256")
    p.add_argument("--batches", default="1,16,256,4096", help="states per request")
    p.add_argument("--batch-concurrency", default="1,16")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--duration", type=float, default=3.0, help="seconds per wrk row")
    p.add_argument("--plot", help="the PNG (default: docs/bench_scaling.png with --docs, else "
                   "beside OUT)")  # fmt: skip
    p.add_argument("--out", help="write OUT.md and OUT.json (default: benchmarks/results/scaling; "
                   "a smoke run: $TMPDIR/ckptserve-smoke/scaling)")  # fmt: skip
    p.add_argument("--docs", action="store_true",
                   help="also write the figures into docs/benchmarks.md (not for smoke runs)")  # fmt: skip
    p.add_argument("--workdir")
    args = p.parse_args()
    if args.docs and (args.duration < 2 or args.rounds < 2):
        sys.exit("--docs: a smoke run's figures do not go into the docs")
    args.concurrency_list = _ints(args.concurrency)
    args.batch_list = _ints(args.batches)
    args.batch_concurrency_list = _ints(args.batch_concurrency)
    os.environ.setdefault("CKPTSERVE_TORCH_THREADS", "1")
    started = time.monotonic()
    with workdir(args.workdir) as work:
        actor = make_actor(work / "actor.pt")
        rows = run(actor, work, args)
        names = list(servers(actor, 0))
    med = medians(rows)
    text = render(med, args, names, time.monotonic() - started)
    print(text)
    out = results_path("scaling", args.out, args.duration < 2 or args.rounds < 2)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    if args.docs:
        write_doc_block(
            "bench-scaling",
            f"{text}\n![req/s, states/s and p99 against concurrency and states per request, ckptserve and the model ceiling](bench_scaling.png)\n",
        )
    out.with_suffix(".json").write_text(json.dumps({"when": now_utc(), "argv": sys.argv[1:], "machine": machine(),
                                                    "rows": [asdict(r) for r in rows]}, indent=1))  # fmt: skip
    png = plot_path("scaling", args.plot, args.docs, out)
    plot(med, args, names, png)
    print(f"plot: {png}", file=sys.stderr)


if __name__ == "__main__":
    main()
