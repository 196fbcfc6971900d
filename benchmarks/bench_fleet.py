"""Fleet convergence (issue 13, item 5): after a publish, how long until every replica serves the
new sha256, against a local directory and against S3, for `--workers N` and for Ray Serve.

    .venv/bin/python benchmarks/bench_fleet.py [--sources file,s3] [--modes workers,ray]
        [--replicas 2] [--publishes 5] [--smoke] [--out benchmarks/results/fleet]

Each cell starts `ckptserve serve SOURCE` (`--workers N`, or `--ray --replicas N` on a local Ray),
publishes `--publishes` times, and times each from `publish()` returning to `ckptserve.wait_live`
returning (every replica on the new sha256, as `GET /rl/fleet` reports it). The bound the issue
sets is 2 x max(check interval, watch interval) + the load time of one publish. S3 is moto's
server on 127.0.0.1 (the servers reach it over loopback, as they would reach AWS or MinIO). The
memory column sums RSS per kind of process in the server's session: our replicas, and, for Ray,
its own processes (GCS, raylet, controller, proxy, the fleet board replica).
`--smoke`: the file source with --workers only, two publishes, results in $TMPDIR.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness import free_port, get_json, machine, median, now_utc, results_path, table, versions

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

WATCH_INTERVAL = 1.0  # the server's default --watch-interval
S3_CHECK_INTERVAL = 2.0  # the default HEAD interval of s3://


@contextlib.contextmanager
def s3_store() -> Iterator[dict[str, str]]:
    """moto's S3 on a free loopback port, and the AWS variables that point at it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    os.environ.update(env)
    try:
        import boto3

        boto3.client("s3").create_bucket(Bucket="bench-fleet")
        yield env
    finally:
        server.stop()


def publish_one(target: str, seed: int) -> str:
    """Publish a seeded actor to `target`; the sha256 its manifest names."""
    from ckptserve import publish
    from policies import seeded_actor

    publish(seeded_actor(seed), target, format="torchscript")
    if target.startswith("s3://"):
        import boto3

        body = boto3.client("s3").get_object(Bucket="bench-fleet", Key="m/actor_latest.json")
        return str(json.loads(body["Body"].read())["sha256"])
    return str(json.loads((Path(target) / "actor_latest.json").read_text())["sha256"])


def session_rss(session: int, mode: str) -> dict[str, float]:
    """MiB of RSS per kind of process in the server's session (under --workers: all ours)."""
    out = subprocess.run(["ps", "-eo", "sid=,rss=,args="], capture_output=True, text=True).stdout
    kinds: dict[str, float] = {}
    for line in out.splitlines():
        sid, rss, args = line.split(None, 2)
        if int(sid) != session:
            continue
        if mode != "ray" or "ServeReplica:ckptserve:ckptserve" in args or "ckptserve serve" in args:
            kind = "ours"
        elif "FleetBoard" in args:
            kind = "board"
        else:
            kind = "ray"
        kinds[kind] = kinds.get(kind, 0.0) + int(rss) / 1024
    return kinds


def cell(source: str, mode: str, replicas: int, publishes: int, env: dict[str, str],
         work: Path) -> dict[str, Any]:  # fmt: skip
    target = "s3://bench-fleet/m/" if source == "s3" else str(work / f"{mode}-models")
    sha = publish_one(target, 0)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    scale = (
        ["--ray", "--replicas", str(replicas)] if mode == "ray" else ["--workers", str(replicas)]
    )
    cmd = [sys.executable, "-m", "ckptserve", "serve", target, *scale, "--host", "127.0.0.1", "--port",
           str(port), "--log-level", "warning"]  # fmt: skip
    ray_tmp = tempfile.mkdtemp(prefix="ray-")
    full_env = {**os.environ, **env, "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": ray_tmp}
    log = work / f"{source}-{mode}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env,
                                start_new_session=True)  # fmt: skip
    from ckptserve import wait_live

    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                wait_live(url, sha, timeout=5)
                break
            except (ConnectionError, TimeoutError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(log.read_text()[-2000:]) from None
                time.sleep(1)
        times, loads = [], []
        for i in range(publishes):
            sha = publish_one(target, i + 1)
            published = time.monotonic()
            wait_live(url, sha, timeout=120, interval=0.05)
            times.append(time.monotonic() - published)
            status: Any = get_json(f"{url}/rl/status")
            history = [a for a in status.get("history", []) if a["result"] == "ok"]
            if history:
                loads.append(history[-1]["duration"])
        memory = session_rss(proc.pid, mode)
    finally:
        import signal

        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    check = S3_CHECK_INTERVAL if source == "s3" else 0.0
    load = median(loads) if loads else 0.0
    return {"source": source, "mode": mode, "replicas": replicas, "times": times,
            "median": median(times), "max": max(times),
            "bound": 2 * max(check, WATCH_INTERVAL) + load, "load": load, "memory": memory}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sources", default="file,s3")
    parser.add_argument("--modes", default="workers,ray")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--publishes", type=int, default=5)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args()
    sources, modes = args.sources.split(","), args.modes.split(",")
    if args.smoke:
        sources, modes, args.publishes = ["file"], ["workers"], 2
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp, contextlib.ExitStack() as stack:
        env = stack.enter_context(s3_store()) if "s3" in sources else {}
        for source in sources:
            for mode in modes:
                print(f"{source} / {mode} x{args.replicas} ...", file=sys.stderr)
                results.append(cell(source, mode, args.replicas, args.publishes, env, Path(tmp)))
    rows = [[r["source"], r["mode"], r["replicas"], f"{r['median']:.2f} s", f"{r['max']:.2f} s",
             f"{r['bound']:.2f} s", f"{r['load'] * 1000:.0f} ms",
             ", ".join(f"{k} {v:.0f} MiB" for k, v in sorted(r["memory"].items()))]
            for r in results]  # fmt: skip
    text = "\n".join([
        "# Fleet convergence", "",
        f"{now_utc()}, {machine()}, {versions()}; {args.publishes} publishes per cell, from "
        "publish() returning to wait_live() returning.", "",
        table(["source", "mode", "replicas", "median", "max", "bound", "load", "RSS"], rows), "",
    ])  # fmt: skip
    out = results_path("fleet", args.out, args.smoke)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    print(text)


if __name__ == "__main__":
    main()
