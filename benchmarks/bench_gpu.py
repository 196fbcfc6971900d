"""GPU figures for `--device cuda` (issue 16, item 3): forward p50 at batch 1 and 64, swap time,
publish -> first answer (freshness) and the device-memory peak of a swap, with the core package
only (no server packages), its own checkpoints, in one run of a few minutes.

    python benchmarks/bench_gpu.py [--device cuda] [--sizes 10,100,1000] [--formats ...]
        [--swaps background,sync] [--calls 2000] [--budget 420] [--out benchmarks/results/gpu]

Needs torch, numpy and safetensors (the core's dependencies); imports `ckptserve` from this
checkout's `src/` (nothing to install) and `make_actor.py` / `sized_actor.py` from this folder.
Without a CUDA device it says so and exits 0. `--device cpu` runs the same steps on the CPU (to
check the script; no device memory figures).

Forward: the benchmark actor (32 -> 256 -> 256 -> 1) published in each format and loaded by a
`ModelRegistry(device=...)`; median of `--calls` calls, each synchronised: the state already on
the device ("resident"), and from host memory with the action copied back ("end to end", what a
request pays). For reference, the same module replayed from a CUDA graph (what an option for
CUDA graphs on small policies would give).

Swap: for each swap mode, format and size (`sized_actor.py`: a table sets the size, the forward
stays cheap) a registry serves checkpoint A while a request thread calls `registry.get()` and the
model (state from host, action back) in a loop; checkpoint B, written beforehand, is then put in
place the way `publish()` finishes (file moved in, `actor_latest.pt` symlink replaced). Figures:
the load's duration (the registry's history), publish -> first answer from B, the latency of that
first answer and the slowest request in the swap window against the steady p50, and the device
memory peak of the window (`torch.cuda.max_memory_allocated`) and what stays allocated after,
both as multiples of one model's weights. `--budget` seconds bound the run: parts that would
start after it are listed as skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if (ROOT / "src" / "ckptserve").is_dir():
    sys.path.insert(0, str(ROOT / "src"))  # this checkout's core, installed or not
sys.path.insert(0, str(HERE))

FORMATS = ("export", "torchscript", "state_dict", "safetensors")
WEIGHTS = ("state_dict", "safetensors")
MB = 1e6


def _load_actor_module() -> Any:
    spec = importlib.util.spec_from_file_location("make_actor", HERE / "make_actor.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Timer:
    """Median wall time of a callable, synchronising the device after each call."""

    def __init__(self, torch: Any, device: str) -> None:
        self.sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def p50_us(self, fn: Any, calls: int) -> float:
        for _ in range(min(100, calls)):
            fn()
        self.sync()
        samples = []
        clock = time.perf_counter_ns
        for _ in range(calls):
            t0 = clock()
            fn()
            self.sync()
            samples.append(clock() - t0)
        return statistics.median(samples) / 1e3


def forward_part(
    torch: Any, work: Path, device: str, formats: list[str], calls: int
) -> list[dict[str, Any]]:
    from ckptserve import ModelRegistry, publish, state_dict_loader

    actor_mod = _load_actor_module()

    def make() -> Any:
        return actor_mod.Actor(32, 256, 2, 1)

    torch.manual_seed(0)
    actor = make().eval()
    timer = Timer(torch, device)
    out = []
    for fmt in formats:
        row: dict[str, Any] = {"format": fmt}
        try:
            directory = work / f"forward-{fmt}"
            publish(actor, directory, format=fmt)
            loader = state_dict_loader(make) if fmt in WEIGHTS else "auto"
            with ModelRegistry(directory / "actor_latest.pt", device, loader=loader) as registry:
                t0 = time.perf_counter()
                live = registry.get()
                row["first_load_s"] = time.perf_counter() - t0
                model = live.model
                row["type"] = type(model).__name__
                with torch.inference_mode():
                    for b in (1, 64):
                        x_dev = torch.randn(b, 32, device=device)
                        x_host = torch.randn(b, 32)
                        row[f"resident_b{b}_us"] = timer.p50_us(
                            lambda m=model, x=x_dev: m(x, True), calls
                        )
                        row[f"e2e_b{b}_us"] = timer.p50_us(
                            lambda m=model, x=x_host: m(x.to(device), True)[0].cpu(), calls)  # fmt: skip
        except Exception as exc:  # one format failing must not hide the others' figures
            row["error"] = f"{type(exc).__name__}: {exc}"
        out.append(row)
    if device.startswith("cuda"):
        out.append(cuda_graph_reference(torch, make, device, timer, calls))
    return out


def cuda_graph_reference(
    torch: Any, make: Any, device: str, timer: Timer, calls: int
) -> dict[str, Any]:
    row: dict[str, Any] = {"format": "reference: the eager module replayed from a CUDA graph"}
    try:
        torch.manual_seed(0)
        module = make().eval().to(device)
        for b in (1, 64):
            static_in = torch.zeros(b, 32, device=device)
            with torch.inference_mode():
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for _ in range(3):
                        module(static_in, True)
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    static_out = module(static_in, True)[0]
                x_host = torch.randn(b, 32)

                def replay(
                    g: Any = graph, i: Any = static_in, o: Any = static_out, x: Any = x_host
                ) -> Any:
                    i.copy_(x)
                    g.replay()
                    return o.cpu()

                row[f"resident_b{b}_us"] = timer.p50_us(graph.replay, calls)
                row[f"e2e_b{b}_us"] = timer.p50_us(replay, calls)
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
    return row


class RequestLoop(threading.Thread):
    """Calls registry.get() and the model in a loop (state from host, action back), recording
    (start ns, end ns, sha256) per call, until stopped."""

    def __init__(self, torch: Any, registry: Any, device: str) -> None:
        super().__init__(daemon=True)
        self.torch, self.registry, self.device = torch, registry, device
        self.rows: list[tuple[int, int, str]] = []
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        torch, x = self.torch, self.torch.zeros(1, 32)
        clock = time.monotonic_ns
        try:
            with torch.inference_mode():
                while not self.halt.is_set():
                    t0 = clock()
                    live = self.registry.get()
                    live.model(x.to(self.device), True)[0].cpu()
                    self.rows.append((t0, clock(), live.version.sha256))
        except BaseException as exc:
            self.error = exc

    def sees(self, sha256: str) -> bool:
        rows = self.rows
        return bool(rows) and rows[-1][2] == sha256


def put_in_place(staged: Path, directory: Path) -> int:
    """The end of publish(): the checkpoint moved in, then the `actor_latest.pt` symlink replaced
    atomically; returns when that was done (monotonic ns)."""
    target = directory / staged.name
    shutil.move(str(staged), target)
    tmp = directory / ".actor_latest.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target.name, tmp)
    os.replace(tmp, directory / "actor_latest.pt")
    return time.monotonic_ns()


def stage(torch: Any, fmt: str, table: int, seed: int, where: Path) -> tuple[Path, str, int]:
    import hashlib

    import sized_actor

    from ckptserve import publish

    model = sized_actor.seeded(table, seed)
    weight = sized_actor.weight_bytes(model)
    path = publish(model, where, format=fmt, metadata=sized_actor.meta(table), keep=10)
    del model
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return path, digest.hexdigest(), weight


def swap_one(torch: Any, work: Path, device: str, swap: str, fmt: str, mb: float) -> dict[str, Any]:
    import sized_actor

    from ckptserve import ModelRegistry, state_dict_loader

    cuda = device.startswith("cuda")
    table = sized_actor.table_for(mb)
    directory, staging = work / f"swap-{swap}-{fmt}-{mb:g}", work / f"staging-{swap}-{fmt}-{mb:g}"
    row: dict[str, Any] = {"swap": swap, "format": fmt, "size_mb": mb}
    try:
        first, _, weight = stage(torch, fmt, table, 1, staging)
        directory.mkdir(parents=True)
        put_in_place(first, directory)
        staged, sha_b, _ = stage(torch, fmt, table, 2, staging)
        row["file_mb"] = staged.stat().st_size / MB
        loader = state_dict_loader(sized_actor.build) if fmt in WEIGHTS else "auto"
        registry = ModelRegistry(directory / "actor_latest.pt", device, loader=loader, swap=swap)
        try:
            registry.get()
            loop = RequestLoop(torch, registry, device)
            loop.start()
            time.sleep(0.5)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats(device)
            before_alloc = torch.cuda.memory_allocated(device) if cuda else 0
            steady = [(b - a) / 1e3 for a, b, _ in loop.rows[len(loop.rows) // 2 :]]
            window_start = time.monotonic_ns()
            returned = put_in_place(staged, directory)
            deadline = time.monotonic() + 300
            while not loop.sees(sha_b):
                if loop.error is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"B never answered: {loop.error!r}")
                time.sleep(0.001)
            time.sleep(0.3)
            loop.halt.set()
            loop.join(60)
            if cuda:
                torch.cuda.synchronize()
                row["device_before_x"] = before_alloc / weight
                row["device_peak_x"] = torch.cuda.max_memory_allocated(device) / weight
                row["device_after_x"] = torch.cuda.memory_allocated(device) / weight
            rows = loop.rows
            first_b = next(r for r in rows if r[2] == sha_b)
            window = [(b - a) / 1e3 for a, b, _ in rows if b >= window_start]
            loads = [a.duration for a in registry.history if a.sha256 == sha_b and a.result == "ok"]
            row.update({
                "weight_mb": weight / MB,
                "load_s": loads[-1] if loads else float("nan"),
                "fresh_s": (first_b[1] - returned) / 1e9,
                "first_answer_us": (first_b[1] - first_b[0]) / 1e3,
                "steady_p50_us": statistics.median(steady) if steady else float("nan"),
                "window_max_us": max(window, default=float("nan")),
                "requests": len(rows),
            })  # fmt: skip
        finally:
            registry.close()
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
        if cuda:
            torch.cuda.empty_cache()
    return row


def _f(v: Any, scale: float = 1.0, digits: int = 1) -> str:
    if v is None or not isinstance(v, (int, float)) or v != v:
        return "-"
    return f"{v * scale:,.{digits}f}"


def render(info: dict[str, Any], forward: list[dict[str, Any]], swaps: list[dict[str, Any]],
           skipped: list[str], seconds: float) -> str:  # fmt: skip
    title = "# GPU figures (benchmarks/bench_gpu.py)"
    if not info["device"].startswith("cuda"):
        title += f" — {info['device'].upper()} RUN: checks the script, these are not GPU figures"
    lines = [title, "",
             f"Measured {info['when']} by `python benchmarks/bench_gpu.py {' '.join(info['argv'])}` "
             f"({seconds:.0f} s) on {info['device_name']}; torch {info['torch']} (CUDA "
             f"{info['cuda']}), Python {info['python']}, {info['cpus']} CPUs.", "",
             "## Forward p50 (µs)", "",
             "| format (as loaded) | resident b=1 | resident b=64 | end to end b=1 | end to end b=64 | first load |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in forward:
        if "error" in r:
            lines.append(f"| {r['format']} | error: {r['error'][:200]} | | | | |")
            continue
        name = f"{r['format']} ({r['type']})" if "type" in r else r["format"]
        lines.append(f"| {name} | {_f(r.get('resident_b1_us'))} | {_f(r.get('resident_b64_us'))} | "
                     f"{_f(r.get('e2e_b1_us'))} | {_f(r.get('e2e_b64_us'))} | "
                     f"{_f(r.get('first_load_s'), 1e3)} ms |")  # fmt: skip
    lines += ["", "## Swaps under a request loop", "",
              "| swap | format | size MB | load ms | publish → first answer ms | first answer ms | "
              "steady p50 µs | slowest in window ms | device before / peak / after (x one model) |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for r in swaps:
        if "error" in r:
            lines.append(
                f"| {r['swap']} | {r['format']} | {r['size_mb']:g} | error: {r['error'][:200]} | | | | | |"
            )
            continue
        dev = (f"{_f(r.get('device_before_x'), digits=2)} / {_f(r.get('device_peak_x'), digits=2)} / "
               f"{_f(r.get('device_after_x'), digits=2)}") if "device_peak_x" in r else "-"  # fmt: skip
        lines.append(f"| {r['swap']} | {r['format']} | {_f(r['file_mb'])} | {_f(r['load_s'], 1e3)} | "
                     f"{_f(r['fresh_s'], 1e3)} | {_f(r['first_answer_us'], 1e-3, 2)} | "
                     f"{_f(r['steady_p50_us'])} | {_f(r['window_max_us'], 1e-3, 2)} | {dev} |")  # fmt: skip
    if skipped:
        lines += ["", f"Skipped (past the {info['budget']:g} s budget): {', '.join(skipped)}."]
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (to check the script)")
    p.add_argument("--sizes", default="10,100,1000", help="checkpoint sizes in MB for the swaps")
    p.add_argument("--formats", default=",".join(FORMATS))
    p.add_argument("--swaps", default="background,sync")
    p.add_argument("--calls", type=int, default=2000, help="calls per forward median")
    p.add_argument("--budget", type=float, default=420.0, help="seconds; later parts are skipped")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu"),
                   help="write OUT.md and OUT.json")  # fmt: skip
    args = p.parse_args()
    started = time.monotonic()
    try:
        import torch
    except ImportError as exc:
        sys.exit(f"bench_gpu: torch is not importable ({exc}); nothing measured")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"bench_gpu: no CUDA device here (torch {torch.__version__}, CUDA build "
              f"{torch.version.cuda or 'none'}, torch.cuda.is_available() is False): nothing "
              "measured. Run it on a machine with a GPU, or `--device cpu` to check the script.")  # fmt: skip
        return
    try:
        import ckptserve  # noqa: F401
    except ImportError as exc:
        sys.exit(f"bench_gpu: the ckptserve core does not import ({exc}); it needs torch, numpy "
                 "and safetensors")  # fmt: skip
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    formats = [f for f in args.formats.split(",") if f]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        sys.exit(f"unknown format(s) {', '.join(unknown)}: choose from {', '.join(FORMATS)}")
    cuda = args.device.startswith("cuda")
    info = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "argv": sys.argv[1:],
        "device": args.device, "budget": args.budget,
        "device_name": torch.cuda.get_device_name(args.device) if cuda else f"CPU ({platform.processor() or 'unknown'})",
        "torch": torch.__version__, "cuda": torch.version.cuda or "none",
        "python": platform.python_version(), "cpus": os.cpu_count(),
    }  # fmt: skip
    swaps: list[dict[str, Any]] = []
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ckptserve-bench-gpu-") as tmp:
        work = Path(tmp)
        print("forward ...", file=sys.stderr, flush=True)
        forward = forward_part(torch, work, args.device, formats, args.calls)
        for mb in sorted(float(s) for s in args.sizes.split(",") if s):
            for swap in [s for s in args.swaps.split(",") if s]:
                for fmt in formats:
                    name = f"{swap}/{fmt}/{mb:g} MB"
                    if time.monotonic() - started > args.budget:
                        skipped.append(name)
                        continue
                    print(f"swap {name} ...", file=sys.stderr, flush=True)
                    row = swap_one(torch, work, args.device, swap, fmt, mb)
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    swaps.append(row)
    seconds = time.monotonic() - started
    text = render(info, forward, swaps, skipped, seconds)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps({**info, "seconds": seconds, "forward": forward,
                                                    "swaps": swaps, "skipped": skipped}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
