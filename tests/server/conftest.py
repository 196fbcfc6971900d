"""Fixtures for the server tests: published checkpoints, an in-process app, and one real
`ckptserve serve` subprocess shared by the end-to-end tests of a session."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from serverkit import ADMIN_TOKEN, InProcessServer, ServerProcess, seeded, torch_script, wait_for

from ckptserve import publish
from ckptserve.server import ModelSpec, Settings, create_app


@pytest.fixture
def thread_hops(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every function sent to a worker thread through `anyio.to_thread.run_sync`, in order."""
    hops: list[Any] = []
    real = anyio.to_thread.run_sync

    async def counting(*args: Any, **kwargs: Any) -> Any:
        hops.append(args[0])
        return await real(*args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    return hops


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A model directory with one published TorchScript checkpoint (seed 0)."""
    directory = tmp_path / "models"
    publish(torch_script(seeded(0)), directory)
    return directory


@pytest.fixture
def make_server() -> Iterator[Callable[..., InProcessServer]]:
    """`make_server(path, ..., **settings)`: `create_app` served in this process, ready."""
    servers: list[InProcessServer] = []

    def make(*paths: Any, ready: bool = True, **options: Any) -> InProcessServer:
        models = [
            ModelSpec(name=f"m{i}" if i else "actor", path=str(p)) for i, p in enumerate(paths)
        ]
        server = InProcessServer(create_app(Settings(models=models, **options)))
        servers.append(server)
        if ready:
            wait_for(lambda: server.client.get("/readyz").status_code == 200, 20, "readiness")
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    """One real server (sync swap, admin token set) over a published directory, for the session."""
    root = tmp_path_factory.mktemp("shared")
    directory = root / "models"
    publish(torch_script(seeded(0)), directory)
    server = ServerProcess(
        [str(directory)], env={"CKPTSERVE_ADMIN_TOKEN": ADMIN_TOKEN}, log=root / "server.log"
    )
    try:
        server.wait_ready()
        yield server, directory
    finally:
        server.stop()
