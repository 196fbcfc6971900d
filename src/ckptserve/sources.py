"""DETECT: where checkpoints come from. A source gives a cheap version token and, on demand, the bytes.

Two sources ship: `FileSource` watches one file (its token is the `os.stat` key) and
`ManifestSource` watches a small `{name}_latest.json` that names an immutable checkpoint and its
sha256. Object storage (an ETag as the token) fits the same protocol.

`fetch(copies, limit=)` streams the checkpoint into a private file, hashing it chunk by chunk
(hashlib and file I/O release the GIL for big buffers), and names it by its sha256: nothing holds
the whole file in one Python object, so a reload of a large checkpoint does not stall the other
threads for the time it takes to allocate, copy and free it. Only regular files are read (opened
without blocking, so a FIFO cannot hang a load), and never more bytes than the limit allows.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import stat
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ._copies import PrivateCopies
from .errors import CheckpointError, IntegrityError, PathNotAllowed
from .manifest import MAX_MANIFEST_BYTES, Keyring, checked_manifest
from .naming import is_object_url, latest_in_directory, record_for
from .versions import VersionKey, stat_key

__all__ = [
    "DEFAULT_LIMIT",
    "FileSource",
    "ManifestSource",
    "Snapshot",
    "Source",
    "checkpoint_source",
    "confine",
    "make_source",
]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One checkpoint as read once: a private copy of its bytes, and what identifies them.

    `file` is named by the sha256 of its bytes and never written again, so what is loaded from
    it is exactly what was hashed, whatever happens to the source afterwards. `inside` is False
    when the path led (through a symlink) outside its own directory: status and errors then name
    only the path inside the directory and withhold the target's name, size, digest and inode.
    """

    token: Hashable
    file: Path
    size: int
    path: Path
    resolved: Path
    sha256: str
    key: VersionKey
    metadata: dict[str, Any] = field(default_factory=dict)
    inside: bool = True


class Source(Protocol):
    """Tells whether a checkpoint changed (`token`) and reads it (`fetch`)."""

    kind: str
    path: Path

    def token(self) -> Hashable | None:
        """A cheap value that changes when the checkpoint may have; None when there is none
        (or it cannot be stat'ed: a dangling link, no permission, a stale NFS handle). Never
        reads file contents: it runs on the request path."""

    def fetch(self, copies: PrivateCopies, *, limit: int) -> Snapshot:
        """Copy the checkpoint once into `copies`, reading at most `limit` bytes of it.

        Raises FileNotFoundError or CheckpointError."""

    def digest(self) -> str | None:
        """The sha256 the source currently points at, if that is cheap to learn; else None."""


#: The default for `max_checkpoint_bytes`: the most bytes of one checkpoint that are read.
DEFAULT_LIMIT = 8 << 30

#: Bytes per read/hash/write while spooling: big enough that each call releases the GIL for its
#: work, small enough that no call holds a large buffer.
CHUNK = 1 << 20

_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFDIR: "a directory", stat.S_IFSOCK: "a socket"}  # fmt: skip


def open_regular(path: Path) -> int:
    """Open `path` for reading without ever blocking, and only if it is a regular file.

    O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever. Raises
    FileNotFoundError, or CheckpointError for anything but a regular file.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        what = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise CheckpointError(f"{path.name} is {what}, not a regular file: refused")
    return fd


@dataclass(frozen=True, slots=True)
class _Spooled:
    file: Path
    size: int
    sha256: str
    key: VersionKey
    resolved: Path


def _spool(
    path: Path,
    copies: PrivateCopies,
    limit: int,
    verify: Callable[[str, int], None] | None = None,
    too_big: str = "",
) -> _Spooled:
    """Stream `path` into the cache as `<sha256>`, hashing each chunk and stopping past `limit`
    bytes; `verify(sha256, size)` may raise before the copy is kept (a partial or refused copy is
    removed). `too_big` says why the limit is what it is."""
    resolved = Path(os.path.realpath(path))
    with open(open_regular(path), "rb", buffering=0) as src:
        st = os.fstat(src.fileno())
        why = too_big or f"the {limit}-byte limit (--max-checkpoint-bytes)"
        if st.st_size > limit:
            raise CheckpointError(f"{path.name} is {st.st_size} bytes, over {why}: refused")
        fd, tmp = copies.spool_file()
        try:
            digest, size = hashlib.sha256(), 0
            buf = memoryview(bytearray(CHUNK))
            with open(fd, "wb") as dst:
                while n := src.readinto(buf[: min(CHUNK, limit - size + 1)]):
                    size += n
                    if size > limit:
                        raise CheckpointError(f"{path.name} grew past {why} while it was read")
                    digest.update(buf[:n])
                    dst.write(buf[:n])
            sha = digest.hexdigest()
            if verify is not None:
                verify(sha, size)
            target = copies.adopt(tmp, sha, size)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return _Spooled(target, size, sha, VersionKey.from_stat(st), resolved)


def _inside(resolved: Path, directory: Path) -> bool:
    root = os.path.realpath(directory)
    return os.path.dirname(resolved) == root or str(resolved).startswith(root + os.sep)


class _StatWatched:
    """A source whose token is the stat key of the file it watches."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._str = os.fspath(path)

    def token(self) -> Hashable | None:
        return stat_key(self._str)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._str!r})"


