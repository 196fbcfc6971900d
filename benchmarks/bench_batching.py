"""Dynamic batching (issue 6, goal 6): the heavy actor with and without `--batch-max-size`, and the
benchmark actor for comparison, at concurrency 1 and 64, interleaved in one session.

    .venv/bin/python benchmarks/bench_batching.py [--rounds 2] [--duration 4]

Heavy actor: `make_actor.py --hidden 1024 --layers 4` (32 -> 1024 x4 -> 1, 12.7 MB); the benchmark
actor: 32 -> 256 -> 256 -> 1. Server on CPU 1, wrk on CPU 0, torch threads 1, /rl/predict with one
state per request. Goal: at c=64 batched >= 2x unbatched req/s, c=1 p50 at most +10%.
"""

from __future__ import annotations

import argparse
import json
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
    workdir,
    wrk,
)

PORT = 8011
CONFIGS = {
    "off": ["--batch-max-size", "1"],  # the default is batched (32) since 0.2.0
    "max 32, wait 0": ["--batch-max-size", "32"],
    "max 32, wait 2 ms": ["--batch-max-size", "32", "--batch-max-wait-ms", "2"],
}


def run(work: Path, rounds: int, duration: float) -> tuple[str, list[Row]]:
    models = {
        "heavy (1024x4)": make_actor(work / "heavy.pt", "--hidden", "1024", "--layers", "4"),
        "benchmark (256x2)": make_actor(work / "actor.pt"),
    }
    body = body_file(work, {"state": [0.1] * 32}, "one.json")
    url = f"http://127.0.0.1:{PORT}/rl/predict"
    rows: list[Row] = []
    for _ in range(rounds):
        for model, path in models.items():
            for config, flags in CONFIGS.items():
                if model.startswith("benchmark") and "wait 2" in config:
                    continue
                name = f"{model} | {config}"
                cmd = ckptserve_cmd(str(path), "--port", str(PORT), *flags)
                with Server(cmd, url, body.read_bytes()) as server:
                    wrk(url, body, 8, 1.0)
                    rows += [wrk(url, body, c, duration, name, server) for c in (1, 64)]
    by: dict[tuple[str, int], list[Row]] = defaultdict(list)
    for r in rows:
        by[(r.name, r.concurrency)].append(r)
    med = {k: {f: median([getattr(r, f) for r in v]) for f in ("rps", "p50", "p99")}
           for k, v in by.items()}  # fmt: skip
    out = []
    for (name, c), m in med.items():
        base = med[(name.split(" | ")[0] + " | off", c)]
        out.append([*name.split(" | "), c, fmt_rate(m["rps"]), fmt_time(m["p50"]),
                    fmt_time(m["p99"]), f"{m['rps'] / base['rps']:.2f}",
                    f"{m['p50'] / base['p50'] - 1:+.0%}"])  # fmt: skip
    out.sort(key=lambda r: (r[0], r[2], r[1] != "off", r[1]))
    head = ["actor", "batching", "c", "req/s", "p50", "p99", "req/s vs off", "p50 vs off"]
    return table(head, out), rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--json", help="write the raw rows here")
    p.add_argument("--workdir")
    args = p.parse_args()
    print(f"Machine: {machine()}; {args.rounds} rounds, {args.duration:g} s per row.\n")
    with workdir(args.workdir) as work:
        text, rows = run(work, args.rounds, args.duration)
    print(f"### Goal 6: dynamic batching\n\n{text}\n", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1))


if __name__ == "__main__":
    main()
