"""ModelHandle.live(): the source is looked at once per event-loop iteration, and a request that
starts after a publish returned is still answered by what was published."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from serverkit import seeded, torch_script

from ckptserve import ModelRegistry, publish
from ckptserve.server.handle import ModelHandle


def handle_for(directory: Path) -> ModelHandle:
    registry = ModelRegistry(directory)
    return ModelHandle("actor", registry, directory, directory, "/rl")


@pytest.fixture
def stale_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = ModelRegistry.stale

    def counted(self: ModelRegistry) -> bool:
        calls.append(1)
        return real(self)

    monkeypatch.setattr(ModelRegistry, "stale", counted)
    return calls


def test_requests_of_one_loop_iteration_share_one_look(tmp_path: Path, stale_calls: list[int]):
    publish(torch_script(seeded(0)), tmp_path)
    handle = handle_for(tmp_path)

    async def main() -> list[Any]:
        await handle.live()  # the first load
        stale_calls.clear()
        together = await asyncio.gather(*(handle.live() for _ in range(20)))
        await asyncio.sleep(0)  # the next iteration looks again
        await handle.live()
        return together

    try:
        together = asyncio.run(main())
    finally:
        handle.registry.close()
    assert len({id(live) for live in together}) == 1
    assert len(stale_calls) == 2, f"stale() ran {len(stale_calls)} times for 21 requests"


def test_a_request_after_a_publish_in_the_same_iteration_gets_the_new_version(tmp_path: Path):
    """The publish happens between two requests of one loop iteration, as a trainer's would
    between one request and the next: the next iteration's request sees it."""
    publish(torch_script(seeded(0)), tmp_path)
    handle = handle_for(tmp_path)

    async def main() -> tuple[str, str]:
        before = (await handle.live()).version.sha256
        publish(torch_script(seeded(1)), tmp_path)  # blocks the loop: no iteration passes
        await asyncio.sleep(0)
        after = (await handle.live()).version.sha256
        return before, after

    try:
        before, after = asyncio.run(main())
    finally:
        handle.registry.close()
    assert before != after


def test_another_event_loop_looks_for_itself(tmp_path: Path, stale_calls: list[int]):
    """A look is one loop's: a handle used from a second loop (a lifespan run again, a thread of
    its own) looks at its source there, even while the first loop's iteration is not over."""
    publish(torch_script(seeded(0)), tmp_path)
    handle = handle_for(tmp_path)

    async def look_then_use_from_another_loop() -> None:
        await handle.live()  # the first load
        await handle.live()  # a look that finds nothing new
        stale_calls.clear()
        other = threading.Thread(target=asyncio.run, args=(handle.live(),))
        other.start()
        other.join()  # this loop's iteration is not over: its own look stands

    try:
        asyncio.run(look_then_use_from_another_loop())
    finally:
        handle.registry.close()
    assert len(stale_calls) == 1, f"stale() ran {len(stale_calls)} times in the second loop"
