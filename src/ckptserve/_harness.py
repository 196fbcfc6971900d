"""One load attempt on one watch (TF Serving's LoaderHarness): fetch the source's content, load
and validate it, and say what became of it, moving the watch's state. It decides nothing about
swapping: a candidate that passed is handed back for the registry to swap in."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from ._attempts import AttemptLog, as_checkpoint_error
from ._copies import PrivateCopies
from ._watching import Outcome, Watch, advance
from .errors import CheckpointError
from .loading import LiveModel, load_candidate
from .options import RegistryOptions
from .rollout.judging import Judge
from .rollout.shadow import Divergence
from .sources import Snapshot
from .versions import LoadAttempt

__all__ = ["Passed", "move", "try_load"]


@dataclass(frozen=True, slots=True)
class Passed:
    """A candidate that passed every check: the registry swaps it in, then records `loaded`."""

    candidate: LiveModel
    snapshot: Snapshot
    started: float
    now: float
    shadow: Divergence | None = None  # the judge's comparison with the live model


def move(watch: Watch, outcome: Outcome, token: Hashable | None, sha256: str | None,
         now: float) -> None:  # fmt: skip
    """Move `watch` to the state after `outcome` (the one place a watch's state is written)."""
    watch.state = advance(watch.state, outcome, token=token, sha256=sha256, now=now,
                          timing=watch.timing)  # fmt: skip


def try_load(
    watch: Watch,
    token: Hashable | None,
    *,
    live: LiveModel | None,
    copies: PrivateCopies,
    options: RegistryOptions,
    device: str,
    attempts: AttemptLog[Any],
    owner: object,
    reload: bool,
    force: bool,
    closed: Callable[[], bool],
    judge: Judge | None = None,
    chosen: bool = False,
) -> Passed | LoadAttempt | None:
    """Fetch, load and validate what `watch` names now (read under `token`).

    `judge.judge(candidate, live, force=...)` (rollout.Judge) then decides whether the candidate
    may replace the live model: it raises ValidationError to refuse it (recorded as rejected).
    `chosen` (a forced reload or a pin: an admin picked this version) takes it past the judge's
    marks, order and guard; `force` alone also unlocks the live model's sizes.

    Returns the candidate that passed, the recorded attempt that ended otherwise (unchanged,
    failed, rejected, superseded), or None (the path is missing, or the registry closed).
    """
    source = watch.source
    started = time.perf_counter()
    now = time.monotonic()
    snapshot: Snapshot | None = None
    before = judge.last if judge is not None else None
    try:
        if token is None:
            raise FileNotFoundError(str(source.path))
        snapshot = source.fetch(copies, limit=options.max_checkpoint_bytes)
        if not reload and live is not None and snapshot.sha256 == live.version.sha256:
            # A touch or a copy of the same bytes: adopt the new key, keep the model.
            move(watch, Outcome.LOADED, snapshot.token, snapshot.sha256, now)
            return attempts.loaded(owner, snapshot, started=started, forced=reload, unchanged=True)
        candidate = load_candidate(
            snapshot, device=device, options=options, path=source.path, started=started,
            served=None if force or live is None else live.expect,
        )  # fmt: skip
        if judge is not None:
            judge.judge(candidate, live, force=force or chosen)
    except Exception as exc:
        if isinstance(exc, FileNotFoundError) and source.token() is None:
            move(watch, Outcome.MISSING, None, None, now)
            return None
        # Whatever went wrong (bad bytes, odd metadata, a loader bug), the request that
        # triggered the load must still get the live model: record it as a failed load.
        error = exc if isinstance(exc, CheckpointError) else as_checkpoint_error(exc)
        if snapshot is not None and (live is None or snapshot.sha256 != live.version.sha256):
            copies.discard(snapshot.sha256)  # no disk held by rejected bytes
        # The token read before the attempt: if the source moved since, the next look sees a
        # new token and tries again at once instead of waiting out retry_after.
        move(watch, Outcome.FAILED, token, snapshot.sha256 if snapshot else None, now)
        return attempts.failed(owner, error, snapshot, source.path, started=started,
                               forced=reload, shadow=_shadow(judge, before))  # fmt: skip
    # The stat key read again after the load: if the file moved while we read it (a newer
    # publish, a slow writer or a replace racing us), what we loaded may be a mix; discard it
    # and look at the newer one next.
    if source.token() != snapshot.token or closed():
        copies.discard(candidate.version.sha256)
        if closed():  # close() gave up waiting for this load: keep nothing
            return None
        move(watch, Outcome.SUPERSEDED, snapshot.token, None, now)
        return attempts.superseded(owner, snapshot, started=started, forced=reload)
    return Passed(candidate, snapshot, started, now, _shadow(judge, before))


def _shadow(judge: Judge | None, before: object) -> Divergence | None:
    """The figures of the verdict this attempt got (None: it did not reach the judge)."""
    verdict = judge.last if judge is not None else None
    return verdict.divergence if verdict is not None and verdict is not before else None
