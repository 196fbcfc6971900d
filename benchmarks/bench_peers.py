"""ckptserve side by side with Triton Inference Server (issue 16, item 1), through the shared peer
kit when it is present: `make bench-peers`.

    .venv/bin/python benchmarks/bench_peers.py [--kit DIR] [--rounds 3] [--duration 6]
        [--peers triton-pybackend,pytriton] [--out benchmarks/results/peers]

The peer kit is not part of this repository. It is looked for in `--kit`, then `$PEER_KIT`, then
`../shared/bench/more-peers` next to the checkout; its venvs in `$PEERS_HOME` (default
/tmp/ckptserve-peers). Without the kit, or without its Triton venv, this says so and exits 0.

Rows, interleaved (each round starts one server after the other, the order rotated by one each
round): Triton's Python backend with dynamic batching (OIP infer; the kit's `triton_pybackend`),
optionally PyTriton, ckptserve with its defaults (dynamic batching on, 32) and unbatched (`--batch-max-size 1`), each on
`/rl/predict` and on OIP infer (`/v2/models/actor/infer`), at concurrency 1 and 64. The benchmark
actor (`make_actor.py`, TorchScript) for every server, torch threads 1, server pinned to CPU 1, wrk
to CPU 0. Cells are medians over the rounds; ratios are against Triton's median at the same
concurrency. Writes OUT.md (the table quoted by docs/benchmarks.md) and OUT.json (every row).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness import (
    ROOT,
    Row,
    Server,
    body_file,
    ckptserve_cmd,
    fmt_rate,
    fmt_time,
    free_port,
    get_json,
    machine,
    make_actor,
    median,
    now_utc,
    results_path,
    table,
    versions,
    workdir,
    write_doc_block,
    wrk,
)

OBS = 32
CONCURRENCY = (1, 64)
PEERS = ("triton-pybackend", "pytriton")
#: Goals of issue 16, item 1, for the ckptserve rows against Triton.
GOAL_C1, GOAL_C64 = 1.7, 1.3


@dataclass
class Spec:
    name: str
    cmd: list[str]
    routes: dict[str, tuple[str, Path]]  # route label -> (URL, body file)
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    triton: bool = False
    version: str = ""
    ask_version: str | None = None  # a KServe v2 server-metadata URL (GET /v2) to read it from


@dataclass
class Med:
    rps: float
    p50: float
    p99: float
    cpu_us: float
    non2xx: int
    rounds: list[float]


def find_kit(given: str | None) -> Path | None:
    for candidate in (
        given,
        os.environ.get("PEER_KIT"),
        str(ROOT.parent / "shared/bench/more-peers"),
    ):
        if candidate and (Path(candidate) / "triton_pybackend" / "serve.sh").is_file():
            return Path(candidate).resolve()
        if given:
            return None  # an explicit --kit that is not the kit: do not guess elsewhere
    return None


def pip_version(python: Path, package: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                              check=True, timeout=60).stdout.strip()  # fmt: skip
    return "unknown"


def clean_triton() -> None:
    """Remove what Triton / PyTriton leave behind when killed, where no process holds it open
    (the kit's `clean_triton`)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pytriton"
    found = list(cache.glob("workspace_*")) if cache.is_dir() else []
    shm = Path("/dev/shm")
    if shm.is_dir():
        found += [*shm.glob("pytrtion*"), *shm.glob("triton_python_backend_shm_region_*")]
    for path in found:
        held = subprocess.run(["fuser", "-s", str(path)], capture_output=True).returncode == 0
        if not held:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()


def specs(kit: Path, home: Path, actor: Path, work: Path, peers: list[str]) -> list[Spec]:
    port = free_port(span=3)  # Triton: gRPC on PORT+1; PyTriton also metrics on PORT+2
    one = body_file(work, {"state": [0.1] * OBS}, "one.json")
    oip = kit / "kserve_v2_body.json"
    v2 = f"http://127.0.0.1:{port}/v2/models/actor/infer"
    rl = f"http://127.0.0.1:{port}/rl/predict"
    venv = home / "pytriton" / "venv" / "bin" / "python"
    env = {"MODEL": str(actor), "PORT": str(port), "PEERS_HOME": str(home)}
    pytriton_version = pip_version(venv, "nvidia-pytriton")
    out = []
    meta = f"http://127.0.0.1:{port}/v2"
    if "triton-pybackend" in peers:
        out.append(Spec("triton-pybackend", ["./serve.sh"], {"OIP infer": (v2, oip)}, env,
                        kit / "triton_pybackend", triton=True, ask_version=meta,
                        version=f"Python backend, dynamic batching; the binary bundled in "
                                f"nvidia-pytriton {pytriton_version}"))  # fmt: skip
    if "pytriton" in peers:
        out.append(Spec("pytriton", [str(venv), "pytriton_peer.py"], {"OIP infer": (v2, oip)}, env,
                        kit / "pytriton", triton=True, ask_version=meta,
                        version=f"nvidia-pytriton {pytriton_version}"))  # fmt: skip
    routes = {"/rl/predict": (rl, one), "OIP infer": (v2, oip)}
    for name, flags in (("ckptserve defaults", []), ("ckptserve --batch-max-size 1",
                                                      ["--batch-max-size", "1"])):  # fmt: skip
        out.append(Spec(name, ckptserve_cmd(str(actor), "--port", str(port), *flags), routes))
    return out


def run_one(spec: Spec, duration: float) -> list[Row]:
    first_url, first_body = next(iter(spec.routes.values()))
    rows: list[Row] = []
    try:
        with Server(spec.cmd, first_url, first_body.read_bytes(), env=spec.env, cwd=spec.cwd,
                    ready_timeout=180) as server:  # fmt: skip
            if spec.ask_version:
                meta = get_json(spec.ask_version)
                if isinstance(meta, dict):
                    spec.version = f"{meta.get('name')} {meta.get('version')} ({spec.version})"
                spec.ask_version = None
            for route, (url, body) in spec.routes.items():
                wrk(url, body, 8, 1.0)  # warm-up, not reported
                rows += [wrk(url, body, c, duration, f"{spec.name} | {route}", server)
                         for c in CONCURRENCY]  # fmt: skip
    finally:
        if spec.triton:
            time.sleep(1.0)
            clean_triton()
    return rows


def summarise(rows: list[Row]) -> dict[tuple[str, int], Med]:
    by: dict[tuple[str, int], list[Row]] = defaultdict(list)
    for r in rows:
        by[(r.name, r.concurrency)].append(r)
    return {
        k: Med(median([r.rps for r in v]), median([r.p50 for r in v]), median([r.p99 for r in v]),
               median([r.cpu_us for r in v]), sum(r.non2xx for r in v), [r.rps for r in v])
        for k, v in by.items()
    }  # fmt: skip


def render(med: dict[tuple[str, int], Med], servers: list[Spec], args: argparse.Namespace,
           seconds: float, vers: dict[str, str]) -> str:  # fmt: skip
    base = {c: med.get((f"{servers[0].name} | OIP infer", c)) for c in CONCURRENCY}
    base_name = servers[0].name
    lines = []
    smoke = args.duration < 3 or args.rounds < 2
    title = "ckptserve against Triton" + (
        " — SMOKE RUN (tiny durations, not a measurement)" if smoke else ""
    )
    lines += [f"# {title}", "",
              f"Measured {now_utc()} by `python benchmarks/bench_peers.py {' '.join(sys.argv[1:])}` "
              f"({seconds:.0f} s): {args.rounds} interleaved rounds, {args.duration:g} s of wrk per "
              f"row (one thread, c connections, after 1 s at c=8), medians over the rounds.", "",
              f"Machine: {machine()}; server on CPU {os.environ.get('SERVER_CPUS', '1')}, wrk on "
              f"CPU {os.environ.get('LOAD_CPUS', '0')}; torch threads 1; the benchmark actor "
              "(32 → 256 → 256 → 1, TorchScript) in every server.", "",
              "Servers:", ""]  # fmt: skip
    for s in servers:
        lines.append(f"- **{s.name}**: {s.version}")
    lines += [f"- Python {vers['python']}, torch {vers['torch']} (ckptserve's venv); "
              "the Triton rows run in the peer kit's venv", ""]  # fmt: skip
    head = ["server", "route", "c", "req/s", "p50", "p99", f"req/s ÷ {base_name}",
            f"p99 ÷ {base_name}", "server CPU µs/req", "req/s per round", "non-2xx"]  # fmt: skip
    out = []
    for s in servers:
        for route in s.routes:
            for c in CONCURRENCY:
                m = med.get((f"{s.name} | {route}", c))
                if m is None:
                    continue
                b = base[c]
                out.append([s.name, route, c, fmt_rate(m.rps), fmt_time(m.p50), fmt_time(m.p99),
                            f"{m.rps / b.rps:.2f}" if b else "-", f"{m.p99 / b.p99:.2f}" if b else "-",
                            f"{m.cpu_us:.0f}", ", ".join(fmt_rate(x) for x in m.rounds), m.non2xx])  # fmt: skip
    lines += [table(head, out), ""]
    b1, b64 = base[1], base[64]
    if b1 and b64:
        lines += [f"Goals (issue 16): req/s ≥ {GOAL_C1}x {base_name} at c=1 and ≥ {GOAL_C64}x at "
                  f"c=64, p99 at c=64 no higher than {base_name}'s:", ""]  # fmt: skip
        for s in servers:
            if not s.name.startswith("ckptserve"):
                continue
            for route in s.routes:
                m1, m64 = med.get((f"{s.name} | {route}", 1)), med.get((f"{s.name} | {route}", 64))
                if not (m1 and m64):
                    continue
                r1, r64, p = m1.rps / b1.rps, m64.rps / b64.rps, m64.p99 / b64.p99
                verdict = "met" if r1 >= GOAL_C1 and r64 >= GOAL_C64 and p <= 1 else "missed"
                lines.append(f"- {s.name}, {route}: c=1 {r1:.2f}x, c=64 {r64:.2f}x, p99 at c=64 "
                             f"{p:.2f}x — **{verdict}**")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kit", help="the shared peer kit's more-peers folder")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=6.0, help="seconds per wrk row")
    p.add_argument(
        "--peers", default="triton-pybackend", help=f"comma-separated, of: {', '.join(PEERS)}"
    )
    p.add_argument("--out", help="write OUT.md and OUT.json (default: benchmarks/results/peers; "
                   "a smoke run: $TMPDIR/ckptserve-smoke/peers)")  # fmt: skip
    p.add_argument("--docs", action="store_true",
                   help="also write the figures into docs/benchmarks.md (not for smoke runs)")  # fmt: skip
    p.add_argument("--workdir")
    args = p.parse_args()
    if args.docs and (args.duration < 3 or args.rounds < 2):
        sys.exit("--docs: a smoke run's figures do not go into the docs")
    kit = find_kit(args.kit)
    if kit is None:
        where = (
            args.kit or os.environ.get("PEER_KIT") or str(ROOT.parent / "shared/bench/more-peers")
        )
        print(f"bench-peers: the shared peer kit is not here ({where} has no triton_pybackend/"
              "serve.sh), so there is nothing to compare against; skipped. Point PEER_KIT (or "
              "--kit) at the kit's more-peers folder to run it.")  # fmt: skip
        return
    home = Path(os.environ.get("PEERS_HOME", "/tmp/ckptserve-peers"))
    if not (home / "pytriton" / "venv" / "bin" / "python").exists():
        print(f"bench-peers: the peer kit is at {kit}, but its Triton venv is not installed in "
              f"{home}/pytriton: run `cd {kit} && ./install.sh pytriton` first; skipped.")  # fmt: skip
        return
    if shutil.which("wrk") is None:
        sys.exit("bench-peers needs wrk (Debian: apt-get install wrk)")
    peers = [x for x in args.peers.split(",") if x]
    unknown = sorted(set(peers) - set(PEERS))
    if unknown or not peers:
        sys.exit(
            f"unknown peer(s) {', '.join(unknown) or '(none)'}: choose from {', '.join(PEERS)}"
        )
    os.environ.setdefault("CKPTSERVE_TORCH_THREADS", "1")
    started = time.monotonic()
    rows: list[Row] = []
    with workdir(args.workdir) as work:
        actor = make_actor(work / "actor.pt")
        servers = specs(kit, home, actor, work, peers)
        vers = versions()
        for spec in servers:
            if spec.name.startswith("ckptserve"):
                spec.version = f"ckptserve {vers['ckptserve']}"
        for i in range(args.rounds):
            k = i % len(servers)
            for spec in servers[k:] + servers[:k]:
                print(f"round {i + 1}/{args.rounds}: {spec.name}", file=sys.stderr, flush=True)
                rows += run_one(spec, args.duration)
    med = summarise(rows)
    text = render(med, servers, args, time.monotonic() - started, vers)
    print(text)
    out = results_path("peers", args.out, args.duration < 3 or args.rounds < 2)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    if args.docs:
        write_doc_block("bench-peers", text)
    out.with_suffix(".json").write_text(json.dumps({
        "when": now_utc(), "command": " ".join(["python", "benchmarks/bench_peers.py", *sys.argv[1:]]),
        "machine": machine(), "versions": {s.name: s.version for s in servers} | vers,
        "rows": [asdict(r) for r in rows]}, indent=1))  # fmt: skip
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}", file=sys.stderr)


if __name__ == "__main__":
    main()
