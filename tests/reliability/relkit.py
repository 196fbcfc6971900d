"""Reliability kit: staged checkpoints (good and bad), a chaos writer process, a raw-socket load
generator, /metrics parsing and RSS sampling. Used by tests/reliability and benchmarks/soak.py.

Everything is bounded: the writer stops after its duration and one event of every kind, the load
generator after its duration or its request budget, whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import sys
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

SERVER_TESTS = Path(__file__).resolve().parent.parent / "server"
if str(SERVER_TESTS) not in sys.path:
    sys.path.insert(0, str(SERVER_TESTS))

import torch  # noqa: E402
from serverkit import OBS_DIM, TinyActor, seeded, torch_script  # noqa: E402

from ckptserve import publish  # noqa: E402

#: The chaos mixed in between good publishes, in this order, round after round.
CHAOS = (
    "torn",
    "truncated",
    "garbage",
    "wrong_shape",
    "nan",
    "delete",
    "same_mtime",
    "symlink",
    "rollback",
    "fifo",
    "dev_zero",
    "zip_bomb",
)


class WideActor(TinyActor):
    """Two actions where the server expects one: must be rejected."""

    def __init__(self) -> None:
        super().__init__()
        self.mu = torch.nn.Linear(8, 2)

    def forward(
        self, state: torch.Tensor, deterministic: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tanh(self.mu(self.body(state))), torch.zeros(state.shape[0], 1)


class NanActor(TinyActor):
    """Outputs NaN for every state: must be rejected by the probe."""

    def forward(
        self, state: torch.Tensor, deterministic: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        action = torch.tanh(self.mu(self.body(state)))
        return action * float("nan"), torch.zeros(state.shape[0], 1)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Staging:
    """Checkpoints prepared before the run: `good` (their sha256 are the only ones allowed in a
    response) and the bad ones the writer mixes in."""

    root: Path
    good: list[Path] = field(default_factory=list)
    bad: dict[str, Path] = field(default_factory=dict)

    @property
    def good_sha(self) -> set[str]:
        return {sha256_file(p) for p in self.good}

    @property
    def bad_sha(self) -> set[str]:
        return {sha256_file(p) for p in self.bad.values()}


def _save_script(module: torch.nn.Module, path: Path) -> Path:
    torch.jit.save(torch_script(module), str(path))
    return path


def stage(root: Path, n_good: int = 6) -> Staging:
    """Write `n_good` distinct good TorchScript actors and one of each bad kind under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    s = Staging(root)
    for i in range(n_good):
        published = publish(torch_script(seeded(100 + i)), root / f"pub{i}")
        s.good.append(Path(shutil.copy(published, root / f"good{i}.pt")))
    torch.manual_seed(7)
    s.bad["wrong_shape"] = _save_script(WideActor().eval(), root / "wrong_shape.pt")
    s.bad["nan"] = _save_script(NanActor().eval(), root / "nan.pt")
    data = s.good[0].read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 2])
    s.bad["truncated"] = root / "truncated.pt"
    (root / "garbage.pt").write_bytes(random.Random(3).randbytes(len(data)))
    s.bad["garbage"] = root / "garbage.pt"
    (root / "zip_bomb.pt").write_bytes(zip_bomb())
    s.bad["zip_bomb"] = root / "zip_bomb.pt"
    return s


# ---- the chaos writer (a separate process) -------------------------------------------------


def _replace_with(src: Path, target: Path, *, mtime_ns: int | None = None) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.copyfile(src, tmp)
    if mtime_ns is not None:
        os.utime(tmp, ns=(mtime_ns, mtime_ns))
    os.replace(tmp, target)


