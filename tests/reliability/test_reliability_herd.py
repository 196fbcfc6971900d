"""Reload herd: with `max_concurrent_loads`, at most that many processes load a checkpoint at once,
coordinated by advisory flock on lock files; a process waiting for its turn keeps serving."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from serverkit import SLOW_LOAD_SECONDS, ServerProcess, seeded, wait_for

from ckptserve import ModelRegistry, publish
from ckptserve._coordination import LoadSlots
from ckptserve.formats import state_dict_loader


def test_slots_are_exclusive_across_holders(tmp_path: Path) -> None:
    """A held slot makes `busy()` true for every other holder, and it frees on release."""
    a = LoadSlots("/models/actor_latest.pt", 1, directory=str(tmp_path))
    b = LoadSlots("/models/actor_latest.pt", 1, directory=str(tmp_path))
    other = LoadSlots("/models/critic_latest.pt", 1, directory=str(tmp_path))
    assert not b.busy()
    with a.hold():
        assert b.busy()
        assert not other.busy()
    assert not b.busy()


def test_two_slots_admit_two_holders(tmp_path: Path) -> None:
    """With a limit of 2, two holders load together and a third finds every slot busy."""
    slots = [LoadSlots("k", 2, directory=str(tmp_path)) for _ in range(3)]
    with slots[0].hold():
        assert not slots[2].busy()
        with slots[1].hold():
            assert slots[2].busy()


@pytest.mark.parametrize("swap", ["sync", "background"])
def test_waiting_registry_keeps_serving_until_its_turn(tmp_path: Path, swap: str) -> None:
    """While another process holds the only slot, a new checkpoint does not block get(): the live
    model answers, and the new one is loaded once the slot is free."""
    directory = tmp_path / "models"
    first = publish(seeded(0), directory, format="safetensors")
    loader = state_dict_loader("serverkit:make_tiny_actor")
    lock_dir = str(tmp_path / "locks")
    with ModelRegistry(directory / "actor_latest.safetensors", swap=swap, loader=loader,
                       max_concurrent_loads=1, lock_dir=lock_dir) as registry:  # fmt: skip
        old = registry.get().version.sha256
        other_worker = LoadSlots(str((directory / "actor_latest.safetensors").resolve()), 1,
                                 directory=lock_dir)  # fmt: skip
        with other_worker.hold():
            publish(seeded(1), directory, format="safetensors")
            started = time.monotonic()
            for _ in range(20):
                assert registry.get().version.sha256 == old
            assert time.monotonic() - started < 1.0
        assert registry.wait_idle(30)
        wait_for(lambda: registry.get().version.sha256 != old, 30, "the new checkpoint")
        assert registry.version is not None and registry.version.checkpoint != first.name


def _worker_states(url: str, want: int, timeout: float) -> dict[int, dict[str, object]]:
    """/rl/status of each of `want` workers (a new connection per request reaches them all)."""
    seen: dict[int, dict[str, object]] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < want and time.monotonic() < deadline:
        with httpx.Client(base_url=url, timeout=10) as client:
            status = client.get("/rl/status").json()
        seen[int(status["pid"])] = status
    return seen


@pytest.mark.slow
def test_workers_load_one_at_a_time(tmp_path: Path) -> None:
    """--workers 2 --max-concurrent-loads 1: the two workers' loads of one publish never overlap,
    and both end up serving it."""
    directory = tmp_path / "models"
    first = publish(seeded(0), directory, format="safetensors")
    server = ServerProcess(
        [str(directory), "--workers", "2", "--swap", "background", "--max-concurrent-loads",
         "1", "--factory", "serverkit:slow_tiny_actor", "--log-level", "warning"],
        log=tmp_path / "server.log",
    )  # fmt: skip
    with server:
        server.wait_ready(timeout=90)

        def both_on(name: str) -> bool:
            states = _worker_states(server.url, 2, 5)
            return len(states) == 2 and all(
                (s["version"] or {}).get("checkpoint") == name  # type: ignore[attr-defined]
                for s in states.values()
            )

        wait_for(lambda: both_on(first.name), 60, "both workers on the first checkpoint")
        new = publish(seeded(1), directory, format="safetensors")

        wait_for(lambda: both_on(new.name), 60, "both workers on the new checkpoint")
        intervals = []
        for status in _worker_states(server.url, 2, 5).values():
            ok = [
                h for h in status["history"] if h["result"] == "ok" and h["checkpoint"] == new.name
            ]  # type: ignore[attr-defined]
            assert len(ok) == 1
            intervals.append((ok[0]["at"] - ok[0]["duration"], ok[0]["at"]))
        (s1, e1), (s2, _) = sorted(intervals)
        assert e1 <= s2 + 0.05, f"loads overlapped: {intervals}"
        assert e1 - s1 >= SLOW_LOAD_SECONDS * 0.9
