"""DETECT: where checkpoints come from. A source gives a cheap version token and, on demand, the bytes.

Two sources ship: `FileSource` watches one file (its token is the `os.stat` key) and
`ManifestSource` watches a small `{name}_latest.json` that names an immutable checkpoint and its
sha256. Object storage (an ETag as the token) fits the same protocol.

`fetch(spool)` streams the checkpoint into a private file in `spool`, hashing it chunk by chunk
(hashlib and file I/O release the GIL for big buffers), and names it by its sha256: nothing holds
the whole file in one Python object, so a reload of a large checkpoint does not stall the other
threads for the time it takes to allocate, copy and free it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .errors import CheckpointError, IntegrityError, PathNotAllowed
from .manifest import parse_manifest, verify_signature
from .versions import VersionKey

__all__ = [
    "FileSource",
    "ManifestSource",
    "Snapshot",
    "Source",
    "confine",
    "make_source",
]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One checkpoint as read once: a private copy of its bytes, and what identifies them.

    `file` is named by the sha256 of its bytes and never written again, so what is loaded from
    it is exactly what was hashed, whatever happens to the source afterwards.
    """

    token: Hashable
    file: Path
    size: int
    path: Path
    resolved: Path
    sha256: str
    key: VersionKey
    metadata: dict[str, Any] = field(default_factory=dict)


class Source(Protocol):
    """Tells whether a checkpoint changed (`token`) and reads it (`fetch`)."""

    kind: str
    path: Path

    def token(self) -> Hashable | None:
        """A cheap value that changes when the checkpoint may have; None when there is none
        (or it cannot be stat'ed: a dangling link, no permission, a stale NFS handle)."""

    def fetch(self, spool: Path) -> Snapshot:
        """Copy the checkpoint once into the directory `spool`, as `<sha256>`.

        Raises FileNotFoundError or CheckpointError."""

    def digest(self) -> str | None:
        """The sha256 the source currently points at, if that is cheap to learn; else None."""


#: Bytes per read/hash/write while spooling: big enough that each call releases the GIL for its
#: work, small enough that no call holds a large buffer.
CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class _Spooled:
    file: Path
    size: int
    sha256: str
    key: VersionKey
    resolved: Path


def _spool(path: Path, spool: Path, verify: Callable[[str, int], None] | None = None) -> _Spooled:
    """Stream `path` into `spool/<sha256>`, hashing each chunk; `verify(sha256, size)` may raise
    before the copy is kept (a partial or refused copy is removed)."""
    resolved = Path(os.path.realpath(path))
    with open(path, "rb", buffering=0) as src:
        st = os.fstat(src.fileno())
        spool.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=spool, prefix=".spool-")
        try:
            digest, size = hashlib.sha256(), 0
            buf = memoryview(bytearray(CHUNK))
            with open(fd, "wb") as dst:
                while n := src.readinto(buf):
                    digest.update(buf[:n])
                    dst.write(buf[:n])
                    size += n
            sha = digest.hexdigest()
            if verify is not None:
                verify(sha, size)
            target = spool / sha
            if target.is_file() and target.stat().st_size == size:
                # The same bytes are there already (a model that still maps them, a touch or a
                # rollback): keep that file, so its pages are not freed on the last unmap.
                os.unlink(tmp)
            else:
                os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return _Spooled(target, size, sha, VersionKey.from_stat(st), resolved)


