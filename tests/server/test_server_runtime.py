"""The Runtime that the lifespan starts and closes: the watcher shares a load with requests, and
shutdown waits for loads in flight, off the event loop, instead of pulling their files away."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from serverkit import SLOW_LOAD_SECONDS, seeded, torch_script, wait_for

import ckptserve._harness
from ckptserve import publish
from ckptserve.server import ModelSpec, Settings
from ckptserve.server.state import Runtime


@pytest.fixture(autouse=True)
def slow_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every load waits SLOW_LOAD_SECONDS between copying the checkpoint and reading the copy."""
    real = ckptserve._harness.load_candidate

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(SLOW_LOAD_SECONDS)
        return real(*args, **kwargs)

    monkeypatch.setattr(ckptserve._harness, "load_candidate", slow)


def runtime_for(directory: Path, **options: Any) -> Runtime:
    settings = Settings(
        models=[ModelSpec(name="actor", path=str(directory))], loop_probe_interval=0, **options
    )
    return Runtime(settings)


async def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


async def close_while_ticking(runtime: Runtime, **options: Any) -> float:
    """Close `runtime` while another coroutine ticks every 10 ms; return the longest tick gap."""
    worst = 0.0
    closed = asyncio.Event()

    async def tick() -> None:
        nonlocal worst
        before = time.perf_counter()
        while not closed.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            worst = max(worst, now - before)
            before = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.02)
    try:
        await runtime.close(**options)
    finally:
        closed.set()
        await ticker
    return worst


@pytest.mark.parametrize("load", ["first load", "background reload"])
def test_shutdown_during_a_slow_load_lets_it_finish_off_the_loop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, load: str
) -> None:
    """Closing while a load is in flight waits for it without blocking the loop: no failed load
    is recorded and nothing is logged as an error."""
    directory = tmp_path / "models"
    publish(torch_script(seeded(1)), directory)
    runtime = runtime_for(directory, swap="background", watch_interval=0.05)

    async def scenario() -> float:
        await runtime.start()
        registry = runtime.models["actor"].registry
        if load == "background reload":
            await wait_until(lambda: registry.current is not None, 10, "the first load")
            publish(torch_script(seeded(2)), directory)
            await wait_until(lambda: registry.loading, 10, "the background reload")
        else:
            await wait_until(lambda: runtime.models["actor"]._checking is not None, 10, "a load")
        await asyncio.sleep(SLOW_LOAD_SECONDS / 5)  # well inside the load
        return await close_while_ticking(runtime)

    with caplog.at_level(logging.WARNING):
        worst_gap = asyncio.run(scenario())
    history = runtime.models["actor"].registry.history
    assert [a.result for a in history] == ["ok"] * len(history) and history
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert worst_gap < SLOW_LOAD_SECONDS / 4


def test_shutdown_waits_for_a_load_at_most_load_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A load that outlasts `load_timeout` is not waited for: shutdown says so and goes on."""
    directory = tmp_path / "models"
    publish(torch_script(seeded(1)), directory)
    runtime = runtime_for(directory)

    async def scenario() -> float:
        await runtime.start()
        await wait_until(lambda: runtime.models["actor"]._checking is not None, 10, "a load")
        started = time.perf_counter()
        await close_while_ticking(runtime, load_timeout=SLOW_LOAD_SECONDS / 10)
        return time.perf_counter() - started

    with caplog.at_level(logging.WARNING, logger="ckptserve.server"):
        seconds = asyncio.run(scenario())
    assert seconds < SLOW_LOAD_SECONDS / 2
    assert "closing actor with a load still in flight" in caplog.text
    registry = runtime.models["actor"].registry
    wait_for(lambda: bool(registry.history), 10, "the abandoned load to end")


def test_watcher_and_request_share_one_load(tmp_path: Path, thread_hops: list[Any]) -> None:
    """A request that finds the watcher's first load under way waits for that load: one thread."""
    directory = tmp_path / "models"
    publish(torch_script(seeded(1)), directory)
    runtime = runtime_for(directory)

    async def scenario() -> None:
        await runtime.start()
        handle = runtime.models["actor"]
        try:
            await wait_until(lambda: handle._checking is not None, 10, "the watcher's load")
            live = await handle.live()
            assert live is handle.registry.current
        finally:
            await runtime.close()

    asyncio.run(scenario())
    registry = runtime.models["actor"].registry
    assert [h for h in thread_hops if h == registry.check] == [registry.check]
    assert registry.load_count == 1
