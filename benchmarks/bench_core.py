"""Core micro-benchmarks: the actor's forward in each format, and the registry's hot path.

usage: .venv/bin/python benchmarks/bench_core.py [--runs 3000] [--calls 200000]

(a) forward cost of the benchmark actor (32 -> 256 -> 256 -> 1, tanh; benchmarks/make_actor.py)
    in each format as the registry loads it, batch 1 and 64, median of `--runs` single calls;
(b) the hot path of `registry.get_model()` with check_interval=0 against a bare `os.stat` of the
    same file (goal: at most 2x), and with check_interval=0.1 (goal: under 0.3 us); median of 7
    repeats of `--calls` calls each.

Prints a Markdown report (machine, torch version, this command) for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import warnings
from pathlib import Path
from typing import Any

import torch

from ckptserve import ModelRegistry, publish, state_dict_loader

HERE = Path(__file__).resolve().parent
FORMATS = ("export", "torchscript", "state_dict", "safetensors")


def load_actor_class() -> type[torch.nn.Module]:
    spec = importlib.util.spec_from_file_location("make_actor", HERE / "make_actor.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Actor  # type: ignore[no-any-return]


Actor = load_actor_class()


def make_actor() -> torch.nn.Module:
    return Actor(32, 256, 2, 1)


def median_call_us(fn: Any, runs: int) -> float:
    for _ in range(min(200, runs)):
        fn()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(runs):
        t0 = clock()
        fn()
        samples.append(clock() - t0)
    return statistics.median(samples) / 1e3


def per_call_ns(stmt: str, namespace: dict[str, Any], calls: int) -> tuple[float, float]:
    """(median, min) over 7 repeats of `calls` calls, in ns per call."""
    timer = timeit.Timer(stmt, globals=namespace)
    timer.timeit(calls // 10)  # warm up
    runs = [t / calls * 1e9 for t in timer.repeat(repeat=7, number=calls)]
    return statistics.median(runs), min(runs)


def forward_costs(root: Path, runs: int) -> list[tuple[str, float, float]]:
    torch.manual_seed(0)
    actor = make_actor().eval()
    rows = []
    for fmt in FORMATS:
        directory = root / fmt
        publish(actor, directory, format=fmt)  # type: ignore[arg-type]
        loader = state_dict_loader(make_actor) if fmt in ("state_dict", "safetensors") else "auto"
        with ModelRegistry(directory / "actor_latest.pt", loader=loader) as registry:
            model = registry.get_model()
            cost = []
            for batch in (1, 64):
                state = torch.randn(batch, 32)
                with torch.inference_mode():
                    cost.append(median_call_us(lambda m=model, s=state: m(s, True), runs))
            rows.append((f"{fmt} ({type(model).__name__})", cost[0], cost[1]))
    # For reference, what the registry avoids for export files: the program's own module().
    pt2 = root / "reference.pt2"  # torch.export.load wants the .pt2 suffix
    pt2.write_bytes(next((root / "export").glob("actor_2*.pt")).read_bytes())
    program = torch.export.load(str(pt2))
    guarded = program.module()
    cost = []
    for batch in (1, 64):
        state = torch.randn(batch, 32)
        with torch.inference_mode():
            cost.append(median_call_us(lambda s=state: guarded(s), runs))
    rows.append(("export via ExportedProgram.module() (not served)", cost[0], cost[1]))
    return rows


def hot_path(root: Path, calls: int) -> dict[str, tuple[float, float]]:
    publish(make_actor().eval(), root / "hot", format="torchscript")
    path = str(root / "hot" / "actor_latest.pt")
    every_call = ModelRegistry(path)
    interval = ModelRegistry(path, check_interval=0.1)
    every_call.get_model(), interval.get_model()
    try:
        return {
            "os.stat(path)": per_call_ns("stat(p)", {"stat": os.stat, "p": path}, calls),
            "get_model(), check_interval=0": per_call_ns(
                "get()", {"get": every_call.get_model}, calls
            ),
            "get_model(), check_interval=0.1": per_call_ns(
                "get()", {"get": interval.get_model}, calls
            ),
            "registry.current (no check at all)": per_call_ns("r.current", {"r": interval}, calls),
        }
    finally:
        every_call.close()
        interval.close()


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3000, help="forward calls per median")
    parser.add_argument("--calls", type=int, default=200_000, help="get_model() calls per repeat")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch.jit's deprecation

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        forward = forward_costs(root, args.runs)
        hot = hot_path(root, args.calls)

    command = " ".join(["python", "benchmarks/bench_core.py", *sys.argv[1:]])
    print(f"Command: `{command}`  ")
    print(
        f"Machine: {os.cpu_count()} CPUs, {cpu_model()}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} intra-op threads; Python {platform.python_version()}\n"
    )
    print("| format as the registry loads it | batch 1 (µs) | batch 64 (µs) |")
    print("|---|---:|---:|")
    for name, b1, b64 in forward:
        print(f"| {name} | {b1:.1f} | {b64:.1f} |")
    stat = hot["os.stat(path)"][0]
    print("\n| hot path | ns per call (median) | min of 7 | median vs os.stat |")
    print("|---|---:|---:|---:|")
    for name, (ns, low) in hot.items():
        print(f"| {name} | {ns:.0f} | {low:.0f} | {ns / stat:.2f}x |")
    ratio = hot["get_model(), check_interval=0"][0] / stat
    gated = hot["get_model(), check_interval=0.1"][0]
    print(
        f"\nGoals: check_interval=0 at most 2x os.stat: {ratio:.2f}x "
        f"({'met' if ratio <= 2 else 'MISSED'}); check_interval=0.1 under 300 ns: {gated:.0f} ns "
        f"({'met' if gated < 300 else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
