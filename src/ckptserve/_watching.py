"""What a registry knows about each source it watches: one state (a phase and the data that goes
with it), moved only by `advance`, and `next_action`, which says what a look at the source must do.

    NEW ──load──> LIVE ──verify──> LIVE          the token's content is served (or is the same
     │  │           │                            bytes as what is served)
     │  └─fail──> FAILED ──retry_after──> load   the token's content failed or was refused
     │                                           (not loaded again until it changes or is due)
     └──gone──> MISSING ──token back──> load     nothing at the path (a directory: listed again)

Like TF Serving's `AspiredVersionPolicy::GetNextAction`, `next_action` is stateless and
idempotent: the same state, token and time always give the same action. The registry's lock
guards the write of a new state; the hot path reads `Watch.state` once, without the lock (it is
immutable, so a reader sees a whole old one or a whole new one).
"""

from __future__ import annotations

import enum
import math
import os
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from pathlib import Path

from .naming import latest_in_directory, latest_name
from .sources import Source
from .versions import stat_key

__all__ = [
    "RESCAN_EVERY",
    "UNSEEN",
    "Action",
    "DirectoryWatch",
    "Outcome",
    "Phase",
    "SourceState",
    "Timing",
    "Watch",
    "advance",
    "next_action",
]

#: The token of a source nothing was decided about: equal to no real token.
UNSEEN: Hashable = object()


class Phase(enum.Enum):
    """Where a source stands."""

    NEW = "new"  # nothing decided yet, or its last load was superseded by a newer write
    LIVE = "live"  # what the token names is served (or the same bytes are)
    FAILED = "failed"  # what the token names failed to load or was refused
    MISSING = "missing"  # nothing at the path


class Action(enum.Enum):
    """What a look at a source must do."""

    NONE = "none"
    LOAD = "load"  # fetch, load, validate, swap or keep
    VERIFY = "verify"  # same token: re-read the cheap digest (a manifest) to catch what it hides
    MISSING = "missing"  # the path is gone: record it (once)


class Outcome(enum.Enum):
    """What became of a look at a source: the event that moves its state."""

    LOADED = "loaded"  # swapped in, or the same bytes as the live model
    FAILED = "failed"
    SUPERSEDED = "superseded"  # the source changed while it was read: look again at once
    VERIFIED = "verified"  # the digest still names what was decided on
    MISSING = "missing"


@dataclass(frozen=True, slots=True)
class Timing:
    """When an unchanged token is looked at again.

    retry_after: seconds before content that failed is tried again.
    verify_every: seconds between re-reads of a live source's digest (0: never).
    rescan_every: seconds between looks for a new path while the path is missing (inf: never).
    """

    retry_after: float
    verify_every: float
    rescan_every: float = math.inf


@dataclass(frozen=True, slots=True)
class SourceState:
    """One source's phase, the token it was decided on, when to look again though that token is
    unchanged (`due`, monotonic seconds), and the sha256 of the content decided on."""

    phase: Phase = Phase.NEW
    token: Hashable | None = UNSEEN
    due: float = 0.0
    sha256: str | None = None


def next_action(state: SourceState, token: Hashable | None, now: float) -> Action:
    """What a look at a source whose token is now `token` must do."""
    if token is None:
        return Action.NONE if state.phase is Phase.MISSING and now < state.due else Action.MISSING
    if token != state.token:
        return Action.LOAD
    if now < state.due:
        return Action.NONE
    return Action.VERIFY if state.phase is Phase.LIVE else Action.LOAD


def advance(
    state: SourceState,
    outcome: Outcome,
    *,
    token: Hashable | None,
    sha256: str | None,
    now: float,
    timing: Timing,
) -> SourceState:
    """The state after `outcome`, for content read under `token` with `sha256` (if it got that far)."""
    if outcome is Outcome.LOADED:
        return SourceState(Phase.LIVE, token, now + (timing.verify_every or math.inf), sha256)
    if outcome is Outcome.FAILED:
        return SourceState(Phase.FAILED, token, now + timing.retry_after, sha256)
    if outcome is Outcome.SUPERSEDED:
        return SourceState(Phase.NEW, token, now, None)
    if outcome is Outcome.VERIFIED:
        return replace(state, due=now + (timing.verify_every or math.inf))
    return SourceState(Phase.MISSING, None, now + timing.rescan_every, None)


class Watch:
    """A source and its state: the watched path has one, a pin has its own, so loading a pin
    leaves what is known about the watched path as it was."""

    __slots__ = ("source", "state", "timing", "token")

    def __init__(self, source: Source, timing: Timing) -> None:
        self.source = source
        self.token: Callable[[], Hashable | None] = source.token  # bound once: the hot path's call
        self.timing = timing
        self.state = SourceState()

    @property
    def missing(self) -> bool:
        return self.state.phase is Phase.MISSING

    def __repr__(self) -> str:
        return f"Watch({self.source!r}, {self.state.phase.value})"


#: The longest a directory whose entries look unchanged goes without being listed again: a
#: directory's timestamps may be coarse, and a dangling `*_latest.*` link may gain its target.
RESCAN_EVERY = 0.5
#: A directory changed this recently may change again within the same timestamp tick (and one
#: dated in the future, by another machine's clock, is listed on every look as before).
_SETTLED_NS = 1_000_000_000
_MUST_LIST = object()


class DirectoryWatch:
    """Finds the checkpoint to follow in a directory whose followed path is missing, listing the
    directory only when its stat key changed (an entry was added, removed or renamed) or every
    `RESCAN_EVERY` seconds.

    Args:
        directory: the directory given to the registry, or the one holding the
            `{name}_latest.*` file given to it.
        name: the `{name}` of `{name}_latest.*` looked for first.
        signed_only: follow manifests only (a plain checkpoint carries no signature).
        same_name: offer only an existing `{name}_latest.*` (the registry was given one such
            file: another of its kinds is the same model, another model's is not).
    """

    def __init__(self, directory: Path, name: str, *, signed_only: bool,
                 same_name: bool = False) -> None:  # fmt: skip
        self.directory = directory
        self._name = name
        self._signed_only = signed_only
        self._same_name = same_name
        self._listed: object = _MUST_LIST  # the directory's stat key when it was last listed
        self._list_by = 0.0  # monotonic deadline for listing it again whatever its key

    def find(self, now: float, following: Path) -> Path | None:
        """The path to follow instead of `following`, if the directory now has one to offer."""
        key = stat_key(self.directory)  # read before listing: a change meanwhile is seen next
        if key == self._listed and now < self._list_by:
            return None
        settled = key is None or time.time_ns() - key[0] > _SETTLED_NS
        self._listed = key if settled else _MUST_LIST
        self._list_by = now + RESCAN_EVERY
        found = latest_in_directory(self.directory, self._name, signed_only=self._signed_only)
        if found == following:
            return None
        if self._same_name and (latest_name(found) != self._name or not os.path.lexists(found)):
            return None
        return found
