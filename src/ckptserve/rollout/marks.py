"""Marks: versions found bad on live traffic, remembered across restarts.

When a live version starts producing non-finite actions on real states, the server falls back to
the previous resident version and marks the bad one by its sha256, so neither the watch nor the
start-up fallback loads it again. The marks are one JSON file per model in a writable state
directory (`--state-dir`), never in the model directory, which the server may only read.

The file is replaced atomically (temporary file, fsync, rename) under an advisory lock, after
reading it again, so server workers sharing a state directory keep each other's marks; reads
notice another worker's write by the file's stat key. At most `keep` marks are kept, the newest.
It lives beside statedir.py's pins (the same `--state-dir`) and is read as tolerantly: a file
that is missing, not a regular file, oversized or garbled reads as no marks, with a warning.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..statedir import read_regular
from ..versions import stat_key

__all__ = ["BadMarks", "Mark"]

log = logging.getLogger("ckptserve.rollout")

_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_BYTES = 4 << 20  # 1,000 marks are ~300 KB; a bigger file is not ours
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True, slots=True)
class Mark:
    """One version marked bad: its sha256, the checkpoint it was, why, and when (epoch s)."""

    sha256: str
    checkpoint: str
    reason: str
    at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _inside(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


class BadMarks:
    """The versions of one model marked bad, kept in `state_dir`.

    Args:
        state_dir: a writable directory for server state (created, 0700, at the first mark).
        model: the model's name (the file is `<model>.marks.json`).
        model_dir: the model's directory: a state dir inside it is refused.
        keep: the most marks kept (the oldest go first).

    Raises:
        ValueError: `state_dir` is (inside) the model directory.

    Example:
        marks = BadMarks("/var/lib/ckptserve", "actor", model_dir=Path("models"))
        if marks.is_bad(sha256): ...
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        model: str,
        *,
        model_dir: str | os.PathLike[str] | None = None,
        keep: int = 1000,
    ) -> None:
        directory = Path(state_dir).resolve()
        if model_dir is not None and _inside(directory, Path(model_dir).resolve()):
            raise ValueError(
                f"the state directory {directory} is inside the model directory {model_dir}: "
                "the server only reads that one; give --state-dir a directory of its own"
            )
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.directory = directory
        stem = _SAFE.sub("_", model) or "model"
        self.path = directory / f"{stem}.marks.json"
        self._lock_path = directory / f".{stem}.marks.lock"
        self.keep = keep
        self._marks: dict[str, Mark] = {}
        self._read_key: object = None  # the file's stat key when it was last read
        self._refresh()

    # ---- reading ----------------------------------------------------------------------------

    def _refresh(self) -> None:
        key = stat_key(self.path)
        if key == self._read_key:
            return
        self._marks = self._load()
        self._read_key = key

    def _load(self) -> dict[str, Mark]:
        try:
            raw = read_regular(self.path, _MAX_BYTES)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.warning("cannot read the bad marks in %s: %s", self.path, exc)
            return dict(self._marks)
        try:
            data = json.loads(raw)
            entries = data["marks"]
            marks = {}
            for entry in entries:
                mark = Mark(str(entry["sha256"]), str(entry["checkpoint"]), str(entry["reason"]),
                            float(entry["at"]))  # fmt: skip
                if _SHA256.fullmatch(mark.sha256):
                    marks[mark.sha256] = mark
            return marks
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("the bad marks in %s are unreadable (%s): starting with none", self.path,
                        exc)  # fmt: skip
            return {}

    def get(self, sha256: str) -> Mark | None:
        """The mark of this version, if it is marked bad."""
        self._refresh()
        return self._marks.get(sha256)

    def is_bad(self, sha256: str) -> bool:
        """Whether this version is marked bad (what the start-up fallback asks)."""
        return self.get(sha256) is not None

    def marks(self) -> list[Mark]:
        """Every mark, oldest first."""
        self._refresh()
        return sorted(self._marks.values(), key=lambda m: m.at)

    # ---- writing ----------------------------------------------------------------------------

    def mark(self, sha256: str, *, checkpoint: str, reason: str) -> Mark:
        """Mark a version bad (kept across restarts); marking it again updates the reason."""
        if not _SHA256.fullmatch(sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        mark = Mark(sha256, checkpoint, reason, time.time())
        with self._locked():
            marks = self._load()
            marks.pop(sha256, None)
            marks[sha256] = mark
            self._write(marks)
        log.warning("marked bad: %s (%s)", checkpoint, reason,
                    extra={"checkpoint": checkpoint, "sha256": sha256, "result": "marked_bad"})  # fmt: skip
        return mark

    def unmark(self, sha256: str) -> bool:
        """Remove a mark (an admin who fixed the cause); True if there was one."""
        with self._locked():
            marks = self._load()
            found = marks.pop(sha256, None) is not None
            if found:
                self._write(marks)
        return found

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, marks: dict[str, Mark]) -> None:
        newest = sorted(marks.values(), key=lambda m: m.at)[-self.keep :]
        payload = json.dumps({"marks": [m.to_dict() for m in newest]}, indent=1).encode()
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._marks = {m.sha256: m for m in newest}
        self._read_key = stat_key(self.path)