class _StatWatched:
    """A source whose token is the stat key of the file it watches."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._str = os.fspath(path)

    def token(self) -> Hashable | None:
        try:
            st = os.stat(self._str)
        except OSError:  # missing, a dangling or looping link, no permission, a stale NFS handle
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev, st.st_ctime_ns)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._str!r})"


class FileSource(_StatWatched):
    """Watches one checkpoint file, or a symlink to one, by its stat key."""

    kind = "file"

    def fetch(self, spool: Path) -> Snapshot:
        before = self.token()
        if before is None:
            raise FileNotFoundError(self._str)
        copy = _spool(self.path, spool)
        return Snapshot(
            token=before,
            file=copy.file,
            size=copy.size,
            path=self.path,
            resolved=copy.resolved,
            sha256=copy.sha256,
            key=copy.key,
        )

    def digest(self) -> str | None:
        return None


class ManifestSource(_StatWatched):
    """Watches `{name}_latest.json` and reads the checkpoint it names, verifying its sha256.

    The manifest is tiny, so re-reading it (`digest`) is cheap enough to run every few seconds:
    that catches what stat keys miss on coarse-timestamp or attribute-caching file systems.
    """

    kind = "manifest"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        signing_key: str | bytes | None = None,
        require_signature: bool = False,
    ) -> None:
        super().__init__(path)
        self._key = signing_key
        self._require = require_signature

    def read_manifest(self) -> dict[str, Any]:
        with open(self._str, "rb") as f:
            raw = f.read()
        manifest = parse_manifest(raw)
        verify_signature(manifest, self._key, required=self._require)
        return manifest

    def fetch(self, spool: Path) -> Snapshot:
        before = self.token()
        if before is None:
            raise FileNotFoundError(self._str)
        manifest = self.read_manifest()
        name = manifest["checkpoint"]

        def verify(sha: str, size: int) -> None:
            if sha != manifest["sha256"]:
                raise IntegrityError(
                    f"{name}: sha256 {sha[:12]} does not match the manifest's "
                    f"{manifest['sha256'][:12]}"
                )
            if size != manifest["size"]:
                raise IntegrityError(f"{name}: size differs from the manifest")

        checkpoint = self.path.parent / name
        try:
            copy = _spool(checkpoint, spool, verify)
        except FileNotFoundError:
            raise CheckpointError(f"manifest names {name}, which does not exist") from None
        return Snapshot(
            token=before,
            file=copy.file,
            size=copy.size,
            path=checkpoint,
            resolved=copy.resolved,
            sha256=copy.sha256,
            key=copy.key,
            metadata=dict(manifest.get("metadata") or {}),
        )

    def digest(self) -> str | None:
        try:
            return str(self.read_manifest()["sha256"])
        except (OSError, CheckpointError):
            return None


def make_source(
    path: str | os.PathLike[str],
    *,
    name: str = "actor",
    signing_key: str | bytes | None = None,
    require_signature: bool = False,
) -> Source:
    """Pick the source for a path: a `.json` manifest, a checkpoint file, or a directory.

    A directory is followed through `{name}_latest.json` when it has one, else
    `{name}_latest.pt`; with no `name` match, the single `*_latest.json` / `*_latest.pt` in it.
    """
    p = Path(path)
    if p.is_dir():
        p = latest_in_directory(p, name)
    if p.suffix == ".json":
        return ManifestSource(p, signing_key=signing_key, require_signature=require_signature)
    if require_signature:
        raise CheckpointError(f"{p}: a signature is required, so serve a manifest (*.json)")
    return FileSource(p)


def latest_in_directory(directory: Path, name: str) -> Path:
    for candidate in (directory / f"{name}_latest.json", directory / f"{name}_latest.pt"):
        if candidate.exists():
            return candidate
    for pattern in ("*_latest.json", "*_latest.pt"):
        found = sorted(directory.glob(pattern))
        if len(found) == 1:
            return found[0]
    # Nothing published yet: watch the manifest path publish() will write first.
    return directory / f"{name}_latest.json"


def confine(directory: str | os.PathLike[str], name: str) -> Path:
    """Resolve `name` inside `directory`; raise PathNotAllowed if it would leave it.

    Confinement is checked before existence, on the fully resolved path, so `..`, absolute
    names and symlinks pointing out are refused even when their target does not exist.
    """
    root = Path(os.path.realpath(directory))
    if not name or os.path.isabs(name) or "\x00" in name:
        raise PathNotAllowed(f"{name!r} is not a file name inside {root}")
    target = Path(os.path.realpath(root / name))
    if target.parent != root and root not in target.parents:
        raise PathNotAllowed(f"{name!r} resolves outside {root}")
    return target
