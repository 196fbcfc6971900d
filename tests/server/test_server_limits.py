"""Limits a load balancer expects: a deadline for a request's headers, the open-file limit raised
at start, a connection limit below it, and a log line saying why a worker was replaced."""

from __future__ import annotations

import logging
import os
import resource
import select
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest
from serverkit import ServerProcess, seeded, state, torch_script, wait_for

from ckptserve import publish
from ckptserve.server.serving import (
    RESERVED_FILES,
    connection_limit,
    exit_reason,
    raise_open_file_limit,
)

DEADLINE = 5.0  # --timeout-headers in these tests: far above a normal request's header time


def _closed_by_server(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True


@pytest.mark.slow
def test_trickled_headers_are_cut_off_while_requests_are_answered(tmp_path: Path) -> None:
    """Connections that trickle header bytes are closed once the header deadline passes (never
    before it), while a normal request and one whose headers come in two parts are answered."""
    directory = tmp_path / "models"
    publish(torch_script(seeded(0)), directory)
    args = [str(directory), "--timeout-headers", str(DEADLINE)]
    with ServerProcess(args, log=tmp_path / "log") as server:
        server.wait_ready()
        opened: dict[socket.socket, float] = {}
        for _ in range(40):
            sock = socket.create_connection(("127.0.0.1", server.port))
            opened[sock] = time.monotonic()
            sock.sendall(b"POST /rl/predict HTTP/1.1\r\nHost: trickle\r\n")
        try:
            assert server.client.post("/rl/predict", json=state()).status_code == 200
            with socket.create_connection(("127.0.0.1", server.port)) as split:
                body = b'{"state": [0.1, 0.1, 0.1, 0.1]}'
                split.sendall(b"POST /rl/predict HTTP/1.1\r\nHost: split\r\n")
                time.sleep(0.2)
                split.sendall(b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                              % (len(body), body))  # fmt: skip
                split.settimeout(30)
                assert split.recv(64).startswith(b"HTTP/1.1 200"), "split headers were refused"
            closed: dict[socket.socket, float] = {}
            give_up = time.monotonic() + DEADLINE + 60
            while len(closed) < len(opened) and time.monotonic() < give_up:
                for sock in opened.keys() - closed.keys():
                    try:
                        sock.sendall(b"x-trickle: 1\r\n")
                    except OSError:  # reset by the server
                        closed[sock] = time.monotonic()
                        continue
                    if _closed_by_server(sock):
                        closed[sock] = time.monotonic()
                time.sleep(0.25)
            lasted = sorted(closed[s] - opened[s] for s in closed)
            assert len(closed) == len(opened), f"{len(opened) - len(closed)} still open: {lasted}"
            assert lasted[0] >= DEADLINE - 0.05, f"closed before the deadline: {lasted}"
            assert server.client.post("/rl/predict", json=state()).status_code == 200
        finally:
            for sock in opened:
                sock.close()


def test_the_soft_open_file_limit_is_raised_to_the_hard_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """At start the soft RLIMIT_NOFILE becomes the hard one (workers inherit it), logged."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(soft, hard, 4096) // 2
    caplog.set_level(logging.INFO, logger="ckptserve.server")
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        assert raise_open_file_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
        assert f"raised the open-file limit from {lowered} to {hard}" in caplog.text
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize(
    ("given", "open_files", "limit"),
    [
        (None, 1024, 1024 - RESERVED_FILES),  # by default: below the descriptors
        (None, resource.RLIM_INFINITY, None),
        (200, 1024, 200),
        (0, 1024, None),  # 0: no limit
    ],
)
def test_the_connection_limit_stays_below_the_open_file_limit(
    given: int | None, open_files: int, limit: int | None
) -> None:
    assert connection_limit(given, open_files) == limit


@pytest.mark.parametrize(
    ("exitcode", "answered", "says"),
    [
        (-9, True, "was killed by SIGKILL (the kernel's out-of-memory killer sends it too)"),
        (-15, True, "was killed by SIGTERM"),
        (1, True, "exited with status 1"),
        (-9, False, "did not answer the health check within 60 s (--timeout-worker-healthcheck)"),
    ],
)
def test_why_a_worker_ended(exitcode: int, answered: bool, says: str) -> None:
    assert exit_reason(exitcode, answered=answered, healthcheck=60).startswith(says)


@pytest.mark.slow
def test_a_replaced_worker_is_logged_with_the_reason(tmp_path: Path) -> None:
    """With --workers 2, a worker killed with SIGKILL is replaced and the log says why."""
    directory = tmp_path / "models"
    publish(torch_script(seeded(0)), directory)
    with ServerProcess([str(directory), "--workers", "2"], log=tmp_path / "log") as server:
        server.wait_ready(timeout=90)
        victim = server.client.get("/rl/status").json()["pid"]
        os.kill(victim, signal.SIGKILL)
        line = f"worker [{victim}] was killed by SIGKILL"
        wait_for(lambda: line in server.output(), 60, "the supervisor to log the replacement")

        def answered_by_another() -> bool:
            with httpx.Client(base_url=server.url, timeout=10) as c:
                r = c.get("/rl/status")
                return r.status_code == 200 and r.json()["pid"] != victim

        wait_for(answered_by_another, 60, "a worker to answer")
        assert "replaced by a new worker" in server.output()
