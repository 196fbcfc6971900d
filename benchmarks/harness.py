"""Shared pieces of the HTTP benchmarks: start a server pinned to one CPU, load it with wrk pinned
to the other, parse wrk's numbers, print markdown tables. Imported by the bench_*.py scripts."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
SERVER_CPUS = os.environ.get("SERVER_CPUS", "1")
LOAD_CPUS = os.environ.get("LOAD_CPUS", "0")
POST_LUA = HERE / "post.lua"


def machine() -> str:
    """`lscpu` model name and the CPU count, for the tables' captions."""
    name = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                name = line.split(":", 1)[1].strip()
    return f"{name}, {os.cpu_count()} cores"


def make_actor(out: Path, *extra: str) -> Path:
    """The benchmark actor (`make_actor.py`), written once per path."""
    if not out.exists():
        subprocess.run([sys.executable, str(HERE / "make_actor.py"), str(out), *extra], check=True)
    return out


def body_file(directory: Path, payload: object, name: str) -> Path:
    path = directory / name
    path.write_bytes(json.dumps(payload).encode())
    return path


def _post(url: str, body: bytes, headers: dict[str, str] | None = None) -> int:
    req = urllib.request.Request(url, data=body, method="POST")
    req.add_header("content-type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


class Server:
    """A server command in its own process group, pinned with taskset; stopped on exit."""

    def __init__(self, cmd: Sequence[str], url: str, body: bytes, *, cpus: str = SERVER_CPUS,
                 env: dict[str, str] | None = None, cwd: Path | None = None,
                 ready_timeout: float = 90.0) -> None:  # fmt: skip
        self.cmd = ["taskset", "-c", cpus, *cmd]
        self.url = url
        self.body = body
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.ready_timeout = ready_timeout
        self.log = tempfile.NamedTemporaryFile(prefix="bench-server-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=self.env, cwd=self.cwd, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if 200 <= _post(self.url, self.body) < 300:
                return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = Path(self.log.name).read_text(errors="replace")[-600:]
                raise RuntimeError(f"server not ready: {' '.join(self.cmd)}\n{tail}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # the group may outlive its leader (uvicorn workers)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None

    def __exit__(self, *exc: object) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)


@dataclass
class Row:
    name: str
    concurrency: int
    rps: float
    p50: float  # seconds
    p99: float
    non2xx: int
    errors: str
    cpu_us: float = float("nan")  # server CPU time per request (robust to a noisy machine)


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _seconds(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if not m:
        return float("nan")
    return float(m.group(1)) * _UNITS[m.group(2)]


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of every process in a process group (from /proc)."""
    total = 0
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid:  # field 5: pgrp
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def wrk(url: str, body: Path, concurrency: int, duration: float, name: str = "",
        server: Server | None = None, *, script: Path = POST_LUA,
        env: dict[str, str] | None = None) -> Row:  # fmt: skip
    """One wrk run (one thread, `concurrency` connections) pinned to LOAD_CPUS; with `server`,
    also the server's CPU time per request. `script` and `env` change the wrk script (default:
    POST the file `body` names)."""
    cmd = ["taskset", "-c", LOAD_CPUS, "wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s",
           "--latency", "-s", str(script), url]  # fmt: skip
    pgid = server.proc.pid if server is not None and server.proc is not None else None
    cpu0 = group_cpu_seconds(pgid) if pgid else 0.0
    out = subprocess.run(cmd, capture_output=True, text=True,
                         env={**os.environ, "BODY": str(body), **(env or {})}, check=True).stdout  # fmt: skip
    cpu = group_cpu_seconds(pgid) - cpu0 if pgid else float("nan")
    rps = p50 = p99 = float("nan")
    requests = 0
    bad, errors = 0, "-"
    for line in out.splitlines():
        parts = line.split()
        if "requests in" in line:
            requests = int(parts[0])
        elif line.startswith("Requests/sec"):
            rps = float(parts[1])
        elif re.match(r"^\s+50%", line):
            p50 = _seconds(parts[1])
        elif re.match(r"^\s+99%", line):
            p99 = _seconds(parts[1])
        elif "Non-2xx" in line:
            bad = int(parts[-1])
        elif "Socket errors" in line:
            errors = line.split("errors:", 1)[1].strip()
    cpu_us = cpu / requests * 1e6 if requests else float("nan")
    return Row(name, concurrency, rps, p50, p99, bad, errors, cpu_us)


def fmt_time(seconds: float) -> str:
    if seconds != seconds:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def median(values: Sequence[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def ckptserve_cmd(*args: str) -> list[str]:
    return [str(BIN / "ckptserve"), "serve", *args, "--log-level", "warning"]


def uvicorn_cmd(app: str, port: int) -> list[str]:
    return [str(BIN / "uvicorn"), "--app-dir", str(HERE / "peers"), app, "--port", str(port),
            "--log-level", "warning", "--no-access-log"]  # fmt: skip


@contextlib.contextmanager
def workdir(keep: str | None = None) -> Iterator[Path]:
    path = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="ckptserve-bench-"))
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


# ---- pieces shared by the curve scripts (bench_sizes, bench_models, bench_scaling, bench_peers) ----


def free_port(span: int = 1) -> int:
    """A loopback port that is free now, and so are the `span - 1` ports after it."""
    import socket

    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + span > 65535:
            continue
        try:
            for extra in range(1, span):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + extra))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port range found")


def get_json(url: str, timeout: float = 5.0) -> object:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def scrape(url: str) -> dict[str, float]:
    """A Prometheus text exposition as {'name{labels}': value} (the labels exactly as written)."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[key] = float(value)
    return out


def lag_buckets(metrics: dict[str, float]) -> dict[float, float]:
    """`ckptserve_event_loop_lag_seconds` as {bucket upper bound: cumulative count}."""
    out: dict[float, float] = {}
    for key, value in metrics.items():
        if key.startswith("ckptserve_event_loop_lag_seconds_bucket{"):
            le = re.search(r'le="([^"]+)"', key)
            if le:
                out[float("inf") if le.group(1) == "+Inf" else float(le.group(1))] = value
    return out


def worst_lag(before: dict[float, float], after: dict[float, float]) -> float:
    """The upper bound of the highest lag bucket that gained ticks between two scrapes (seconds;
    0 when no tick landed). The buckets are the resolution: 1, 2, 3, 5, 7.5, 10, 15, 20, 30 ms..."""
    worst, previous = 0.0, 0.0
    for le in sorted(after):
        gained = after[le] - before.get(le, 0.0)
        if gained - previous > 0:
            worst = le
        previous = gained
    return worst


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of a process in bytes (from /proc/PID/status)."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak_rss(pid: int) -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0: clear_refs 5);
    False where that is not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def versions() -> dict[str, str]:
    """ckptserve (package version and git commit of this checkout), Python and torch."""
    import platform

    import torch

    import ckptserve

    rev = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    return {"ckptserve": f"{ckptserve.__version__} (commit {rev})",
            "python": platform.python_version(), "torch": torch.__version__}  # fmt: skip


def now_utc() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


DOC = ROOT / "docs" / "benchmarks.md"


def write_doc_block(name: str, text: str, doc: Path = DOC) -> None:
    """Replace what docs/benchmarks.md holds between `<!-- NAME:begin -->` and `<!-- NAME:end -->`
    with `text` (the scripts' `--docs`)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    old = doc.read_text()
    if begin not in old or end not in old:
        raise SystemExit(f"{doc} has no {begin} ... {end} block")
    if text.startswith("# "):  # the results file's title: the docs' own heading stands for it
        text = text.split("\n", 1)[1]
    head, rest = old.split(begin, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{begin}\n{text.strip()}\n{end}{tail}")
    print(f"updated the {name} block of {doc}", file=sys.stderr)


def results_path(name: str, given: str | None, smoke: bool) -> Path:
    """Where a run writes NAME.md / NAME.json: `given`, else benchmarks/results/NAME, except that
    a smoke run does not overwrite the record there (it writes to $TMPDIR/ckptserve-smoke/)."""
    if given:
        return Path(given)
    if smoke:
        return Path(tempfile.gettempdir()) / "ckptserve-smoke" / name
    return ROOT / "benchmarks" / "results" / name


def save_results(name: str, given: str | None, smoke: bool, text: str, raw: dict[str, Any], *,
                 docs: bool = False, block: str | None = None) -> Path:  # fmt: skip
    """Write NAME.md (`text`) and NAME.json (`raw`, after when / argv / machine) where
    `results_path` says, and with `docs` the text into the marked block `block` of the docs."""
    out = results_path(name, given, smoke)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    record = {"when": now_utc(), "argv": sys.argv[1:], "machine": machine(), **raw}
    out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    if docs:
        write_doc_block(block or f"bench-{name}", text)
    return out


def plot_path(name: str, given: str | None, docs: bool, results: Path) -> Path:
    """The plot: `given`, else docs/bench_NAME.png with `--docs`, else beside the results."""
    if given:
        return Path(given)
    return ROOT / "docs" / f"bench_{name}.png" if docs else results.with_suffix(".png")


def log_axis(axis: object) -> None:
    """A log-scale matplotlib axis labelled 1, 2, 5, 10, 20, 50 ... in plain numbers."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # type: ignore[attr-defined]
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # type: ignore[attr-defined]
    axis.set_minor_formatter(NullFormatter())  # type: ignore[attr-defined]
