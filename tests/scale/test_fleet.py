"""A fleet that agrees: every model response names its replica, `GET /rl/fleet` lists what each
replica serves, and `ckptserve wait` / `wait_live` return once every replica serves a checkpoint."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serverkit import InProcessServer, ServerProcess, free_port, seeded, state, torch_script

from ckptserve import publish, wait_live
from ckptserve.cli import main
from ckptserve.server import ModelSpec, Settings, create_app


def sha_of(directory: Path) -> str:
    return str(json.loads((directory / "actor_latest.json").read_text())["sha256"])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[InProcessServer, Path]]:
    """An in-process server over a directory with one published checkpoint (step 3)."""
    directory = tmp_path / "models"
    publish(torch_script(seeded(0)), directory, metadata={"step": 3})
    settings = Settings(models=[ModelSpec(name="actor", path=str(directory))])
    server = InProcessServer(create_app(settings))
    deadline = time.monotonic() + 20
    while server.client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "server not ready"
        time.sleep(0.05)
    yield server, directory
    server.stop()


def test_every_model_response_names_its_replica(served: tuple[InProcessServer, Path]) -> None:
    """predict and infer, answered or refused, carry X-Replica; the bodies a `replica` field."""
    server, _ = served
    me = f"{socket.gethostname()}:{os.getpid()}"
    ok = server.client.post("/rl/predict", json=state())
    assert ok.status_code == 200 and ok.headers["x-replica"] == ok.json()["replica"] == me
    bad = server.client.post("/rl/predict", json={"state": [1.0]})
    assert bad.status_code == 422 and bad.headers["x-replica"] == me
    infer = server.client.post(
        "/v2/models/actor/infer",
        json={
            "inputs": [{"name": "state", "datatype": "FP32", "shape": [1, 4], "data": [0.1] * 4}]
        },
    )
    assert infer.status_code == 200, infer.text
    assert infer.headers["x-replica"] == infer.json()["parameters"]["replica"] == me


def test_fleet_of_one_process(served: tuple[InProcessServer, Path]) -> None:
    """One worker: the fleet is this process alone, and says so, with what it serves."""
    server, directory = served
    fleet = server.client.get("/rl/fleet").json()
    assert fleet["scope"] == "process" and fleet["expected"] == 1 and fleet["default"] == "actor"
    assert "alone" in fleet["note"]
    [replica] = fleet["replicas"]
    assert replica["replica"] == f"{socket.gethostname()}:{os.getpid()}"
    live = replica["models"]["actor"]
    manifest = json.loads((directory / "actor_latest.json").read_text())
    assert live["checkpoint"] == manifest["checkpoint"] and live["sha256"] == manifest["sha256"]
    assert live["step"] == 3 and live["live_since"] <= time.time()


def test_wait_live_returns_once_the_new_checkpoint_is_served(
    served: tuple[InProcessServer, Path],
) -> None:
    """A publish, then wait_live with its sha256: it returns when the fleet serves it."""
    server, directory = served
    publish(torch_script(seeded(1)), directory)
    sha = sha_of(directory)
    fleet = wait_live(server.url, sha, timeout=30)
    assert [r["models"]["actor"]["sha256"] for r in fleet["replicas"]] == [sha]
    assert wait_live(f"{server.url}/rl/fleet", sha[:12], timeout=5)["scope"] == "process"


def test_wait_live_times_out_naming_the_replicas_behind(
    served: tuple[InProcessServer, Path],
) -> None:
    server, _ = served
    with pytest.raises(TimeoutError, match=f"{socket.gethostname()}:{os.getpid()}: actor_"):
        wait_live(server.url, "ab" * 32, timeout=0.5)


def test_wait_live_refuses_bad_arguments_and_unreachable_servers() -> None:
    with pytest.raises(ValueError, match="sha256"):
        wait_live("http://127.0.0.1:1", "not-hex", timeout=1)
    with pytest.raises(ValueError, match="URL"):
        wait_live("127.0.0.1:8000", "ab" * 32, timeout=1)
    with pytest.raises(ConnectionError):
        wait_live(f"http://127.0.0.1:{free_port()}", "ab" * 32, timeout=5)


def run_wait(*args: str) -> int:
    """`ckptserve wait ARGS` in this process; its exit status."""
    try:
        main(["wait", *args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_wait_command_exit_statuses(served: tuple[InProcessServer, Path]) -> None:
    """0 when every replica serves it, 1 on timeout, 2 unreachable or wrong arguments."""
    server, directory = served
    sha = sha_of(directory)
    assert run_wait(server.url, "--sha256", sha) == 0
    assert run_wait(server.url, "--sha256", "ab" * 32, "--timeout", "0.3") == 1
    assert run_wait(f"http://127.0.0.1:{free_port()}", "--sha256", sha, "--timeout", "2") == 2
    assert run_wait(server.url, "--sha256", "xyz") == 2
    assert run_wait(server.url) == 2  # --sha256 is required


@pytest.mark.slow
def test_fleet_of_workers_agrees_after_a_publish(tmp_path: Path) -> None:
    """`--workers 2`: the fleet lists both workers (through their shared metrics files), and
    `ckptserve wait` returns 0 only once both serve the new checkpoint."""
    directory = tmp_path / "models"
    publish(torch_script(seeded(0)), directory)
    with ServerProcess(
        [str(directory), "--workers", "2"], log=tmp_path / "serve.log", port=free_port()
    ) as server:
        server.wait_ready()
        wait = [sys.executable, "-m", "ckptserve", "wait", server.url, "--timeout", "60"]
        first = subprocess.run([*wait, "--sha256", sha_of(directory)], capture_output=True)
        assert first.returncode == 0, first.stderr.decode()
        assert b"2 replica(s)" in first.stdout, first.stdout
        publish(torch_script(seeded(1)), directory)
        second = subprocess.run([*wait, "--sha256", sha_of(directory)], capture_output=True)
        assert second.returncode == 0, second.stderr.decode()
        fleet: dict[str, Any] = server.client.get("/rl/fleet").json()
        assert fleet["scope"] == "workers" and fleet["expected"] == 2, fleet
        shas = {r["models"]["actor"]["sha256"] for r in fleet["replicas"]}
        assert len(fleet["replicas"]) == 2 and shas == {sha_of(directory)}, fleet


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_process_names_itself_by_its_own_pid() -> None:
    """The replica name is computed once per process: a forked child computes its own."""
    from ckptserve.server.fleet import replica_name

    parent = replica_name()
    assert parent.endswith(f":{os.getpid()}"), parent
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe and leaves
        os.write(write, replica_name().encode())
        os._exit(0)
    os.close(write)
    named = os.read(read, 1024).decode()
    os.close(read)
    os.waitpid(child, 0)
    assert named.endswith(f":{child}") and named != parent, (named, parent)
