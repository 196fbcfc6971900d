"""What a registry knows about the sources it watches: the decision state of each source, and when a
directory with nothing published in it is looked into again."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path

from .sources import Source, latest_in_directory

__all__ = ["UNSEEN", "DirectoryWatch", "SourceState"]

UNSEEN = object()


@dataclass(slots=True, eq=False)
class SourceState:
    """One source and what was decided about it: a pin has its own, so loading it leaves the
    watched source's state as it was. The registry's lock guards writes; its hot path reads
    `token`, `seen` and `recheck_at` without the lock."""

    source: Source
    token: Callable[[], Hashable | None] = field(init=False, repr=False)
    seen: Hashable | object = UNSEEN  # token of the last content decided on
    recheck_at: float = 0.0  # monotonic time when an unchanged token must be looked at again
    failed_sha: str | None = None  # the bytes that failed last: not loaded again unchanged
    missing: bool = False

    def __post_init__(self) -> None:
        self.token = self.source.token  # bound once: the hot path's one call

    def mark_missing(self) -> None:
        """Nothing to load until the token comes back (the hot path compares None with None)."""
        self.missing, self.seen, self.recheck_at = True, None, math.inf


#: The longest a directory whose entries look unchanged goes without being listed again: a
#: directory's timestamps may be coarse, and a dangling `*_latest.*` link may gain its target.
RESCAN_EVERY = 0.5
#: A directory changed this recently may change again within the same timestamp tick (and one
#: dated in the future, by another machine's clock, is listed on every call as before).
_SETTLED_NS = 1_000_000_000
_MUST_LIST = object()


class DirectoryWatch:
    """Finds the checkpoint to follow in a directory that had none, listing the directory only
    when its stat key changed (an entry was added, removed or renamed) or every `RESCAN_EVERY`
    seconds: a call without a live model looks at it, and the server makes one per request.

    Args:
        directory: the directory given to the registry.
        name: the `{name}` of `{name}_latest.*` looked for first.
        signed_only: follow manifests only (a plain checkpoint carries no signature).
    """

    def __init__(self, directory: Path, name: str, *, signed_only: bool) -> None:
        self.directory = directory
        self._name = name
        self._signed_only = signed_only
        self._listed: object = _MUST_LIST  # the directory's stat key when it was last listed
        self._list_by = 0.0  # monotonic deadline for listing it again whatever its key

    def find(self, now: float, following: Path) -> Path | None:
        """The path to follow instead of `following`, if the directory now has one to offer."""
        key = _stat_key(self.directory)  # read before listing: a change meanwhile is seen next
        if key == self._listed and now < self._list_by:
            return None
        settled = key is None or time.time_ns() - key[0] > _SETTLED_NS
        self._listed = key if settled else _MUST_LIST
        self._list_by = now + RESCAN_EVERY
        found = latest_in_directory(self.directory, self._name)
        if found == following or (self._signed_only and found.suffix != ".json"):
            return None
        return found


def _stat_key(directory: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(directory)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)
