"""`ckptserve serve PATH --ray --replicas N`: a local Ray bound to --host, Serve's proxy on
--port, N replicas that `ckptserve wait` sees; SIGTERM takes the whole Ray instance down."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from serverkit import ServerProcess, seeded, torch_script

from ckptserve import publish

pytest.importorskip("ray", reason="the Ray tests need ckptserve[ray]")


def sha_of(directory: Path) -> str:
    return str(json.loads((directory / "actor_latest.json").read_text())["sha256"])


def ray_processes(session: int) -> list[str]:
    """The Ray processes in the session of the server (started as its own session leader)."""
    # comm (the executable's name) as well as args: Ray rewrites its processes' titles within the
    # original argv's length, so under a long install path "raylet" shows only in comm.
    out = subprocess.run(["ps", "-eo", "sid=,comm=,args="], capture_output=True, text=True).stdout
    rows = [line.strip().split(None, 2) for line in out.splitlines() if line.strip()]
    return [
        f"{r[1]} {r[2]}"
        for r in rows
        if len(r) == 3 and int(r[0]) == session and "ray" in r[1] + r[2]
    ]


@pytest.mark.slow
def test_serve_on_ray_with_two_replicas(tmp_path: Path) -> None:
    directory = tmp_path / "models"
    publish(torch_script(seeded(0)), directory)
    temp = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must fit 107 bytes
    env = {"RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": temp}
    try:
        server = ServerProcess(
            [str(directory), "--ray", "--replicas", "2", "--host", "127.0.0.1"],
            env=env, log=tmp_path / "serve.log",
        )  # fmt: skip
        with server:
            server.wait_ready(timeout=180)
            wait = [sys.executable, "-m", "ckptserve", "wait", server.url, "--timeout", "120"]
            done = subprocess.run([*wait, "--sha256", sha_of(directory)], capture_output=True)
            assert done.returncode == 0, (done.stderr.decode(), server.output()[-3000:])
            assert b"2 replica(s)" in done.stdout and b"(ray)" in done.stdout, done.stdout
            assert any("raylet" in p for p in ray_processes(server.proc.pid)), ray_processes(
                server.proc.pid
            )
        deadline = time.monotonic() + 60
        while ray_processes(server.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert ray_processes(server.proc.pid) == [], "Ray outlived `ckptserve serve --ray`"
    finally:
        shutil.rmtree(temp, ignore_errors=True)
