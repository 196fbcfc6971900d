"""The server's state directory (`--state-dir`): what must outlive a restart and be shared by
every worker, kept where the server may write, never in the model directory.

Today it holds the pins: `pins.json`, which checkpoint is pinned for each model (its directory
and name). The server writes it when an admin pins or unpins; `publish()` reads it so that
retention never removes a pinned checkpoint. The file is replaced atomically under a lock (one
writer at a time across workers) and read tolerantly: a missing, garbled or oversized file reads
as no pins. It is created with the umask, readable by the trainer's user under the usual 022: it
names checkpoints, nothing secret. Nothing here imports torch.

    {"version": 1, "pins": [{"directory": "/srv/models", "name": "actor",
      "checkpoint": "actor_20260412_143022.pt", "sha256": "…", "pinned_at": 1776000000.0}]}
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import stat
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "PINS_FILE",
    "STATE_DIR_ENV",
    "Pin",
    "pinned_in",
    "read_pins",
    "read_regular",
    "write_pin",
]

#: The environment variable `publish()` reads for the state directory when given none.
STATE_DIR_ENV = "CKPTSERVE_STATE_DIR"
#: The pins file inside the state directory.
PINS_FILE = "pins.json"
_LOCK_FILE = ".pins.lock"
_MAX_BYTES = 1 << 20  # far more than any number of pins; a bigger file is not ours
_VERSION = 1


@dataclass(frozen=True, slots=True)
class Pin:
    """One pinned checkpoint: `checkpoint` (a file name) in `directory` (resolved) for `name`."""

    directory: str
    name: str
    checkpoint: str
    sha256: str | None = None  # the digest verified when it was pinned, if known
    pinned_at: float = 0.0

    @property
    def path(self) -> Path:
        """The pinned checkpoint's path."""
        return Path(self.directory) / self.checkpoint


def _key(directory: str | os.PathLike[str]) -> str:
    return os.path.realpath(directory)


def read_pins(state_dir: str | os.PathLike[str]) -> dict[tuple[str, str], Pin]:
    """Every pin recorded in `state_dir`, by (resolved model directory, model name).

    Never raises for the file's contents: a missing, unreadable, garbled or oversized file, or
    an entry of the wrong shape, reads as no pins (or without that entry).
    """
    try:
        raw = read_regular(Path(state_dir) / PINS_FILE)
        data = json.loads(raw)
    except (OSError, ValueError, RecursionError):
        return {}
    entries = data.get("pins") if isinstance(data, dict) else None
    pins: dict[tuple[str, str], Pin] = {}
    for entry in entries if isinstance(entries, list) else []:
        pin = _pin_from(entry)
        if pin is not None:
            pins[pin.directory, pin.name] = pin
    return pins


def pinned_in(state_dir: str | os.PathLike[str], directory: str | os.PathLike[str]) -> set[str]:
    """The file names of the checkpoints pinned in `directory`, for any model name."""
    where = _key(directory)
    return {pin.checkpoint for (d, _), pin in read_pins(state_dir).items() if d == where}


def write_pin(
    state_dir: str | os.PathLike[str],
    directory: str | os.PathLike[str],
    name: str,
    checkpoint: str | None,
    *,
    sha256: str | None = None,
) -> Pin | None:
    """Record that `checkpoint` (a file name in `directory`) is pinned for model `name`, or
    with None that nothing is; return the pin recorded.

    Creates `state_dir` if needed. The file is rewritten atomically under an exclusive lock, so
    workers pinning at once do not lose each other's pins. Raises OSError when the state
    directory cannot be written, ValueError for a checkpoint that is not a plain file name.
    """
    if checkpoint is not None and (
        not checkpoint or os.path.basename(checkpoint) != checkpoint or checkpoint in {".", ".."}
    ):
        raise ValueError(f"{checkpoint!r} is not a file name")
    root = Path(state_dir)
    root.mkdir(parents=True, exist_ok=True)
    key = (_key(directory), name)
    with _locked(root):
        pins = read_pins(root)
        pin = None
        if checkpoint is None:
            pins.pop(key, None)
        else:
            pin = Pin(key[0], name, checkpoint, sha256, time.time())
            pins[key] = pin
        body = {"version": _VERSION, "pins": [asdict(p) for p in pins.values()]}
        _replace(root / PINS_FILE, json.dumps(body, indent=2, sort_keys=True).encode())
    return pin


def _pin_from(entry: Any) -> Pin | None:
    if not isinstance(entry, dict):
        return None
    directory, name, checkpoint = entry.get("directory"), entry.get("name"), entry.get("checkpoint")
    sha256, pinned_at = entry.get("sha256"), entry.get("pinned_at", 0.0)
    if not (isinstance(directory, str) and isinstance(name, str) and isinstance(checkpoint, str)):
        return None
    if not (directory and name and checkpoint):
        return None
    if os.path.basename(checkpoint) != checkpoint or checkpoint in {".", ".."}:
        return None
    if sha256 is not None and not isinstance(sha256, str):
        return None
    if isinstance(pinned_at, bool) or not isinstance(pinned_at, (int, float)):
        return None
    return Pin(directory, name, checkpoint, sha256, float(pinned_at))


def read_regular(path: Path, limit: int = _MAX_BYTES) -> bytes:
    """At most `limit` bytes of a regular file of the state directory, opened without following a
    symlink or blocking (a FIFO, a link or a huge file planted there is an OSError)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    with open(fd, "rb", buffering=0) as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(f"{path} is not a regular file")
        raw = f.read(limit + 1)
    if len(raw) > limit:
        raise OSError(f"{path} is over {limit} bytes")
    return raw


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(root / _LOCK_FILE, flags, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