class FileSource(_StatWatched):
    """Watches one checkpoint file, or a symlink to one, by its stat key.

    Args:
        path: the file.
        sha256: if given, the only bytes accepted (a pin of a checkpoint whose digest was
            verified when it was served before); anything else is an IntegrityError.
    """

    kind = "file"

    def __init__(self, path: str | os.PathLike[str], *, sha256: str | None = None) -> None:
        super().__init__(path)
        self._want = sha256

    def fetch(self, copies: PrivateCopies, *, limit: int = DEFAULT_LIMIT) -> Snapshot:
        before = self.token()
        if before is None:
            raise FileNotFoundError(self._str)
        want = self._want

        def verify(sha: str, size: int) -> None:
            if want is not None and sha != want:
                raise IntegrityError(
                    f"{self.path.name} is not the checkpoint that was verified before: refused"
                )

        copy = _spool(self.path, copies, limit, verify)
        return Snapshot(
            token=before,
            file=copy.file,
            size=copy.size,
            path=self.path,
            resolved=copy.resolved,
            sha256=copy.sha256,
            key=copy.key,
            inside=_inside(copy.resolved, self.path.parent),
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
        signing_key: Keyring | str | bytes | None = None,
        require_signature: bool = False,
        checkpoint: str | None = None,
    ) -> None:
        super().__init__(path)
        self._key = signing_key
        self._require = require_signature
        self._only = checkpoint

    def read_manifest(self) -> dict[str, Any]:
        """The manifest, parsed and its signature checked; at most MAX_MANIFEST_BYTES bytes are read.

        Raises FileNotFoundError, or IntegrityError (with a one-line reason) for anything that
        is not a well-formed manifest with a valid signature."""
        with open(open_regular(self.path), "rb", buffering=0) as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise IntegrityError(f"manifest is over {MAX_MANIFEST_BYTES} bytes: not a manifest")
        return checked_manifest(raw, self._key, required=self._require)

    def fetch(self, copies: PrivateCopies, *, limit: int = DEFAULT_LIMIT) -> Snapshot:
        before = self.token()
        if before is None:
            raise FileNotFoundError(self._str)
        manifest = self.read_manifest()
        name, want, size = manifest["checkpoint"], manifest["sha256"], manifest["size"]
        if self._only is not None and name != self._only:
            raise IntegrityError(f"{self.path.name} is the record of another checkpoint: refused")

        def verify(sha: str, got: int) -> None:
            if got != size:
                raise IntegrityError(f"{name}: size differs from the manifest")
            if sha != want:
                raise IntegrityError(f"{name}: sha256 does not match the manifest")

        checkpoint = self.path.parent / name
        # An unsigned manifest's size is the writer's choice, so the limit stays too.
        bound, why = (size + 1, "the size the manifest states") if size < limit else (limit, "")
        try:
            copy = _spool(checkpoint, copies, bound, verify, why)
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
            inside=_inside(copy.resolved, self.path.parent),
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
    signing_key: Keyring | str | bytes | None = None,
    require_signature: bool = False,
    check_interval: float = 0.0,
) -> Source:
    """Pick the source for a path: a `.json` manifest, a checkpoint file, or a directory.

    A directory is followed through `{name}_latest.json` when it has one, else
    `{name}_latest.pt`; with no `name` match, the single `*_latest.json` / `*_latest.pt` in it.
    With `require_signature` only manifests are followed (a plain file carries no signature).
    An `s3://bucket/prefix/` URL is followed by objectstore.S3Source (polled every
    `check_interval` seconds, 2 s when 0).
    """
    if is_object_url(path):
        # objectstore.py builds on this module, so it is found by name, not imported above.
        s3: Any = importlib.import_module("ckptserve.objectstore")
        source: Source = s3.S3Source(
            path, name=name, signing_key=signing_key, require_signature=require_signature,
            check_interval=check_interval,
        )  # fmt: skip
        return source
    p = Path(path)
    if os.path.isdir(p):
        p = latest_in_directory(p, name, signed_only=require_signature)
    if p.suffix == ".json":
        return ManifestSource(p, signing_key=signing_key, require_signature=require_signature)
    if require_signature:
        raise CheckpointError(f"{p}: a signature is required, so serve a manifest (*.json)")
    return FileSource(p)


def checkpoint_source(
    path: Path,
    *,
    watched: Source,
    signing_key: Keyring | str | bytes | None,
    signed: bool,
    verified_sha256: str | None = None,
) -> Source:
    """The source that checks one earlier checkpoint (a pin, a fallback) as `watched` would.

    Beside a plain file the checkpoint is a plain file. Beside a manifest it is read through its
    own record (`naming.record_for`, written by publish(): sha256 and signature checked), or,
    without one, by the digest a manifest gave when it was served here before. With signatures
    on, a checkpoint without a valid signed record does not qualify.

    Raises:
        CheckpointError: the checkpoint cannot be checked as `watched` would check it.
    """
    if watched.kind == "file" and not signed:
        return FileSource(path)
    try:
        record = record_for(path)
    except ValueError:
        record = None
    if record is not None and os.path.lexists(record):
        return ManifestSource(record, signing_key=signing_key, require_signature=signed,
                              checkpoint=path.name)  # fmt: skip
    if verified_sha256 is not None and not signed:
        return FileSource(path, sha256=verified_sha256)
    what = "signed manifest" if signed else "manifest"
    raise CheckpointError(
        f"{path.name} has no {what} record to check it against, so it cannot be served here"
    )


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