def _torn(src: Path, target: Path, seconds: float, rnd: random.Random) -> None:
    """Write `src` over `target` in place, in chunks, slowly: readers see every partial state."""
    data = src.read_bytes()
    chunks = 8
    step = -(-len(data) // chunks)
    if target.is_symlink() or not target.exists():
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        target.touch()
    with open(target, "r+b") as f:
        f.truncate(0)
        for i in range(chunks):
            f.write(data[i * step : (i + 1) * step])
            f.flush()
            time.sleep(seconds / chunks * rnd.uniform(0.5, 1.5))


def _retarget(link: Path, to: Path) -> None:
    tmp = link.with_name(f".{link.name}.{os.getpid()}.lnk")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(to, tmp)
    os.replace(tmp, link)


def _replace_with_fifo(target: Path) -> None:
    """The watched path replaced by a FIFO: a reader that opens it blocking waits forever."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.fifo")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.mkfifo(tmp)
    os.replace(tmp, target)


def zip_bomb(inflated: int = 64 << 20) -> bytes:
    """A TorchScript-looking zip whose one deflated member inflates to `inflated` bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/constants.pkl", b"\0" * inflated)
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    return buf.getvalue()


def writer_main(target: str, staging_root: str, duration: float, seed: int,
                pace: float, log_path: str) -> None:  # fmt: skip
    """The chaos writer: good publishes with every kind of CHAOS mixed in, for `duration` s and
    at least one of each.
    Appends one JSON line per event to `log_path`."""
    rnd = random.Random(seed)
    tgt = Path(target)
    root = Path(staging_root)
    good = sorted(root.glob("good*.pt"))
    bad = {name: root / f"{name}.pt"
           for name in ("wrong_shape", "nan", "truncated", "garbage", "zip_bomb")}  # fmt: skip
    # Targets for the symlink and rollback events live next to the watched file.
    links = []
    for i, g in enumerate(good):
        dst = tgt.with_name(f"actor_link{i}.pt")
        shutil.copyfile(g, dst)
        links.append(dst)
    old = tgt.with_name("actor_old.pt")
    shutil.copyfile(good[0], old)
    os.utime(old, ns=(1_000_000_000, 1_000_000_000))  # an old file: mtime in 2001
    deadline = time.monotonic() + duration
    n = 0
    with open(log_path, "a") as log:
        while time.monotonic() < deadline or n < 2 * len(CHAOS):
            kind = "good" if n % 2 == 0 else CHAOS[(n // 2) % len(CHAOS)]
            pick = rnd.choice(good)
            t = time.time()
            if kind == "good":
                _replace_with(pick, tgt)
            elif kind == "torn":
                _torn(pick, tgt, min(0.4, pace), rnd)
            elif kind in bad:
                _replace_with(bad[kind], tgt)
            elif kind == "delete":
                with contextlib.suppress(FileNotFoundError):
                    tgt.unlink()
            elif kind == "same_mtime":
                try:
                    mtime = tgt.stat().st_mtime_ns
                except FileNotFoundError:
                    mtime = None
                _replace_with(pick, tgt, mtime_ns=mtime)
            elif kind == "symlink":
                a, b = rnd.sample(links, 2)
                _retarget(tgt, a)
                time.sleep(pace / 2)
                _retarget(tgt, b)
            elif kind == "rollback":
                _replace_with(old, tgt, mtime_ns=1_000_000_000)
            elif kind == "fifo":
                _replace_with_fifo(tgt)
            elif kind == "dev_zero":
                _retarget(tgt, Path("/dev/zero"))
            elif kind == "zip_bomb":
                _replace_with(bad["zip_bomb"], tgt)
            log.write(json.dumps({"t": t, "kind": kind}) + "\n")
            log.flush()
            n += 1
            time.sleep(pace * rnd.uniform(0.5, 1.5))


def start_writer(target: Path, staging: Staging, duration: float, *, seed: int = 0,
                 pace: float = 0.2, log_path: Path) -> multiprocessing.process.BaseProcess:  # fmt: skip
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(
        target=writer_main,
        args=(str(target), str(staging.root), duration, seed, pace, str(log_path)),
        daemon=True,
    )
    proc.start()
    return proc


def writer_events(log_path: Path) -> Counter[str]:
    if not log_path.exists():
        return Counter()
    return Counter(json.loads(line)["kind"] for line in log_path.read_text().splitlines() if line)


# ---- the load generator ---------------------------------------------------------------------

_SHA = re.compile(rb'"sha256":"([0-9a-f]{64})"')
_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")


@dataclass
class LoadStats:
    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    shas: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    non2xx: list[tuple[float, int, bytes]] = field(default_factory=list)
    pids: Counter[str] = field(default_factory=Counter)
    started: float = 0.0
    elapsed: float = 0.0

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def max_latency(self) -> float:
        return max(self.latencies, default=0.0)

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> dict[str, Any]:
        return {
            "sent": self.sent, "ok": self.ok, "statuses": dict(self.statuses),
            "errors": dict(self.errors), "rps": round(self.sent / self.elapsed, 1)
            if self.elapsed else 0.0, "p50_ms": round(self.percentile(0.5) * 1e3, 2),
            "p99_ms": round(self.percentile(0.99) * 1e3, 2),
            "max_ms": round(self.max_latency * 1e3, 2), "distinct_sha": len(self.shas),
        }  # fmt: skip

    def add(self, more: LoadStats) -> None:
        """Count a later load's figures in with these."""
        self.sent += more.sent
        for mine, theirs in ((self.statuses, more.statuses), (self.errors, more.errors),
                             (self.shas, more.shas), (self.pids, more.pids)):  # fmt: skip
            mine.update(theirs)
        self.latencies += more.latencies
        self.non2xx += more.non2xx
        self.elapsed += more.elapsed


def _request(port: int, path: str, body: bytes, close: bool = False) -> bytes:
    conn = b"close" if close else b"keep-alive"
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode()
        + b"Content-Type: application/json\r\nConnection: "
        + conn
        + f"\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


async def _connection(port: int, request: bytes, stop_at: float, budget: list[int],
                      stats: LoadStats, new_conn_each: bool) -> None:  # fmt: skip
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    try:
        while budget[0] > 0 and time.monotonic() < stop_at:
            budget[0] -= 1
            started = time.perf_counter()
            stats.sent += 1
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", port), 10
                    )
                assert reader is not None
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                match = _LENGTH.search(head)
                length = int(match.group(1)) if match else 0
                body = await asyncio.wait_for(reader.readexactly(length), 30)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    TimeoutError, asyncio.TimeoutError) as exc:  # fmt: skip
                stats.errors[type(exc).__name__] += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
                await asyncio.sleep(0.01)
                continue
            latency = time.perf_counter() - started
            status = int(head[9:12])
            stats.statuses[status] += 1
            stats.latencies.append(latency)
            if status == 200:
                found = _SHA.search(body)
                stats.shas[found.group(1).decode() if found else "?"] += 1
            else:
                stats.non2xx.append((time.time(), status, body[:300]))
            if new_conn_each or b"connection: close" in head.lower():
                writer.close()
                reader = writer = None
    finally:
        if writer is not None:
            writer.close()


async def _load(port: int, path: str, body: bytes, concurrency: int, duration: float,
                max_requests: int, new_conn_each: bool) -> LoadStats:  # fmt: skip
    stats = LoadStats(started=time.time())
    request = _request(port, path, body, close=new_conn_each)
    stop_at = time.monotonic() + duration
    budget = [max_requests]
    t0 = time.perf_counter()
    await asyncio.gather(*(
        _connection(port, request, stop_at, budget, stats, new_conn_each)
        for _ in range(concurrency)
    ))  # fmt: skip
    stats.elapsed = time.perf_counter() - t0
    return stats


def run_load(port: int, *, path: str = "/rl/predict", body: bytes | None = None,
             concurrency: int = 32, duration: float = 10.0, max_requests: int = 2_000_000,
             new_conn_each: bool = False) -> LoadStats:  # fmt: skip
    """Send POST `path` from `concurrency` keep-alive connections until `duration` s or
    `max_requests` requests; a connection that fails is counted and reopened."""
    body = body if body is not None else json.dumps({"state": [0.1] * OBS_DIM}).encode()
    return asyncio.run(_load(port, path, body, concurrency, duration, max_requests, new_conn_each))


# ---- observing the server -------------------------------------------------------------------

_METRIC = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def metrics(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """/metrics as {(name, labels): value}."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        match = _METRIC.match(line)
        if not match:
            continue
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        out[match.group(1), labels] = float(match.group(3))
    return out


def reloads(url: str, model: str = "actor") -> dict[str, int]:
    """ckptserve_reloads_total by result (summed over workers by prometheus-client)."""
    found = {}
    for (name, labels), value in metrics(url).items():
        if name == "ckptserve_reloads_total" and ("model", model) in labels:
            found[dict(labels)["result"]] = int(value)
    return found


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def children(pid: int) -> list[int]:
    """Direct children of `pid` (uvicorn's workers under --workers N)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def deadline_loop(timeout: float, interval: float = 0.02) -> Any:
    """Yield until `timeout` s have passed (a bounded polling loop)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        yield
        time.sleep(interval)


# ---- the chaos run, shared by the test and the soak ----------------------------------------


def run_chaos(root: Path, *, swap: str = "sync", workers: int = 1, duration: float = 12.0,
              concurrency: int = 32, pace: float = 0.2, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """Serve `root/models/actor_latest.pt` while the chaos writer runs and the load generator
    sends /rl/predict; return the figures (see docs/reliability.md)."""
    from serverkit import ServerProcess

    staging = stage(root / "staging")
    models = root / "models"
    models.mkdir(parents=True, exist_ok=True)
    target = models / "actor_latest.pt"
    _replace_with(staging.good[0], target)
    args = [str(target), "--obs-dim", str(OBS_DIM), "--action-dim", "1", "--swap", swap,
            "--workers", str(workers), "--log-level", "warning"]  # fmt: skip
    server = ServerProcess(args, log=root / "server.log")
    writer = None
    try:
        server.wait_ready()
        log_path = root / "writer.jsonl"
        writer = start_writer(target, staging, duration, seed=seed, pace=pace, log_path=log_path)
        stats, after = _load_during(server, writer, concurrency, duration + 1, duration + 30)
    finally:
        _stop(writer, server)
    return {
        "swap": swap, "workers": workers, "duration_s": duration, "concurrency": concurrency,
        **stats.summary(), **_served(stats, staging.good_sha),
        "events": dict(writer_events(log_path)), **after,
    }  # fmt: skip


def _load_during(server: Any, writer: Any, concurrency: int, seconds: float,
                 join: float) -> tuple[LoadStats, dict[str, Any]]:  # fmt: skip
    """Send /rl/predict for `seconds` and on while the writer runs (it goes past its duration
    until it has done every kind of event once, which takes longer on a loaded machine), for at
    most `join` s more, then read what the server says about itself."""
    stats = run_load(server.port, concurrency=concurrency, duration=seconds)
    end = time.monotonic() + join
    while writer.is_alive() and time.monotonic() < end:
        stats.add(run_load(server.port, concurrency=concurrency, duration=1.0))
    writer.join(max(0.0, end - time.monotonic()))
    alive = server.client.get("/healthz").status_code == 200
    result = reloads(server.url)
    status = server.client.get("/rl/status").json()
    return stats, {"reloads": result, "alive_after": alive,
                   "last_error": (status.get("last_error") or {}).get("reason")}  # fmt: skip


def _stop(writer: Any, server: Any) -> None:
    if writer is not None and writer.is_alive():
        writer.kill()
        writer.join(10)
    server.stop()


def _served(stats: LoadStats, good: set[str]) -> dict[str, Any]:
    """Failed requests, and responses from a checkpoint that is not one of the `good` sha256s."""
    bad_served = {sha: n for sha, n in stats.shas.items() if sha not in good}
    return {
        "non_2xx": sum(n for s, n in stats.statuses.items() if not 200 <= s < 300),
        "non_2xx_samples": [(s, b.decode(errors="replace")) for _, s, b in stats.non2xx[:5]],
        "bad_sha_responses": sum(bad_served.values()),
        "good_versions_served": len(set(stats.shas) & good),
    }


# ---- the manifest chaos (publish() + {name}_latest.json, signed) ------------------------------

#: The manifest chaos mixed in between good publishes, in this order, round after round.
MANIFEST_CHAOS = (
    "sha_mismatch",
    "bitflip",
    "missing",
    "truncated_json",
    "garbage_json",
    "forged_signature",
    "unsigned",
    "wrong_shape",
    "nan",
    "rollback",
    "same_second",
    "nonascii_signature",
    "deep_json",
    "huge_int",
    "dev_zero_manifest",
    "fifo_checkpoint",
    "pin_swap",
)
#: The admin token of the manifest-chaos server: the writer pins and unpins through it.
ADMIN_TOKEN = "reliability-soak-admin"
#: The key the writer signs with and the server checks (CKPTSERVE_SIGNING_KEY).
SIGNING_KEY = "reliability-soak-key"

#: Loaded into the manifest-mode server as sitecustomize: drops st_ctime from the manifest's stat
#: key, as on a file system whose ctime cannot be relied on (coarse timestamps, NFS attribute
#: caching). ctime is the one field a writer cannot put back, so without this the server sees
#: the "same_second" rewrite at once and --verify-interval is never what catches it.
_NO_CTIME_SHIM = """\
import os

from ckptserve import sources


def _token(self):
    try:
        st = os.stat(self._str)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


sources.ManifestSource.token = _token
"""


def stage_rogue(root: Path, n: int = 3) -> list[Path]:
    """Valid actors nobody published: served only if a manifest check were skipped."""
    out = []
    for i in range(n):
        out.append(_save_script(seeded(900 + i), root / f"rogue{i}.pt"))
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_in_place(path: Path, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(data)


def _manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return json.dumps(manifest, indent=2, sort_keys=True).encode()


def _admin(url: str, method: str, body: dict[str, Any] | None = None) -> int:
    """One admin request to the chaos server (pin, unpin); its status."""
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{url}/rl/pin", data=data, method=method)
    request.add_header("authorization", f"Bearer {ADMIN_TOKEN}")
    request.add_header("content-type", "application/json")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def manifest_writer_main(directory: str, staging_root: str, duration: float, seed: int,
                         pace: float, settle: float, key: str, log_path: str,
                         ready: Any = None, url: str = "") -> None:  # fmt: skip
    """The manifest chaos writer: signed publishes with every kind of MANIFEST_CHAOS mixed in,
    for `duration` s and at least one of each. Appends one JSON line per event to `log_path`: its kind, the sha256s a
    response may carry because of it (`good`) and those it must not (`bad`)."""
    from ckptserve.manifest import sign_manifest

    rnd = random.Random(seed)
    models = Path(directory)
    root = Path(staging_root)
    manifest = models / "actor_latest.json"
    good = [torch.jit.load(str(p)) for p in sorted(root.glob("good*.pt"))]
    wide = torch.jit.load(str(root / "wrong_shape.pt"))
    nan = torch.jit.load(str(root / "nan.pt"))
    rogue = [p.read_bytes() for p in sorted(root.glob("rogue*.pt"))]
    published: list[dict[str, Any]] = []  # good manifests, oldest first, for rollbacks
    if ready is not None:
        ready.set()

    def put(module: Any, name: str = "actor") -> dict[str, Any]:
        publish(module, models, name=name, signing_key=key, metadata={"obs_dim": OBS_DIM})
        return dict(json.loads((models / f"{name}_latest.json").read_bytes()))

    def hostile(data: bytes, **fields: Any) -> dict[str, Any]:
        """A manifest for `data` written as hostile.pt; `fields` override the honest ones."""
        _write_atomic(models / "hostile.pt", data)
        m = {"checkpoint": "hostile.pt", "sha256": hashlib.sha256(data).hexdigest(),
             "size": len(data), "format": "torchscript", "metadata": {}}  # fmt: skip
        m["signature"] = sign_manifest(m, key)
        m.update(fields)
        return m

    deadline = time.monotonic() + duration
    n = 0
    with open(log_path, "a") as log:
        while time.monotonic() < deadline or n < 2 * len(MANIFEST_CHAOS):
            kind = "good" if n % 2 == 0 else MANIFEST_CHAOS[(n // 2) % len(MANIFEST_CHAOS)]
            event: dict[str, Any] = {"t": time.time(), "kind": kind, "good": [], "bad": []}
            data = rnd.choice(rogue)
            sha = hashlib.sha256(data).hexdigest()
            wait = pace * rnd.uniform(0.5, 1.5)
            if kind == "good":
                m = put(rnd.choice(good))
                published.append(m)
                event["good"].append(m["sha256"])
            elif kind == "sha_mismatch":
                m = hostile(data, sha256=hashlib.sha256(b"other bytes").hexdigest())
                m["signature"] = sign_manifest(m, key)  # signed: only the digest gives it away
                _write_atomic(manifest, _manifest_bytes(m))
                event["bad"].append(sha)
            elif kind == "bitflip":
                # Published and signed, then one bit of the checkpoint flips before the
                # manifest goes live: the server never sees the bytes the manifest describes.
                m = put(rnd.choice(good), name="flip")
                checkpoint = models / m["checkpoint"]
                flipped = bytearray(checkpoint.read_bytes())
                flipped[rnd.randrange(len(flipped))] ^= 1 << rnd.randrange(8)
                _write_in_place(checkpoint, bytes(flipped))
                _write_atomic(manifest, _manifest_bytes(m))
                event["bad"].append(hashlib.sha256(flipped).hexdigest())
            elif kind == "missing":
                m = hostile(data, checkpoint="actor_19990101_000000.pt")
                m["signature"] = sign_manifest(m, key)
                _write_atomic(manifest, _manifest_bytes(m))
            elif kind == "truncated_json":
                text = manifest.read_bytes()
                _write_in_place(manifest, text[: len(text) // 2])
            elif kind == "garbage_json":
                _write_in_place(manifest, rnd.randbytes(400))
            elif kind == "forged_signature":
                m = hostile(data)
                m["signature"] = sign_manifest(m, "not the key")
                _write_atomic(manifest, _manifest_bytes(m))
                event["bad"].append(sha)
            elif kind == "unsigned":
                m = hostile(data)
                del m["signature"]
                _write_atomic(manifest, _manifest_bytes(m))
                event["bad"].append(sha)
            elif kind in ("wrong_shape", "nan"):
                m = put(wide if kind == "wrong_shape" else nan)
                event["bad"].append(m["sha256"])
            elif kind == "rollback":
                # An older good manifest whose checkpoint retention has not removed yet.
                older = [m for m in published[:-1] if (models / m["checkpoint"]).exists()]
                m = rnd.choice(older) if older else published[-1]
                _write_atomic(manifest, _manifest_bytes(m))
                event["good"].append(m["sha256"])
            elif kind == "nonascii_signature":
                m = hostile(data)
                m["signature"] = "\u00e9" * 64
                _write_atomic(manifest, _manifest_bytes(m))
                event["bad"].append(sha)
            elif kind == "deep_json":
                _write_atomic(manifest, b"[" * 100_000 + b"]" * 100_000)
            elif kind == "huge_int":
                m = hostile(data)
                body = _manifest_bytes(m).replace(
                    b'"size": ', b'"size": ' + b"9" * 5000 + b', "x": '
                )
                _write_atomic(manifest, body)
                event["bad"].append(sha)
            elif kind == "dev_zero_manifest":
                tmp = manifest.with_name(".zero.lnk")
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                os.symlink("/dev/zero", tmp)
                os.replace(tmp, manifest)
            elif kind == "fifo_checkpoint":
                # The checkpoint the live signed manifest names becomes a FIFO, and the same
                # manifest is written again (a new inode: the server looks at it again).
                last = published[-1]
                _replace_with_fifo(models / last["checkpoint"])
                _write_atomic(manifest, _manifest_bytes(last))
            elif kind == "pin_swap":
                # An admin pins an older signed checkpoint, then its file is replaced by a model
                # nobody signed (a new inode), then the pin is lifted: the intruder never answers.
                older = [m for m in published[:-1] if (models / m["checkpoint"]).is_file()]
                m = rnd.choice(older) if older else published[-1]
                event["pinned"] = _admin(url, "POST", {"checkpoint": m["checkpoint"]})
                event["good"].append(m["sha256"])
                _write_atomic(models / m["checkpoint"], data)
                event["bad"].append(sha)
                time.sleep(wait)
                event["unpinned"] = _admin(url, "DELETE")
            elif kind == "same_second":
                # Two publishes, the second written into the first's manifest in place with the
                # same size and the first's mtime put back: its stat key (less the ctime) is
                # unchanged, so only the periodic re-read (--verify-interval) can find it.
                first = put(rnd.choice(good))
                published.append(first)
                before = manifest.stat()
                second = put(rnd.choice(good), name="second")
                body = json.dumps(second, sort_keys=True, separators=(",", ":")).encode()
                body = body.ljust(before.st_size)  # JSON allows trailing blanks
                with open(manifest, "r+b") as f:
                    f.write(body)
                os.utime(manifest, ns=(before.st_atime_ns, before.st_mtime_ns))
                after = manifest.stat()
                event["good"] += [first["sha256"], second["sha256"]]
                event["second"] = second["sha256"]
                event["key_restored"] = (after.st_mtime_ns, after.st_size, after.st_ino) == (
                    before.st_mtime_ns, before.st_size, before.st_ino)  # fmt: skip
                wait = settle  # leave the verify interval time to find it
            del published[:-20]
            log.write(json.dumps(event) + "\n")
            log.flush()
            n += 1
            time.sleep(wait)


def read_events(log_path: Path) -> list[dict[str, Any]]:
    if not log_path.exists():
        return []
    return [json.loads(line) for line in log_path.read_text().splitlines() if line]


def run_manifest_chaos(root: Path, *, swap: str = "sync", duration: float = 12.0,
                       concurrency: int = 32, pace: float = 0.2, verify_interval: float = 0.5,
                       seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """Serve `root/models/actor_latest.json` with a signing key, --require-signature and
    --verify-interval while the manifest chaos writer runs and the load generator sends
    /rl/predict; return the figures (see docs/reliability.md)."""
    from serverkit import ServerProcess

    staging = stage(root / "staging")
    stage_rogue(staging.root)
    models = root / "models"
    publish(torch.jit.load(str(staging.good[0])), models, signing_key=SIGNING_KEY,
            metadata={"obs_dim": OBS_DIM})  # fmt: skip
    first = json.loads((models / "actor_latest.json").read_bytes())["sha256"]
    shim = root / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(_NO_CTIME_SHIM)
    args = [str(models / "actor_latest.json"), "--obs-dim", str(OBS_DIM), "--action-dim", "1",
            "--swap", swap, "--require-signature", "--verify-interval", str(verify_interval),
            "--log-level", "warning"]  # fmt: skip
    env = {"CKPTSERVE_SIGNING_KEY": SIGNING_KEY, "PYTHONPATH": str(shim),
           "CKPTSERVE_ADMIN_TOKEN": ADMIN_TOKEN}  # fmt: skip
    server = ServerProcess(args, env=env, log=root / "server.log")
    log_path = root / "writer.jsonl"
    writer = None
    try:
        server.wait_ready()
        ctx = multiprocessing.get_context("spawn")
        ready = ctx.Event()
        settle = 3 * verify_interval
        writer_args = (str(models), str(staging.root), duration, seed, pace, settle,
                       SIGNING_KEY, str(log_path), ready, server.url)  # fmt: skip
        writer = ctx.Process(target=manifest_writer_main, args=writer_args, daemon=True)
        writer.start()
        if not ready.wait(60):
            raise AssertionError("the manifest chaos writer did not start")
        # Past the writer's last event, with time for a last same_second rewrite to be found.
        stats, after = _load_during(
            server, writer, concurrency, duration + settle + 1, duration + 30
        )
    finally:
        _stop(writer, server)
    events = read_events(log_path)
    good = {first} | {sha for e in events for sha in e["good"]}
    bad = {sha for e in events for sha in e["bad"]}
    seconds = [e for e in events if e["kind"] == "same_second"]
    return {
        "source": "manifest", "swap": swap, "workers": 1, "duration_s": duration,
        "concurrency": concurrency, "verify_interval_s": verify_interval, **stats.summary(),
        **_served(stats, good), "good_versions": len(good),
        "known_bad_served": sum(n for sha, n in stats.shas.items() if sha in bad and sha not in good),
        "events": dict(Counter(e["kind"] for e in events)),
        "pins": {"pinned": sum(e.get("pinned") == 200 for e in events if e["kind"] == "pin_swap"),
                 "unpinned": sum(e.get("unpinned") == 200 for e in events
                                 if e["kind"] == "pin_swap")},
        "same_second": {"events": len(seconds),
                        "key_restored": sum(bool(e["key_restored"]) for e in seconds),
                        "served": sum(stats.shas.get(e["second"], 0) > 0 for e in seconds)},
        **after,
    }  # fmt: skip


# ---- memory: many reloads in one server -----------------------------------------------------

BENCH = Path(__file__).resolve().parent.parent.parent / "benchmarks"


def bench_actors(root: Path, seeds: tuple[int, ...] = (0, 1)) -> list[Path]:
    """The benchmark actor (benchmarks/make_actor.py) with different seeds: distinct sha256."""
    import subprocess

    root.mkdir(parents=True, exist_ok=True)
    out = []
    for seed in seeds:
        path = root / f"bench{seed}.pt"
        if not path.exists():
            subprocess.run([sys.executable, str(BENCH / "make_actor.py"), str(path),
                            "--seed", str(seed)], check=True)  # fmt: skip
        out.append(path)
    return out


def run_reloads(root: Path, reloads_wanted: int, *, timeout: float = 600) -> dict[str, Any]:
    """Reload the benchmark actor `reloads_wanted` times in one server (--swap sync), sampling
    the server's RSS after each reload. Returns the RSS curve (bytes) and the figures."""
    from serverkit import ServerProcess

    actors = bench_actors(root / "actors")
    shas = [sha256_file(p) for p in actors]
    models = root / "models"
    models.mkdir(parents=True, exist_ok=True)
    target = models / "actor_latest.pt"
    _replace_with(actors[0], target)
    body = json.dumps({"state": [0.1] * 32}).encode()
    server = ServerProcess([str(target), "--log-level", "warning"], log=root / "server.log")
    curve: list[int] = []
    try:
        server.wait_ready()
        client = server.client
        start_rss = rss_bytes(server.proc.pid)
        end = time.monotonic() + timeout
        for i in range(1, reloads_wanted + 1):
            want = i % 2
            _replace_with(actors[want], target)
            while True:
                r = client.post("/rl/predict", content=body)
                if r.status_code == 200 and r.json()["sha256"] == shas[want]:
                    break
                if time.monotonic() > end:
                    raise AssertionError(f"reload {i} not served in time: {r.text[:200]}")
            curve.append(rss_bytes(server.proc.pid))
        result = reloads(server.url)
    finally:
        server.stop()
    warm = min(20, len(curve) - 1)
    return {
        "reloads": reloads_wanted, "reloads_ok": result.get("ok", 0), "start_rss": start_rss,
        "curve": curve, "growth": curve[-1] - curve[0],
        "growth_after_warmup": curve[-1] - curve[warm], "peak": max(curve), "warmup": warm,
    }  # fmt: skip


# ---- slow and large clients -----------------------------------------------------------------


async def _slow_client(port: int, stop_at: float, interval: float, counts: Counter[str]) -> None:
    """Declares a 64-byte body and sends it one byte per `interval` until `stop_at`."""
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        counts["connect_failed"] += 1
        return
    counts["opened"] += 1
    try:
        writer.write(f"POST /rl/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 64\r\n\r\n{".encode())  # fmt: skip
        await writer.drain()
        sent = 1
        while time.monotonic() < stop_at and sent < 63:
            await asyncio.sleep(interval)
            writer.write(b" ")
            await writer.drain()
            sent += 1
        counts["still_open"] += 1
    except OSError:
        counts["dropped_by_server"] += 1
    finally:
        writer.close()


async def big_body(port: int, size: int, *, chunked: bool, timeout: float = 30) -> dict[str, Any]:
    """POST a `size`-byte body (declared, or chunked without a length); stop sending as soon as
    the server answers. Returns the status and how many body bytes went out before that."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST /rl/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
    )
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {size}\r\n\r\n"
    writer.write(head.encode())
    response = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
    sent = 0
    chunk = b"[" + b"0," * (32 * 1024)
    started = time.perf_counter()
    if not chunked:
        # A declared length over the limit must be refused before any of the body is read.
        await asyncio.wait([response], timeout=2.0)
    try:
        while sent < size and not response.done():
            piece = chunk[: size - sent]
            writer.write((f"{len(piece):x}\r\n".encode() + piece + b"\r\n") if chunked else piece)
            sent += len(piece)
            await writer.drain()
            # Give the reader a moment: once the server answers and closes, a reset could
            # otherwise discard its answer before it is read.
            await asyncio.wait([response], timeout=0.002)
    except (ConnectionResetError, BrokenPipeError):
        pass
    try:
        head_bytes = await asyncio.wait_for(response, timeout)
        status = int(head_bytes[9:12])
    except (asyncio.IncompleteReadError, ConnectionResetError, asyncio.TimeoutError, TimeoutError):
        status = 0
    writer.close()
    return {"status": status, "sent": sent, "seconds": time.perf_counter() - started}


def slow_and_large(port: int, *, slow: int = 100, duration: float = 8.0,
                   big: int = 50 * 2**20, concurrency: int = 8) -> dict[str, Any]:  # fmt: skip
    """`slow` slow-sending connections and two `big`-byte bodies while normal traffic runs."""

    async def main() -> dict[str, Any]:
        counts: Counter[str] = Counter()
        stop_at = time.monotonic() + duration
        slow_tasks = [asyncio.ensure_future(_slow_client(port, stop_at, 0.25, counts))
                      for _ in range(slow)]  # fmt: skip
        await asyncio.sleep(0.5)  # let them connect before the normal traffic starts
        body = json.dumps({"state": [0.1] * OBS_DIM}).encode()
        load = asyncio.ensure_future(
            _load(port, "/rl/predict", body, concurrency, duration - 1, 10**6, False)
        )
        await asyncio.sleep(1.0)
        declared = await big_body(port, big, chunked=False)
        chunked = await big_body(port, big, chunked=True)
        stats = await load
        await asyncio.gather(*slow_tasks)
        return {"slow": dict(counts), "declared": declared, "chunked": chunked, "load": stats}

    return asyncio.run(main())


# ---- workers ----------------------------------------------------------------------------------


def worker_states(url: str, want: int, timeout: float) -> dict[int, dict[str, Any]]:
    """/rl/status of up to `want` workers, keyed by pid (a new connection per request reaches
    them all, as the kernel hands connections to whichever worker accepts first)."""
    seen: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < want and time.monotonic() < deadline:
        try:
            with httpx.Client(base_url=url, timeout=5) as client:
                status = client.get("/rl/status").json()
        except httpx.TransportError:
            continue
        seen[int(status["pid"])] = status
    return seen


def live_checkpoint(status: dict[str, Any]) -> str | None:
    return (status.get("version") or {}).get("checkpoint")


async def open_partial(
    port: int, n: int
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]]:
    """`n` requests whose headers and half of their body are sent: in flight at the server."""
    body = json.dumps({"state": [0.1] * OBS_DIM}).encode()
    out = []
    for _ in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_request(port, "/rl/predict", body)[: -len(body) // 2])
        await writer.drain()
        out.append((reader, writer, body[-len(body) // 2 :]))
    return out


# ---- event-loop stalls while a big model reloads ----------------------------------------------

HERE = Path(__file__).resolve().parent


def lag_buckets(url: str) -> dict[float, float]:
    """ckptserve_event_loop_lag_seconds as {upper bound: cumulative count}."""
    out = {}
    for (name, labels), value in metrics(url).items():
        if name == "ckptserve_event_loop_lag_seconds_bucket":
            le = dict(labels)["le"]
            out[math.inf if le == "+Inf" else float(le)] = value
    return out


def worst_lag(before: dict[float, float], after: dict[float, float]) -> float:
    """The upper bound of the highest histogram bucket that gained ticks between two scrapes."""
    bounds = sorted(after)
    worst = 0.0
    previous = 0.0
    for le in bounds:
        gained = (after[le] - before.get(le, 0.0)) - previous
        previous = after[le] - before.get(le, 0.0)
        if gained > 0:
            worst = le
    return worst


def big_checkpoints(root: Path, fmt: str, table: int) -> list[Path]:
    """Two distinct ~table*4-byte actors published in `fmt` (cached under root)."""
    from bigactor import seeded_big

    out = []
    for seed in (0, 1):
        cached = root / f"big-{fmt}-{table}-{seed}.pt"
        if not cached.exists():
            path = publish(
                seeded_big(seed, table),
                root / f"pub-{fmt}-{seed}",
                format=fmt,
                metadata={"obs_dim": OBS_DIM, "action_dim": 1},
            )  # type: ignore[arg-type]
            shutil.move(path, cached)
            shutil.rmtree(root / f"pub-{fmt}-{seed}", ignore_errors=True)
        out.append(cached)
    return out


def run_stalls(root: Path, fmt: str, *, reloads: int = 5, period: float = 2.0,
               table: int = 25_000_000, concurrency: int = 4, swap: str = "background",
               cache: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """Serve a big actor in `fmt` and replace it every `period` s, `reloads` times, while
    `concurrency` connections send /rl/predict; return the worst event-loop lag in that window."""
    from serverkit import ServerProcess

    files = big_checkpoints(cache or root, fmt, table)
    shas = [sha256_file(p) for p in files]
    models = root / "models"
    models.mkdir(parents=True, exist_ok=True)
    target = models / "actor_latest.pt"
    _replace_with(files[0], target)
    args = [str(target), "--swap", swap, "--log-level", "warning", "--obs-dim", str(OBS_DIM)]
    if fmt in ("safetensors", "state_dict"):
        args += ["--factory", "bigactor:make_big_actor"]
    server = ServerProcess(args, log=root / f"server-{fmt}.log", env={"PYTHONPATH": str(HERE)})
    body = json.dumps({"state": [0.1] * OBS_DIM}).encode()
    try:
        server.wait_ready(timeout=120)

        def serving(i: int) -> bool:
            r = server.client.post("/rl/predict", content=body)
            return r.status_code == 200 and r.json()["sha256"] == shas[i % 2]

        # One reload before measuring, so first-use imports are not counted.
        _replace_with(files[1], target)
        for _ in deadline_loop(60):
            if serving(1):
                break
        # The same load without reloads first: the loop's lag on this machine right now, so a
        # test can compare within one run instead of against a figure load can move.
        quiet = lag_buckets(server.url)
        run_load(server.port, concurrency=concurrency, duration=period)
        before = lag_buckets(server.url)
        baseline_lag = worst_lag(quiet, before)
        stats: list[LoadStats] = []
        import threading

        load = threading.Thread(target=lambda: stats.append(
            run_load(server.port, concurrency=concurrency, duration=reloads * period + 1)))  # fmt: skip
        load.start()
        seen = 0
        load_times = []
        for i in range(reloads):
            started = time.monotonic()
            _replace_with(files[i % 2], target)
            for _ in deadline_loop(30, 0.01):
                if serving(i):
                    seen += 1
                    load_times.append(time.monotonic() - started)
                    break
            time.sleep(max(0.0, period - (time.monotonic() - started)))
        load.join(60)
        after = lag_buckets(server.url)
        history = server.client.get("/rl/status").json()["history"]
    finally:
        server.stop()
    s = stats[0]
    loads = [h["duration"] for h in history if h["result"] == "ok"][-reloads:]
    return {
        "format": fmt, "size_mb": round(files[0].stat().st_size / 1e6, 1), "swap": swap,
        "reloads": reloads, "reloads_seen": seen, "worst_lag_ms": worst_lag(before, after) * 1e3,
        "baseline_lag_ms": baseline_lag * 1e3,
        "ticks": after.get(math.inf, 0) - before.get(math.inf, 0),
        "load_ms_max": round(max(loads, default=0) * 1e3, 1),
        "request_max_ms": round(s.max_latency * 1e3, 2), "requests": s.sent,
        "non_2xx": sum(n for st, n in s.statuses.items() if st != 200), "errors": dict(s.errors),
    }  # fmt: skip


# ---- reload herd -------------------------------------------------------------------------------


def run_herd(root: Path, *, limit: int | None, workers: int = 2, publishes: int = 3,
             table: int = 25_000_000, cache: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """`workers` workers (--swap background) serve a big safetensors actor; it is replaced
    `publishes` times under load. Returns the worst request latency and loop stall during the
    swaps and how long until every worker served each new version."""
    import threading

    from serverkit import ServerProcess

    files = big_checkpoints(cache or root, "safetensors", table)
    models = root / "models"
    models.mkdir(parents=True, exist_ok=True)
    target = models / "actor_latest.pt"
    _replace_with(files[0], target)
    args = [str(target), "--workers", str(workers), "--swap", "background", "--log-level",
            "warning", "--factory", "bigactor:make_big_actor"]  # fmt: skip
    if limit is not None:
        args += ["--max-concurrent-loads", str(limit)]
    server = ServerProcess(args, log=root / "server.log", env={"PYTHONPATH": str(HERE)})
    shas = [sha256_file(p) for p in files]
    try:
        server.wait_ready(timeout=120)
        for _ in deadline_loop(60):
            states = worker_states(server.url, workers, 5)
            if len(states) == workers and all(
                (s.get("version") or {}).get("sha256") == shas[0] for s in states.values()
            ):
                break
        before = lag_buckets(server.url)
        stats: list[LoadStats] = []
        load = threading.Thread(target=lambda: stats.append(
            run_load(server.port, concurrency=8, duration=publishes * 6.0)))  # fmt: skip
        load.start()
        converge = []
        for i in range(1, publishes + 1):
            started = time.monotonic()
            _replace_with(files[i % 2], target)
            done = False
            for _ in deadline_loop(60, 0.05):
                states = worker_states(server.url, workers, 5)
                if len(states) == workers and all(
                    (s.get("version") or {}).get("sha256") == shas[i % 2] for s in states.values()
                ):
                    done = True
                    break
            converge.append(time.monotonic() - started if done else math.inf)
            time.sleep(max(0.0, 5.0 - (time.monotonic() - started)))
        load.join(120)
        after = lag_buckets(server.url)
    finally:
        server.stop()
    s = stats[0]
    return {
        "workers": workers, "max_concurrent_loads": limit, "publishes": publishes,
        "all_workers_new_s": [round(c, 2) for c in converge],
        "worst_lag_ms": worst_lag(before, after) * 1e3, "request_max_ms": round(s.max_latency * 1e3, 1),
        "p99_ms": round(s.percentile(0.99) * 1e3, 2), "requests": s.sent,
        "non_2xx": sum(n for st, n in s.statuses.items() if st != 200), "errors": dict(s.errors),
    }  # fmt: skip


# ---- process faults ------------------------------------------------------------------------------


@contextlib.contextmanager
def two_workers_on_a_new_checkpoint(root: Path) -> Iterator[tuple[Any, Path, set[int]]]:
    """`--workers 2` serving `root/models`; a second checkpoint is published and both workers
    serve it. Yields (server, that checkpoint, the two workers' pids); stops the server after."""
    from serverkit import ServerProcess

    directory = root / "models"
    publish(torch_script(seeded(0)), directory)
    server = ServerProcess([str(directory), "--workers", "2", "--log-level", "warning"],
                           log=root / "server.log")  # fmt: skip
    with server:
        server.wait_ready(timeout=90)
        new = publish(torch_script(seeded(1)), directory)
        for _ in deadline_loop(60):
            states = worker_states(server.url, 2, 5)
            if len(states) == 2 and all(live_checkpoint(s) == new.name for s in states.values()):
                break
        else:
            raise AssertionError("both workers did not come to serve the new checkpoint")
        yield server, new, set(states)


def run_kill(root: Path, *, concurrency: int = 16, duration: float = 8.0) -> dict[str, Any]:
    """--workers 2 under load: publish, kill -9 one worker, and time until its replacement
    serves the checkpoint published before the kill."""
    import signal
    import threading

    with two_workers_on_a_new_checkpoint(root) as (server, new, before):
        stats: list[LoadStats] = []
        load = threading.Thread(target=lambda: stats.append(
            run_load(server.port, concurrency=concurrency, duration=duration)))  # fmt: skip
        load.start()
        time.sleep(1.0)  # load running before the kill (a figure, not a correctness wait)
        killed_at = time.monotonic()
        os.kill(min(before), signal.SIGKILL)
        replaced: dict[int, dict[str, Any]] = {}
        serving_after = math.inf
        for _ in deadline_loop(60, 0.01):
            states = worker_states(server.url, 2, 5)
            replaced.update({p: s for p, s in states.items() if p not in before})
            if any(live_checkpoint(s) == new.name for s in replaced.values()):
                serving_after = time.monotonic() - killed_at
                break
        load.join(60)
        alive = server.proc.poll() is None
    s = stats[0]
    return {
        "replacements": len(replaced), "replacement_serving_s": round(serving_after, 2),
        "replacement_checkpoint": next((live_checkpoint(v) for v in replaced.values()), None),
        "current_checkpoint": new.name, "supervisor_alive": alive, "concurrency": concurrency,
        **s.summary(),
    }  # fmt: skip
