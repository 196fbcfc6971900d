"""Load coordination across processes: at most N processes on a host load a given model at once.

With `--workers N` every worker watches the same checkpoint, so one publish starts N loads at the
same moment: N stalls together and N x 2 copies of the model in memory. `LoadSlots` bounds that
with advisory `fcntl.flock` locks on small files in a per-user temp directory (no daemon, no
extra infrastructure; a process that dies releases its lock with its file descriptors). The
registry asks `busy()` first and, when every slot is taken, keeps serving its live model and
takes its turn on its background worker.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LoadSlots"]

log = logging.getLogger("ckptserve.coordination")


class LoadSlots:
    """`limit` load slots shared by every process that uses the same `key` (the watched path).

    Args:
        key: what identifies the model across processes (its resolved watched path).
        limit: how many processes may load it at once.
        directory: where the lock files live (default: `$TMPDIR/ckptserve-locks-<uid>`).
        timeout: how long `hold()` waits for a slot before loading anyway (logged).

    Example:
        slots = LoadSlots("/models/actor_latest.pt", 1)
        with slots.hold():
            load()
    """

    def __init__(
        self, key: str, limit: int = 1, *, directory: str | None = None, timeout: float = 120.0
    ) -> None:
        if limit < 1:
            raise ValueError("a load needs at least one slot")
        root = Path(directory or Path(tempfile.gettempdir()) / f"ckptserve-locks-{os.getuid()}")
        _own_private_directory(root)
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        self.paths = [root / f"{digest}.{i}.lock" for i in range(limit)]
        self.limit = limit
        self.timeout = timeout

    def _try(self, path: Path) -> int | None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            raise
        return fd

    def busy(self) -> bool:
        """True when every slot is held by some process right now."""
        for path in self.paths:
            fd = self._try(path)
            if fd is not None:
                os.close(fd)  # closing releases the lock
                return False
        return True

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Hold one slot for the block, waiting (polling, at most `timeout` s) for a free one."""
        deadline = time.monotonic() + self.timeout
        pause = 0.002
        fd: int | None = None
        while fd is None:
            for path in self.paths:
                fd = self._try(path)
                if fd is not None:
                    break
            else:
                if time.monotonic() > deadline:
                    log.warning("no load slot free after %.0f s: loading anyway", self.timeout)
                    break
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
        try:
            yield
        finally:
            if fd is not None:
                os.close(fd)


def _own_private_directory(root: Path) -> None:
    """Create `root` 0700, or accept an existing one only if it is a real directory of ours that
    nobody else can write: a directory another user pre-created would let them hold the slots."""
    with contextlib.suppress(FileExistsError):
        root.mkdir(mode=0o700, parents=True)
    st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode):
        raise PermissionError(f"lock directory {root} is not a directory (a symlink?): refused")
    if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
        raise PermissionError(
            f"lock directory {root} must be owned by uid {os.getuid()} with mode 0700 "
            f"(it has uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}): refused"
        )
