"""Shared fixtures for the core tests: tiny actors, checkpoint bytes in every format, registries."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ckptserve import ModelRegistry, publish
from policies import Actor, seeded_actor


@pytest.fixture(scope="session")
def checkpoint_bytes(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., bytes]:
    """`checkpoint_bytes(fmt, seed=0)`: a published checkpoint's bytes, cached for the session."""
    cache: dict[tuple[str, int], bytes] = {}
    root = tmp_path_factory.mktemp("ckpt-bytes")

    def make(fmt: str = "torchscript", seed: int = 0) -> bytes:
        if (fmt, seed) not in cache:
            path = publish(seeded_actor(seed), root / f"{fmt}-{seed}", format=fmt)  # type: ignore[arg-type]
            cache[fmt, seed] = path.read_bytes()
        return cache[fmt, seed]

    return make


@pytest.fixture
def actor() -> Actor:
    return seeded_actor(0)


@pytest.fixture
def make_registry() -> Iterator[Callable[..., ModelRegistry]]:
    """Build registries that are closed at the end of the test."""
    made: list[ModelRegistry] = []

    def make(path: Any, **options: Any) -> ModelRegistry:
        registry = ModelRegistry(path, **options)
        made.append(registry)
        return registry

    yield make
    for registry in made:
        registry.close()


@pytest.fixture
def ckpt_path(tmp_path: Path) -> Path:
    """Where a plain-file test writes its checkpoint (the original layout)."""
    directory = tmp_path / "models" / "rl" / "stat_pair"
    directory.mkdir(parents=True)
    return directory / "actor_latest.pt"
