"""The identities of checkpoints: what changed on disk, and what is live."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["LoadAttempt", "ModelVersion", "VersionKey", "stat_key"]

LoadResult = Literal["ok", "failed", "rejected", "unchanged", "superseded"]

StatKey = tuple[int, int, int, int, int]


def stat_key(path: str | os.PathLike[str]) -> StatKey | None:
    """`os.stat(path)` as the tuple `VersionKey` holds; None when it cannot be stat'ed (missing,
    a dangling or looping link, no permission, a stale NFS handle). A source's token."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # ValueError: a NUL in the path
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev, st.st_ctime_ns)


@dataclass(frozen=True, slots=True)
class VersionKey:
    """What `os.stat` says about a file; any field changing means the file may have changed.

    Nanosecond times, size, inode, device and ctime together see a replace whose mtime was set
    back, a rollback to an older file and a retargeted symlink, none of which a float mtime sees.
    """

    mtime_ns: int
    size: int
    ino: int
    dev: int
    ctime_ns: int

    @classmethod
    def from_stat(cls, st: os.stat_result) -> VersionKey:
        return cls(st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev, st.st_ctime_ns)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def as_tuple(self) -> StatKey:
        return (self.mtime_ns, self.size, self.ino, self.dev, self.ctime_ns)


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One loaded checkpoint: where it came from, its content hash and how it loaded."""

    path: str
    resolved: str
    key: VersionKey | None
    mtime: float
    size: int
    sha256: str
    format: str
    metadata: dict[str, Any] = field(default_factory=dict)
    loaded_at: float = 0.0
    load_seconds: float = 0.0

    @property
    def checkpoint(self) -> str:
        """The file name of the checkpoint that was loaded (symlinks resolved)."""
        return os.path.basename(self.resolved)

    @property
    def tag(self) -> str:
        """`<checkpoint>@<first 12 hex of sha256>`, the short name used in headers and logs."""
        return f"{self.checkpoint}@{self.sha256[:12]}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["checkpoint"] = self.checkpoint
        return data


@dataclass(frozen=True, slots=True)
class LoadAttempt:
    """One try at loading a checkpoint, kept in the registry's history."""

    result: LoadResult
    checkpoint: str | None
    sha256: str | None
    reason: str | None
    duration: float
    at: float
    forced: bool = False
    #: The shadow comparison's figures, when the judge compared it with the live model
    #: (rollout.Divergence.to_dict()).
    divergence: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
