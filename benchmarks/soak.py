"""The reliability soak (issue 7): chaos, memory, big-model stalls and the reload herd, with the
figures written into docs/reliability.md (between the `soak:begin` / `soak:end` markers) and the
memory curve plotted to docs/reliability_memory.png. `--only` reruns some parts and keeps the
others' figures from benchmarks/results/soak.json; each section says when its part was measured.

usage: python benchmarks/soak.py [--duration 60] [--reloads 1000] [--only chaos,memory,stalls,herd]

Every server runs on 127.0.0.1 as a subprocess in its own process group and is stopped at the end
of its part; every load generator is bounded in time and request count (tests/reliability/relkit.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "reliability"))
sys.path.insert(0, str(ROOT / "tests" / "server"))

import relkit  # noqa: E402

DOC = ROOT / "docs" / "reliability.md"
PLOT = ROOT / "docs" / "reliability_memory.png"
RESULTS = ROOT / "benchmarks" / "results" / "soak.json"
BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"
PARTS = ("chaos", "memory", "stalls", "herd", "faults")
#: Manifest-mode chaos: how often the server re-reads the manifest whose stat key did not change.
VERIFY_INTERVAL = 0.5


def chaos(duration: float) -> list[dict[str, Any]]:
    """The plain-file runs, then the manifest runs (`"source": "manifest"`)."""
    runs = []
    for swap, workers in (("sync", 1), ("background", 1), ("sync", 2)):
        with tempfile.TemporaryDirectory(prefix="soak-chaos-") as tmp:
            result = relkit.run_chaos(Path(tmp), swap=swap, workers=workers, duration=duration)
        print(json.dumps(result), flush=True)
        runs.append(result)
    for swap in ("background", "sync"):
        with tempfile.TemporaryDirectory(prefix="soak-chaos-manifest-") as tmp:
            result = relkit.run_manifest_chaos(
                Path(tmp), swap=swap, duration=duration, verify_interval=VERIFY_INTERVAL
            )
        print(json.dumps(result), flush=True)
        runs.append(result)
    return runs


def memory(reloads: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="soak-memory-") as tmp:
        result = relkit.run_reloads(Path(tmp), reloads, timeout=max(600, reloads))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(range(1, len(result["curve"]) + 1), [b / 2**20 for b in result["curve"]])
    ax.set_xlabel("reloads of the benchmark actor")
    ax.set_ylabel("server RSS (MiB)")
    ax.set_title(f"RSS over {reloads} reloads: +{result['growth'] / 2**20:.1f} MiB")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=100)
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}), flush=True)
    return result


def stalls() -> list[dict[str, Any]]:
    runs = []
    with tempfile.TemporaryDirectory(prefix="soak-stalls-") as tmp:
        cache = Path(tmp) / "cache"
        cache.mkdir()
        for fmt in ("safetensors", "state_dict", "torchscript", "export"):
            result = relkit.run_stalls(Path(tmp) / fmt, fmt, reloads=5, period=2.0, cache=cache)
            print(json.dumps(result), flush=True)
            runs.append(result)
    return runs


def herd() -> list[dict[str, Any]]:
    runs = []
    with tempfile.TemporaryDirectory(prefix="soak-herd-") as tmp:
        cache = Path(tmp) / "cache"
        cache.mkdir()
        for limit in (None, 1):
            result = relkit.run_herd(Path(tmp) / f"limit-{limit}", limit=limit, cache=cache)
            print(json.dumps(result), flush=True)
            runs.append(result)
    return runs


def faults() -> dict[str, Any]:
    from serverkit import ServerProcess, seeded, torch_script

    from ckptserve import publish

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="soak-faults-") as tmp:
        directory = Path(tmp) / "models"
        publish(torch_script(seeded(0)), directory)
        with ServerProcess([str(directory), "--log-level", "warning"], log=Path(tmp) / "log") as s:
            s.wait_ready()
            before = relkit.rss_bytes(s.proc.pid)
            r = relkit.slow_and_large(s.port, slow=100, duration=15.0)
            out["clients"] = {"slow": r["slow"], "declared": r["declared"], "chunked": r["chunked"],
                              "load": r["load"].summary(),
                              "rss_growth": relkit.rss_bytes(s.proc.pid) - before}  # fmt: skip
        out["kill"] = relkit.run_kill(Path(tmp) / "kill", duration=15.0)
    print(json.dumps(out), flush=True)
    return out


def _statuses(counts: dict[Any, int]) -> str:
    """{200: 97759} whether the keys are ints (this run) or strings (read back from JSON)."""
    return "{" + ", ".join(f"{k}: {v}" for k, v in counts.items()) + "}"


def _mb(n: float) -> str:
    return f"{n / 2**20:+.1f} MiB"


def measured(results: dict[str, Any], part: str) -> str:
    """When and how `part` was measured (a file from before per-part times: the block's)."""
    m = results.get("measured", {}).get(part) or results
    return f"measured {m['when']} with `{m['command']}`"


def _chaos_row(r: dict[str, Any], extra: str = "") -> str:
    mode = f"--swap {r['swap']}" + (f" --workers {r['workers']}" if r["workers"] > 1 else "")
    rl = r["reloads"]
    events = sum(v for k, v in r["events"].items() if k != "good")
    served = f"{r['good_versions_served']}" + (
        f" of {r['good_versions']}" if "good_versions" in r else ""
    )
    return (
        f"| {mode} | {r['duration_s']:.0f} | {r['sent']:,} | {r['rps']:,.0f} | "
        f"{r['non_2xx']} | {r['bad_sha_responses']} | {served} | "
        f"{rl.get('ok', 0)} / {rl.get('failed', 0)} / {rl.get('rejected', 0)} / "
        f"{rl.get('unchanged', 0)} | {r['p99_ms']} ms | {r['max_ms']} ms | "
        f"{events} chaos + {r['events'].get('good', 0)} good |{extra}"
    )


def render(results: dict[str, Any]) -> str:
    lines = [BEGIN, "", f"Written {results['when']} on {results['machine']} by "
             f"`{results['command']}`; each section says when its part was measured (`--only` "
             "keeps the other parts' figures from an earlier run).", ""]  # fmt: skip
    if "chaos" in results:
        plain = [r for r in results["chaos"] if r.get("source", "file") == "file"]
        signed = [r for r in results["chaos"] if r.get("source") == "manifest"]
        head = (
            "| mode | seconds | requests | req/s | non-2xx | bad sha256 | good versions served "
            "| reloads ok / failed / rejected / unchanged | p99 | largest latency | chaos events |"
        )
        lines += [
            f"### Chaos soak, {measured(results, 'chaos')}", "",
            "Plain file `actor_latest.pt`, 32 connections:", "",
            head, "|---|---|---|---|---|---|---|---|---|---|---|",
            *(_chaos_row(r) for r in plain), "",
        ]  # fmt: skip
        if signed:
            lines += [
                f"Manifest `actor_latest.json` written by `publish()`, signed, served with "
                f"`CKPTSERVE_SIGNING_KEY`, `--require-signature` and `--verify-interval "
                f"{signed[0]['verify_interval_s']:g}` (st_ctime left out of the stat key), "
                "32 connections:", "",
                head + " stat-key-preserving rewrites served |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]  # fmt: skip
            for r in signed:
                same = r["same_second"]
                lines.append(_chaos_row(r, f" {same['served']} of {same['events']} |"))
            lines.append("")
    if "memory" in results:
        m = results["memory"]
        lines += [
            f"### Memory, {measured(results, 'memory')}", "",
            f"{m['reloads']:,} reloads of the benchmark actor (`benchmarks/make_actor.py`, "
            f"TorchScript 32-256-256-1) in one server: RSS {m['curve'][0] / 2**20:.0f} MiB after the "
            f"first reload, {m['curve'][-1] / 2**20:.0f} MiB after the last: growth "
            f"{_mb(m['growth'])} (requirement <= 50 MB), peak {m['peak'] / 2**20:.0f} MiB; "
            f"{m['reloads_ok']:,} loads counted ok.", "",
            "![RSS over reloads](reliability_memory.png)", "",
        ]  # fmt: skip
    if "stalls" in results:
        lines += [
            "### Event-loop stalls while a ~100 MB actor reloads every 2 s (--swap background, "
            f"4 connections), {measured(results, 'stalls')}", "",
            "| format | file | worst loop stall (histogram bucket) | largest request latency | "
            "slowest load | requests | non-2xx |",
            "|---|---|---|---|---|---|---|",
        ]  # fmt: skip
        for r in results["stalls"]:
            lines.append(
                f"| {r['format']} | {r['size_mb']} MB | <= {r['worst_lag_ms']:g} ms | "
                f"{r['request_max_ms']} ms | {r['load_ms_max']} ms | {r['requests']:,} | {r['non_2xx']} |"
            )
        lines.append("")
    if "faults" in results:
        c, k = results["faults"]["clients"], results["faults"]["kill"]
        lines += [
            "### Slow and large clients (one worker, 8 normal connections for 15 s), "
            f"{measured(results, 'faults')}", "",
            f"{c['slow'].get('opened', 0)} connections sending their body one byte every 0.25 s "
            f"({c['slow'].get('still_open', 0)} still open at the end) and two 50 MiB bodies: "
            f"normal traffic {c['load']['sent']:,} requests, {_statuses(c['load']['statuses'])}, errors "
            f"{c['load']['errors'] or 'none'}, p99 {c['load']['p99_ms']} ms, largest "
            f"{c['load']['max_ms']} ms. Declared 50 MiB: {c['declared']['status']} after "
            f"{c['declared']['sent']:,} body bytes sent ({c['declared']['seconds'] * 1e3:.1f} ms); "
            f"chunked 50 MiB: {c['chunked']['status']} after {c['chunked']['sent']:,} bytes "
            f"({c['chunked']['seconds'] * 1e3:.1f} ms). Server RSS {_mb(c['rss_growth'])}.", "",
            f"### kill -9 of one of two workers under load ({k['concurrency']} connections), "
            f"{measured(results, 'faults')}", "",
            f"{k['sent']:,} requests: {_statuses(k['statuses'])}, connection errors {k['errors'] or 'none'} "
            f"(requests in flight on the killed worker's connections; the client reconnects). "
            f"uvicorn's supervisor started {k['replacements']} replacement, which served "
            f"`{k['replacement_checkpoint']}` (the current checkpoint: `{k['current_checkpoint']}`) "
            f"{k['replacement_serving_s']} s after the kill. Largest latency {k['max_ms']} ms.", "",
        ]  # fmt: skip
    if "herd" in results:
        lines += [
            "### Reload herd (--workers 2, ~100 MB safetensors actor, 3 publishes, 8 connections), "
            f"{measured(results, 'herd')}", "",
            "| --max-concurrent-loads | largest request latency | p99 | worst loop stall | "
            "seconds until both workers serve each publish | non-2xx |",
            "|---|---|---|---|---|---|",
        ]  # fmt: skip
        for r in results["herd"]:
            limit = r["max_concurrent_loads"] or "unset (all at once)"
            lines.append(
                f"| {limit} | {r['request_max_ms']} ms | {r['p99_ms']} ms | <= {r['worst_lag_ms']:g} ms "
                f"| {', '.join(f'{c:g}' for c in r['all_workers_new_s'])} | {r['non_2xx']} |"
            )
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def write_doc(block: str) -> None:
    text = DOC.read_text() if DOC.exists() else f"# Reliability\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    DOC.write_text(pattern.sub(lambda _: block, text))


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per chaos run")
    parser.add_argument("--reloads", type=int, default=1000, help="reloads for the memory run")
    parser.add_argument("--only", default=",".join(PARTS))
    args = parser.parse_args()
    parts = set(args.only.split(","))
    results: dict[str, Any] = {
        "when": _now(),
        "machine": f"{platform.machine()} Linux, {__import__('os').cpu_count()} CPUs",
        "command": " ".join(["python benchmarks/soak.py", *sys.argv[1:]]),
        "measured": {},  # part -> {"when", "command"}: when each part's figures were taken
    }
    if RESULTS.exists():  # keep the parts not rerun, with when they were measured
        previous = json.loads(RESULTS.read_text())
        for part in PARTS:
            if part in previous and part not in parts:
                results[part] = previous[part]
                # A file from before per-part times: the part was measured with its block.
                results["measured"][part] = previous.get("measured", {}).get(part) or {
                    "when": previous["when"], "command": previous["command"].strip()}  # fmt: skip
    run = {
        "chaos": lambda: chaos(args.duration),
        "memory": lambda: memory(args.reloads),
        "stalls": stalls,
        "herd": herd,
        "faults": faults,
    }
    for part in PARTS:
        if part in parts:
            results["measured"][part] = {"when": _now(), "command": results["command"]}
            results[part] = run[part]()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    write_doc(render(results))
    print(
        f"wrote {DOC.relative_to(ROOT)}, {PLOT.relative_to(ROOT)} and {RESULTS.relative_to(ROOT)}"
    )


if __name__ == "__main__":
    main()
