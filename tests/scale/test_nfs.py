"""NFS mode (`RegistryOptions(nfs=True)`): the token is polled by a thread of its own, past the
attribute cache. CI has no NFS mount, so the client is simulated: an attribute cache that only an
open (close-to-open consistency) or a directory listing refreshes, and a stat that hangs."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import ckptserve.nfs
from ckptserve import ManifestSource, ModelRegistry, publish
from ckptserve.nfs import DEFAULT_NFS_INTERVAL, FreshAttributes, PolledSource
from ckptserve.versions import stat_key
from policies import seeded_actor


class NfsClient:
    """The calls nfs.py makes, as an NFS client answers them: `stat` from an attribute cache
    that never expires by itself; `open` and `listdir` revalidate with the "server" (the real
    file system); `fstat` of an open file gives the attributes its open fetched. With `hang`
    set, every call blocks until it is cleared (a server that went away)."""

    def __init__(self) -> None:
        self.cache: dict[str, Hashable | None] = {}
        self.hang = threading.Event()
        self.released = threading.Event()
        self.hung = threading.Event()
        self._opened: dict[int, str] = {}

    def _wait(self) -> None:
        if self.hang.is_set():
            self.hung.set()
            self.released.wait(30)

    def stat(self, path: Any) -> Any:
        self._wait()
        key = os.fspath(path)
        if key not in self.cache:
            self.cache[key] = stat_key(key)
        if self.cache[key] is None:
            raise FileNotFoundError(key)
        return self.cache[key]

    def listdir(self, path: Any) -> list[str]:
        self._wait()
        return os.listdir(path)

    def open(self, path: Any, flags: int) -> int:
        self._wait()
        key = os.fspath(path)
        self.cache[key] = stat_key(key)
        fd = os.open(path, flags)
        self._opened[fd] = key
        return fd

    def fstat(self, fd: int) -> Any:
        return os.fstat(fd)

    def close(self, fd: int) -> None:
        self._opened.pop(fd, None)
        os.close(fd)


@pytest.fixture
def nfs_client(monkeypatch: pytest.MonkeyPatch) -> NfsClient:
    """nfs.py's `os` answered by a simulated NFS client (the rest of the process is untouched)."""
    client = NfsClient()
    fake = SimpleNamespace(
        **{name: getattr(os, name) for name in ("O_RDONLY", "O_NONBLOCK", "O_CLOEXEC")},
        listdir=client.listdir, open=client.open, fstat=client.fstat, close=client.close,
    )  # fmt: skip
    monkeypatch.setattr(ckptserve.nfs, "os", fake)
    return client


@pytest.fixture
def registries() -> Iterator[Callable[..., ModelRegistry]]:
    made: list[ModelRegistry] = []

    def make(path: Path, **options: Any) -> ModelRegistry:
        registry = ModelRegistry(path, nfs=True, **options)
        made.append(registry)
        return registry

    yield make
    for registry in made:
        registry.close()


def rewrite_in_place(path: Path, data: bytes) -> None:
    """Write `data` into the existing file (same inode), as an rsync --inplace would."""
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate()


def test_nfs_mode_sees_a_change_the_attribute_cache_hides(
    tmp_path: Path, nfs_client: NfsClient, checkpoint_bytes: Callable[..., bytes]
) -> None:
    """A checkpoint rewritten in place: the cached `stat` still shows the old attributes, the
    poll (which opens the file first) sees the new ones, and the registry swaps."""
    path = tmp_path / "actor_latest.pt"
    path.write_bytes(checkpoint_bytes("torchscript", 0))
    registry = ModelRegistry(path, nfs=True, check_interval=3600)
    try:
        wait_until(lambda: registry.status()["source_health"]["polls"] >= 1, "the first poll")
        registry.check()
        first = registry.current
        assert first is not None
        cached = nfs_client.stat(path)
        rewrite_in_place(path, checkpoint_bytes("torchscript", 1))
        assert nfs_client.stat(path) == cached  # what a plain stat on this client answers
        registry.source.poll_now()  # type: ignore[attr-defined]
        assert registry.token_changed()
        attempt = registry.check()
        assert attempt is not None and attempt.result == "ok", attempt
        assert registry.current is not None
        assert registry.current.version.sha256 != first.version.sha256
    finally:
        registry.close()


