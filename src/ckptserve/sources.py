"""DETECT: where checkpoints come from. A source gives a cheap version token and, on demand, the bytes.

Two sources ship: `FileSource` watches one file (its token is the `os.stat` key) and
`ManifestSource` watches a small `{name}_latest.json` that names an immutable checkpoint and its
sha256. Object storage (an ETag as the token) fits the same protocol.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Hashable
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
    "stat_token",
]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The bytes of one checkpoint as read once, with what identifies them."""

    token: Hashable
    data: bytes
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

    def fetch(self) -> Snapshot:
        """Read the checkpoint once. Raises FileNotFoundError or CheckpointError."""

    def digest(self) -> str | None:
        """The sha256 the source currently points at, if that is cheap to learn; else None."""


def stat_token(path: str | os.PathLike[str]) -> tuple[int, int, int, int, int] | None:
    """The stat key of `path` (following symlinks) as a plain tuple, or None when it is missing."""
    try:
        st = os.stat(path)
    except OSError:  # missing, a dangling or looping link, no permission, a stale NFS handle
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev, st.st_ctime_ns)


def _read_file(path: Path) -> tuple[bytes, VersionKey, Path]:
    resolved = Path(os.path.realpath(path))
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        data = f.read()
    return data, VersionKey.from_stat(st), resolved


class FileSource:
    """Watches one checkpoint file, or a symlink to one, by its stat key."""

    kind = "file"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._str = os.fspath(path)

    def token(self) -> Hashable | None:
        try:
            st = os.stat(self._str)
        except OSError:  # missing, a dangling or looping link, no permission, a stale NFS handle
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev, st.st_ctime_ns)

    def fetch(self) -> Snapshot:
        before = self.token()
        if before is None:
            raise FileNotFoundError(self._str)
        data, key, resolved = _read_file(self.path)
        return Snapshot(
            token=before,
            data=data,
            path=self.path,
            resolved=resolved,
            sha256=hashlib.sha256(data).hexdigest(),
            key=key,
        )

    def digest(self) -> str | None:
        return None

    def __repr__(self) -> str:
        return f"FileSource({self._str!r})"


class ManifestSource:
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
        self.path = Path(path)
        self._str = os.fspath(path)
        self._key = signing_key
        self._require = require_signature

    def token(self) -> Hashable | None:
        try:
            st = os.stat(self._str)
        except OSError:  # missing, a dangling or looping link, no permission, a stale NFS handle
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev, st.st_ctime_ns)

    def read_manifest(self) -> dict[str, Any]:
        with open(self._str, "rb") as f:
            raw = f.read()
        manifest = parse_manifest(raw)
        verify_signature(manifest, self._key, required=self._require)
        return manifest

    def fetch(self) -> Snapshot:
        before = self.token()
        if before is None:
            raise FileNotFoundError(self._str)
        manifest = self.read_manifest()
        checkpoint = self.path.parent / manifest["checkpoint"]
        try:
            data, key, resolved = _read_file(checkpoint)
        except FileNotFoundError:
            raise CheckpointError(
                f"manifest names {manifest['checkpoint']}, which does not exist"
            ) from None
        sha = hashlib.sha256(data).hexdigest()
        if sha != manifest["sha256"]:
            raise IntegrityError(
                f"{manifest['checkpoint']}: sha256 {sha[:12]} does not match the manifest's "
                f"{manifest['sha256'][:12]}"
            )
        if len(data) != manifest["size"]:
            raise IntegrityError(f"{manifest['checkpoint']}: size differs from the manifest")
        return Snapshot(
            token=before,
            data=data,
            path=checkpoint,
            resolved=resolved,
            sha256=sha,
            key=key,
            metadata=dict(manifest.get("metadata") or {}),
        )

    def digest(self) -> str | None:
        try:
            return str(self.read_manifest()["sha256"])
        except (OSError, CheckpointError):
            return None

    def __repr__(self) -> str:
        return f"ManifestSource({self._str!r})"


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
