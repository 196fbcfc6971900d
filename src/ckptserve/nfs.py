"""DETECT on a shared file system (`--nfs`): a local source whose token is read off the request
path, by a thread of its own, after defeating the client's attribute cache.

An NFS client answers `stat` from its attribute cache for up to `acregmax` seconds (`actimeo`
sets all four bounds; the Linux default is 3-60 s for files, 30-60 s for directories), so a plain
stat can miss a new checkpoint for a minute, and a hung mount blocks it for as long as the server
is away. Here each poll lists the directory (a renamed-in file gets a fresh lookup) and opens the
file (close-to-open consistency: an open asks the server for the file's attributes), then reads
its attributes from the open file; for a manifest it also reads the sha256 it names, so a change
that keeps the stat key (coarse timestamps) is seen at the next poll too. Requests only read the
last token polled, so a mount that hangs holds up the poll thread and nothing else; the source's
`health()` shows how long a read has been under way.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Hashable
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from ._copies import PrivateCopies
from ._polling import Poll
from .sources import DEFAULT_LIMIT, Snapshot, Source
from .versions import VersionKey

__all__ = ["DEFAULT_NFS_INTERVAL", "Attributes", "FreshAttributes", "PolledSource"]

#: Seconds between polls when `check_interval` is 0 (the local default).
DEFAULT_NFS_INTERVAL = 1.0


class Attributes(Protocol):
    """How a poll reads a file's attributes."""

    def stat(self, path: Path) -> Hashable | None:
        """The file's stat key, as fresh as the file system allows; None when it is not there."""


class FreshAttributes:
    """Attributes read past the NFS attribute cache: list the directory, open the file, and
    take the attributes of the open file (an open revalidates them with the server)."""

    def stat(self, path: Path) -> Hashable | None:
        with contextlib.suppress(OSError):
            os.listdir(path.parent)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, ValueError):
            return None
        try:
            return VersionKey.from_stat(os.fstat(fd)).as_tuple()
        finally:
            os.close(fd)


class PolledSource:
    """A file or manifest source whose token a poll thread reads every `interval` seconds.

    Args:
        inner: the source that reads the bytes (a FileSource or a ManifestSource).
        interval: seconds between polls (0: DEFAULT_NFS_INTERVAL).
        attributes: how the poll reads the file's attributes (default: FreshAttributes()).

    The token is the stat key, and for a manifest the sha256 it names as well.
    """

    def __init__(
        self, inner: Source, *, interval: float = 0.0, attributes: Attributes | None = None
    ) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.path = inner.path
        self._attributes = attributes or FreshAttributes()
        self._manifest = inner.kind == "manifest"
        self._digest: str | None = None
        self._poll = Poll(
            self._read, interval or DEFAULT_NFS_INTERVAL, name=f"ckptserve-nfs-{self.path.name}"
        )

    def token(self) -> Hashable | None:
        return self._poll.value

    def fetch(self, copies: PrivateCopies, *, limit: int = DEFAULT_LIMIT) -> Snapshot:
        # The attributes around the read, read as the poll reads them (the inner source's own
        # stat may come from the cache): a change meanwhile makes the registry look again.
        before = self._attributes.stat(self.path)
        try:
            snapshot = self.inner.fetch(copies, limit=limit)
        except FileNotFoundError:
            self._poll.offer(None)
            raise
        after = self._attributes.stat(self.path)
        if self._manifest:
            self._digest = snapshot.sha256
            self._poll.offer(None if after is None else (after, snapshot.sha256))
            return replace(snapshot, token=(before, snapshot.sha256))
        self._poll.offer(after)
        return replace(snapshot, token=before)

    def digest(self) -> str | None:
        """The sha256 the manifest named at the last poll (no I/O here: the poll read it)."""
        return self._digest

    def health(self) -> dict[str, Any]:
        """The poll's state: when it last answered, the last error, a read under way (a hung
        mount shows as a growing `reading_for`)."""
        return {"path": str(self.path), **self._poll.health()}

    def poll_now(self) -> None:
        """One poll in the calling thread (the poll thread does this every interval)."""
        self._poll.poll_once()

    def close(self) -> None:
        """Stop polling (also done when the source is collected)."""
        self._poll.close()

    def _read(self) -> Hashable | None:
        key = self._attributes.stat(self.path)
        if key is None or not self._manifest:
            return key
        self._digest = digest = self.inner.digest()
        return (key, digest)

    def __repr__(self) -> str:
        return f"PolledSource({self.inner!r})"