def test_fresh_attributes_open_the_file_before_reading_them(
    tmp_path: Path, nfs_client: NfsClient
) -> None:
    """FreshAttributes answers what the server says, not the cache, and None for a missing file."""
    path = tmp_path / "f.pt"
    path.write_bytes(b"one")
    old = nfs_client.stat(path)
    path.write_bytes(b"three")
    assert nfs_client.stat(path) == old != stat_key(path)
    assert FreshAttributes().stat(path) == stat_key(path)
    assert nfs_client.stat(path) == stat_key(path)  # the open refreshed the cache too
    assert FreshAttributes().stat(tmp_path / "missing.pt") is None


def test_a_hung_mount_holds_up_only_the_poll_thread(
    tmp_path: Path, nfs_client: NfsClient, registries: Callable[..., ModelRegistry]
) -> None:
    """While every call to the mount hangs, get() answers at once with the live model, the token
    stays the last one polled, and status shows a read under way; when the mount answers again,
    a new publish swaps."""
    publish(seeded_actor(0), tmp_path, format="torchscript")
    registry = registries(tmp_path, check_interval=0.05)
    registry.check()
    live = registry.current
    assert live is not None
    nfs_client.hang.set()
    try:
        assert nfs_client.hung.wait(20), "the poll thread never reached the mount"
        started = time.perf_counter()
        for _ in range(1000):
            assert registry.get() is live
        elapsed = time.perf_counter() - started
        assert elapsed < 5, f"1000 get() took {elapsed:.2f} s while the mount hung"
        health = registry.status()["source_health"]
        assert health["reading_for"] is not None, health
    finally:
        nfs_client.hang.clear()
        nfs_client.released.set()
    newer = publish(seeded_actor(1), tmp_path, format="torchscript")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and registry.get().version.checkpoint != newer.name:
        time.sleep(0.05)
    assert registry.get().version.checkpoint == newer.name, registry.status()


def test_manifest_named_sha256_is_part_of_the_token(tmp_path: Path) -> None:
    """A manifest that changes while its attributes look the same (coarse timestamps, a cache)
    changes the token at the next poll: the poll reads the sha256 it names."""

    class Frozen:
        def stat(self, path: Path) -> Hashable | None:
            return (1, 2, 3, 4, 5)

    publish(seeded_actor(0), tmp_path, format="torchscript")
    source = PolledSource(
        ManifestSource(tmp_path / "actor_latest.json"), interval=3600, attributes=Frozen()
    )
    try:
        source.poll_now()
        before = source.token()
        publish(seeded_actor(1), tmp_path, format="torchscript")
        source.poll_now()
        assert source.token() != before
        assert source.digest() == ManifestSource(tmp_path / "actor_latest.json").digest()
    finally:
        source.close()


def test_nfs_mode_follows_a_directory_with_its_own_interval(
    tmp_path: Path, registries: Callable[..., ModelRegistry]
) -> None:
    """nfs=True with the default check interval polls every second; publishes are served."""
    first = publish(seeded_actor(0), tmp_path, format="torchscript")
    registry = registries(tmp_path)
    registry.check()
    assert registry.get().version.checkpoint == first.name
    health = registry.status()["source_health"]
    assert health["interval"] == DEFAULT_NFS_INTERVAL and registry.status()["source"] == "manifest"
    second = publish(seeded_actor(1), tmp_path, format="torchscript")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and registry.get().version.checkpoint != second.name:
        time.sleep(0.05)
    assert registry.get().version.checkpoint == second.name, registry.status()


def test_closing_the_registry_stops_the_poll_thread(tmp_path: Path) -> None:
    """A closed registry polls no more, though something still holds it."""
    publish(seeded_actor(0), tmp_path, format="torchscript")
    before = set(threading.enumerate())
    registry = ModelRegistry(tmp_path, nfs=True, check_interval=0.05)
    registry.check()
    polls = [t for t in set(threading.enumerate()) - before if t.name.startswith("ckptserve-nfs-")]
    assert len(polls) == 1, [t.name for t in threading.enumerate()]
    registry.close()
    for thread in polls:
        thread.join(10)
    assert not any(t.is_alive() for t in polls), [t.name for t in polls if t.is_alive()]
    assert registry.current is not None  # held on purpose: collection would end it anyway


def test_a_check_after_close_starts_no_poll_thread(tmp_path: Path) -> None:
    """With the watched manifest gone, a check looks for another file to follow: after close()
    it must not start a poll of its own."""
    publish(seeded_actor(0), tmp_path, format="torchscript")
    registry = ModelRegistry(tmp_path, nfs=True, check_interval=3600)
    registry.check()
    (tmp_path / "actor_latest.json").unlink()
    registry.source.poll_now()  # type: ignore[attr-defined]
    registry.close()
    before = set(threading.enumerate())
    registry.check()
    started = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert started == [], started


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.01)
