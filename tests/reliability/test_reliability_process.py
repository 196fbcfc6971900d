"""Process faults: kill -9 of a uvicorn worker under load, and SIGTERM with requests in flight."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from relkit import (
    LoadStats,
    live_checkpoint,
    open_partial,
    run_load,
    two_workers_on_a_new_checkpoint,
    worker_states,
)
from serverkit import ServerProcess, seeded, torch_script, wait_for

from ckptserve import publish

pytestmark = pytest.mark.slow


def test_killed_worker_is_replaced_and_serves_the_current_checkpoint(tmp_path: Path) -> None:
    """kill -9 of one of two workers during load: only requests on its connections fail, the
    others keep succeeding, and the new worker serves the checkpoint published before the kill."""
    with two_workers_on_a_new_checkpoint(tmp_path) as (server, new, before):
        assert len(before) == 2
        stats: list[LoadStats] = []
        load = threading.Thread(
            target=lambda: stats.append(run_load(server.port, concurrency=16, duration=8.0))
        )
        load.start()
        try:
            wait_for(lambda: server.client.get("/healthz").status_code == 200, 5, "load")
            victim = min(before)
            os.kill(victim, signal.SIGKILL)
            replaced: dict[int, dict[str, Any]] = {}

            def replacement_serves_new() -> bool:
                states = worker_states(server.url, 2, 5)
                replaced.update({p: s for p, s in states.items() if p not in before})
                return any(live_checkpoint(s) == new.name for s in replaced.values())

            # The replacement answers /rl/status before its first load (not live yet); it must
            # come to serve the checkpoint that was current when its predecessor died.
            wait_for(replacement_serves_new, 60, "a replacement worker serving the checkpoint")
        finally:
            load.join(30)
        assert len(replaced) == 1
        assert server.proc.poll() is None
        status = next(iter(replaced.values()))
    result = stats[0]
    # Requests in flight on the killed worker's connections fail (at most one per connection);
    # every other request, and every reconnect, is answered by the surviving worker.
    assert sum(result.errors.values()) <= 16, result.summary()
    assert set(result.statuses) == {200}, result.summary()
    assert result.ok > 1000
    assert set(result.shas) <= {status["version"]["sha256"]}


def test_sigterm_drains_in_flight_requests(tmp_path: Path) -> None:
    """SIGTERM while 20 requests are half sent: the server stops accepting, answers all 20 with
    200, then exits (uvicorn re-raises the signal after its graceful shutdown: status -15)."""
    directory = tmp_path / "models"
    publish(torch_script(seeded(0)), directory)
    server = ServerProcess([str(directory), "--log-level", "warning"], log=tmp_path / "log")
    with server:
        server.wait_ready()

        async def scenario() -> list[int]:
            partial = await open_partial(server.port, 20)
            # A request on a connection opened after them, answered: the server has accepted the
            # 20 and read what they sent (not still in the listen backlog, which closing drops).
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
            assert (await asyncio.wait_for(reader.read(), 20)).startswith(b"HTTP/1.1 200")
            writer.close()
            os.kill(server.proc.pid, signal.SIGTERM)

            def refusing() -> bool:
                with socket.socket() as s:
                    return s.connect_ex(("127.0.0.1", server.port)) != 0

            wait_for(refusing, 20, "the listening socket to close")
            statuses = []
            for reader, writer, rest in partial:
                writer.write(rest)
                await writer.drain()
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
                statuses.append(int(head[9:12]))
                writer.close()
            return statuses

        statuses = asyncio.run(scenario())
        assert statuses == [200] * 20
        assert server.proc.wait(30) in (0, -signal.SIGTERM)


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_makes_the_server_look_at_its_sources_again_and_never_kills_it(
    tmp_path: Path, workers: int
) -> None:
    """SIGHUP means "look at the sources again now" (a manifest is re-read at once) with one
    worker or several, never "exit" or "restart": the server answers before and after it, and
    each worker says in the log what it did."""
    models = tmp_path / "models"
    publish(torch_script(seeded(1)), models)
    args = [str(models), "--verify-interval", "3600", "--workers", str(workers)]
    with ServerProcess(args, log=tmp_path / "log") as server:
        server.wait_ready(timeout=90)
        assert server.client.post("/rl/predict", json={"state": [0.1] * 4}).status_code == 200
        server.proc.send_signal(signal.SIGHUP)
        line = "SIGHUP: looking at the sources again"
        wait_for(lambda: server.output().count(line) == workers, 30, f"{workers} log lines")
        assert server.proc.poll() is None, server.output()
        assert "replaced by a new worker" not in server.output()
        assert server.client.post("/rl/predict", json={"state": [0.1] * 4}).status_code == 200


def test_a_pin_reaches_every_worker(tmp_path: Path) -> None:
    """With --workers 2 a pin sent to one worker is recorded in the state directory the
    supervisor gives its workers, and the other worker serves the pinned checkpoint too."""
    models = tmp_path / "models"
    older = publish(torch_script(seeded(1)), models)
    publish(torch_script(seeded(2)), models)
    env = {"CKPTSERVE_ADMIN_TOKEN": "pin-token"}
    with ServerProcess([str(models), "--workers", "2"], env=env, log=tmp_path / "log") as server:
        server.wait_ready(timeout=90)
        r = server.client.post("/rl/pin", json={"checkpoint": older.name},
                               headers={"authorization": "Bearer pin-token"})  # fmt: skip
        assert r.status_code == 200, r.text

        def both_pinned() -> bool:
            states = worker_states(server.url, 2, 5)
            return len(states) == 2 and all(
                live_checkpoint(s) == older.name for s in states.values()
            )

        wait_for(both_pinned, 60, "both workers to serve the pinned checkpoint")


@pytest.mark.parametrize("secret", [None, ""], ids=["unset", "empty"])
def test_every_worker_reads_the_request_ids_of_the_others(
    tmp_path: Path, secret: str | None
) -> None:
    """With --workers 2 and no CKPTSERVE_FEEDBACK_SECRET (or an empty one) the supervisor gives
    its workers one random key: feedback for an answer is taken by whichever worker gets it."""
    import httpx

    models = tmp_path / "models"
    publish(torch_script(seeded(1)), models)
    # ServerProcess passes on no CKPTSERVE_ variable of ours but those given here.
    env = {} if secret is None else {"CKPTSERVE_FEEDBACK_SECRET": secret}
    with ServerProcess([str(models), "--workers", "2"], env=env, log=tmp_path / "log") as server:
        server.wait_ready(timeout=90)
        assert len(worker_states(server.url, 2, 60)) == 2, server.output()[-2000:]
        answers: dict[str, str] = {}  # request id -> the worker (replica) that answered
        for _ in range(200):
            with httpx.Client(base_url=server.url, timeout=10) as client:  # a new connection
                body = client.post("/rl/predict", json={"state": [0.1] * 4}).json()
            answers[body["request_id"]] = body["replica"]
            if len(set(answers.values())) == 2 and len(answers) >= 20:
                break
        assert len(set(answers.values())) == 2, answers
        refused = {}
        for rid in answers:
            with httpx.Client(base_url=server.url, timeout=10) as client:
                r = client.post("/rl/feedback", json={"request_id": rid, "reward": 1.0})
            if r.status_code != 200:
                refused[rid] = (answers[rid], r.status_code, r.text)
        assert refused == {}, refused


def test_a_sighup_while_the_server_starts_ends_nothing(tmp_path: Path) -> None:
    """SIGHUPs from the server's first log line on (before it, Python itself is still starting
    and a signal it cannot handle yet ends it, as for any program) while each of two workers
    starts: no process ends, no worker is replaced, and both then serve."""
    models = tmp_path / "models"
    publish(torch_script(seeded(1)), models)
    with ServerProcess([str(models), "--workers", "2"], log=tmp_path / "log") as server:
        wait_for(lambda: "Started parent process" in server.output(), 60, "the supervisor")
        ready = False
        for _ in range(600):  # every 0.1 s until ready, for at most a minute
            server.proc.send_signal(signal.SIGHUP)
            if server.proc.poll() is not None:
                break
            try:
                ready = server.client.get("/readyz").status_code == 200
            except Exception:  # not listening yet
                ready = False
            if ready:
                break
            threading.Event().wait(0.1)
        assert server.proc.poll() is None, server.output()[-3000:]
        assert ready, server.output()[-3000:]
        assert len(worker_states(server.url, 2, 60)) == 2, server.output()[-3000:]
        assert "replaced by a new worker" not in server.output(), server.output()[-3000:]
