"""The registry's write side (TF Serving's BasicManager to the registry's AspiredVersionsManager):
which watch is served, the live model, and the one locked step that looks at a source, loads,
and swaps in or keeps. Every method runs with the registry's lock held; the registry's hot path
reads `live` and `serving` without it (each is replaced whole, never changed in place)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ._attempts import AttemptLog
from ._coordination import LoadSlots
from ._copies import PrivateCopies
from ._following import Following
from ._harness import Passed, move, try_load
from ._watching import Action, Outcome, SourceState, Watch, next_action
from .errors import CheckpointError
from .fallback import Fallback, FallbackSearch
from .loading import LiveModel
from .options import RegistryOptions
from .rollout.canary import Canary, CanaryConfig, CanaryDecision
from .rollout.feedback import FeedbackStore
from .rollout.judging import Judge
from .rollout.resident import ResidentVersions, matching
from .sources import Source
from .versions import LoadAttempt

__all__ = ["Rollout", "Swapper"]

log = logging.getLogger("ckptserve.registry")

#: Loads in one step after the first was superseded (a writer that never stops gets no more).
_SUPERSEDED_TRIES = 2


class Swapper:
    """Loads what a watch names and swaps it in; remembers what is served and why."""

    def __init__(
        self,
        owner: object,
        follow: Following,
        options: RegistryOptions,
        device: str,
        attempts: AttemptLog[Any],
        copies: PrivateCopies,
        judge: Judge | None = None,
    ) -> None:
        self._owner = owner  # passed to attempt listeners
        if judge is None:  # marks, order, shadow and guard as the options say
            model_dir = follow.earlier()[0]
            judge = Judge.from_options(options, name=attempts.model, model_dir=model_dir,
                                       device=device)  # fmt: skip
        self.judge = judge  # rollout: judged before a swap
        # rollout: the last good versions, kept loaded
        self.resident: ResidentVersions[LiveModel] = ResidentVersions(options.keep_versions)
        self._follow = follow
        self._options = options
        self._device = device
        self._attempts = attempts
        self._copies = copies
        limit = options.max_concurrent_loads
        self._slots = None if limit is None else LoadSlots(
            str(follow.watched.source.path.resolve()), limit, directory=options.lock_dir
        )  # fmt: skip
        self._fallbacks = FallbackSearch(attempts.model, follow.checkpoint_source, self._try)
        self.live: LiveModel | None = None
        self.serving = follow.watched  # the watched path's watch, or a pin's
        self.pinned: Path | None = None
        self.fallback: Fallback | None = None  # what is served while the newest cannot be
        self.load_count = 0
        self.closed = False
        self._rolling_back = threading.Lock()  # serialises roll_back and promote (see there)
        self.canary: Canary[LiveModel] | None = None  # --canary-fraction > 0
        if options.canary_fraction > 0:
            self.canary = Canary(CanaryConfig(options.canary_fraction, options.canary_seconds,
                                              options.canary_metric))  # fmt: skip

    def status(self, model_path: str) -> dict[str, Any]:
        """What is served and why, for `registry.status()` (`model_path`: as it was given)."""
        live, serving = self.live, self.serving
        version = live.version if live is not None else None
        history = list(self._attempts.history)  # one C-level copy: a load may append meanwhile
        health = getattr(serving.source, "health", None)  # a polled source (s3://, --nfs)
        return {
            "loaded": version is not None,
            "model_path": getattr(serving.source, "url", model_path),
            "load_count": self.load_count, "last_mtime": version.mtime if version else 0.0,
            "version": version.to_dict() if version else None,
            "last_error": self._attempts.last_error, "file_missing": serving.missing,
            "pinned": str(self.pinned) if self.pinned is not None else None,
            "fallback": self.fallback.to_dict() if self.fallback is not None else None,
            "source": serving.source.kind, "phase": serving.state.phase.value,
            "source_health": health() if health is not None else None,
            "history": [a.to_dict() for a in history],
        }  # fmt: skip

    def step(self, *, reload: bool, force: bool) -> LoadAttempt | None:
        """Look at the served source and do what `next_action` says; the attempt made, if any."""
        if force:
            log.warning("forced reload", extra={"model": self._attempts.model, "audit": "force"})
        now = time.monotonic()
        watch = self.serving
        token = watch.token()
        if token is None and watch is self._follow.watched:
            found = self._follow.refind(now)
            if found is not None:  # e.g. a checkpoint copied in by hand (no manifest)
                watch = self.serving = found
                token = watch.token()
        action = next_action(watch.state, token, now)
        if reload and action is not Action.MISSING:
            action = Action.LOAD
        if action is Action.NONE:
            return None
        if action is Action.MISSING:
            self._missing(watch, now)
            return None
        if action is Action.VERIFY:
            # Same token: only the periodic re-read of the manifest is due.
            digest = watch.source.digest()
            if digest is None or digest == watch.state.sha256:
                move(watch, Outcome.VERIFIED, token, watch.state.sha256, now)
                return None
        attempt = self.load(watch, token, reload=reload, force=force)
        for _ in range(_SUPERSEDED_TRIES):  # a newer write replaced what was read: take it now
            if attempt is None or attempt.result != "superseded":
                break
            attempt = self.load(watch, watch.token(), reload=reload, force=force)
        self._fall_back_if_nothing_live()
        return attempt

    def load(
        self, watch: Watch, token: Any, *, reload: bool, force: bool, chosen: bool = False
    ) -> LoadAttempt | None:
        """Read, verify, load, validate and swap in what `watch` names (read under `token`).
        `chosen`: an admin picked it (a pin), so the judge's order and guard do not apply."""
        if self.closed:
            return None
        with self._copies.loading():
            if self._slots is None:
                return self._load(watch, token, reload=reload, force=force, chosen=chosen)
            with self._slots.hold():
                return self._load(watch, token, reload=reload, force=force, chosen=chosen)

    def turn_taken(self) -> bool:
        """Other processes hold every load slot of this model right now."""
        return self._slots is not None and self._slots.busy()

    def pin(self, path: Path, *, force: bool) -> None:
        """Load `path` as the served checkpoint, checked as the watched source would be."""
        if self.closed:
            raise CheckpointError("the registry is closed")
        if force:
            log.warning("forced pin", extra={"model": self._attempts.model, "audit": "force",
                                             "checkpoint": path.name})  # fmt: skip
        watch = self._follow.watch(self._follow.checkpoint_source(path))
        attempt = self.load(watch, watch.token(), reload=True, force=force, chosen=True)
        if attempt is None:
            raise CheckpointError(f"{path} does not exist")
        if attempt.result not in ("ok", "unchanged"):
            raise self._attempts.last_exc or CheckpointError(attempt.reason or "not loaded")
        self.serving, self.pinned, self.fallback = watch, path, None

    def unpin(self) -> None:
        """Follow the watched path again, loading what it points at now."""
        self.serving, self.pinned = self._follow.watched, None
        # What was decided before the pin was about the model the pin replaced: look again.
        self.serving.state = SourceState()
        self.step(reload=False, force=False)

    def roll_back(self, sha256: str, reason: str) -> LiveModel | None:
        """Serve the previous resident version instead of `sha256`, which misbehaved on live
        traffic, and mark it bad; the version now live, or None (it is no longer live, or no
        other version is resident).

        The one method that runs without the registry's lock (under its own): a load may hold
        that lock for seconds, and a version giving NaN must stop answering at once. A load in
        flight meanwhile swaps its candidate in as it would have; nothing else is touched."""
        with self._rolling_back:
            live, resident = self.live, self.resident
            if live is None or live.version.sha256 != sha256:
                return None
            previous = resident.previous(sha256)
            if previous is None:
                return None
            self.live = previous
            resident.remove(sha256)
            resident.add(previous)
        log.warning(
            "rolled back %s to %s: %s", live.version.tag, previous.version.tag, reason,
            extra={"model": self._attempts.model, "checkpoint": live.version.checkpoint,
                   "sha256": sha256, "result": "rolled_back", "reason": reason},
        )  # fmt: skip
        self.mark_bad(live, reason)
        return previous

    def promote(self, canary: LiveModel) -> None:
        """Make `canary` (its window ended cleanly) the live version and the newest resident."""
        with self._rolling_back:
            self.live = canary
            self.resident.add(canary)

    def ended(self, decision: CanaryDecision | None) -> None:
        """Log what became of a canary (the host applies it: Rollout)."""
        if decision is not None:
            level = logging.INFO if decision.action == "promote" else logging.WARNING
            log.log(level, "canary %s: %s: %s", decision.canary, decision.action, decision.reason,
                    extra={"model": self._attempts.model, "result": f"canary_{decision.action}",
                           "reason": decision.reason})  # fmt: skip

    def mark_bad(self, bad: LiveModel, reason: str) -> None:
        """Remember in the judge's marks (if kept) that `bad` misbehaved: it is not loaded again."""
        marks = self.judge.marks
        if marks is not None:
            try:
                marks.mark(bad.version.sha256, checkpoint=bad.version.checkpoint, reason=reason)
            except OSError:
                log.exception("could not mark %s bad in %s", bad.version.tag, marks.directory)

    def look_again(self) -> None:
        """Make the next step look at the served source as if a retry or a verify were due."""
        self.serving.state = replace(self.serving.state, due=0.0)

    def _load(
        self, watch: Watch, token: Any, *, reload: bool, force: bool, chosen: bool
    ) -> LoadAttempt | None:
        result = try_load(
            watch, token, live=self.live, copies=self._copies, options=self._options,
            device=self._device, attempts=self._attempts, owner=self._owner, reload=reload,
            force=force, closed=lambda: self.closed, judge=self.judge.judge, chosen=chosen,
        )  # fmt: skip
        if not isinstance(result, Passed):
            return result
        candidate, snapshot = result.candidate, result.snapshot
        self._copies.keep_while(candidate.version.sha256, candidate.model)
        canary, live = self.canary, self.live
        if (
            canary is not None
            and live is not None
            and not (force or chosen)
            and (candidate.version.sha256 != live.version.sha256)
        ):
            self.ended(canary.start(candidate, live))  # instead of going live: a share first
            log.info(
                "canary %s answers %.0f%% of requests for %g s beside %s", candidate.version.tag,
                canary.config.fraction * 100, canary.config.seconds, live.version.tag,
                extra={"model": self._attempts.model, "checkpoint": candidate.version.checkpoint,
                       "sha256": candidate.version.sha256, "result": "canary"},
            )  # fmt: skip
        else:
            if canary is not None:
                self.ended(canary.stop(f"{candidate.version.tag} went live without a canary"))
            self.live = candidate
            self.resident.add(candidate)
        self.load_count += 1
        self._follow.vouch(watch.source, snapshot)
        if watch is self._follow.watched:
            self.fallback = None
        move(watch, Outcome.LOADED, snapshot.token, snapshot.sha256, result.now)
        attempt = self._attempts.loaded(self._owner, snapshot, started=result.started,
                                        forced=reload, unchanged=False)  # fmt: skip
        self._copies.prune(keep=candidate.version.sha256)
        return attempt

    def _missing(self, watch: Watch, now: float) -> None:
        was_missing = watch.missing
        move(watch, Outcome.MISSING, None, None, now)
        if self.live is None and self._follow.directory is not None:
            # Nothing to serve meanwhile: every look may list the directory (DirectoryWatch
            # lists it only when its entries changed, or every RESCAN_EVERY s).
            watch.state = replace(watch.state, due=now)
        if not was_missing:
            log.warning("checkpoint missing",
                        extra={"model": self._attempts.model, "path": str(watch.source.path)})  # fmt: skip
            self._fall_back_if_nothing_live()

    def _fall_back_if_nothing_live(self) -> None:
        if self.live is not None or self.serving is not self._follow.watched or self.closed:
            return
        error = self._attempts.last_error
        missing = f"{self._follow.watched.source.path.name} is missing"
        reason = f"{error['checkpoint']}: {error['reason']}" if error else missing
        self.fallback = self._fallbacks.find(*self._follow.earlier(), reason)

    def _try(self, source: Source) -> bool:
        """Load `source` as a fallback candidate (the search calls it within a step)."""
        watch = self._follow.watch(source)
        attempt = self.load(watch, watch.token(), reload=False, force=False)
        return attempt is not None and attempt.result == "ok"


class Rollout:
    """What the server reaches of a registry's rollout (docs/rollout.md): the buffer requests
    record their states into, the canary that answers a share of them, the resident versions a
    request may name, and what becomes of a version that misbehaves on live traffic.

    `listeners` are called as `listener(event, tag)` for "rolled_back" (the live version, by a
    rollback), "promote" and "roll_back" (a canary's end, judged)."""

    def __init__(self, swap: Swapper) -> None:
        self._swap = swap
        self.buffer = swap.judge.buffer  # None: --shadow-states 0
        self.canary = swap.canary  # None: --canary-fraction 0
        self.listeners: list[Callable[[str, str], None]] = []

    def find(self, ref: str) -> LiveModel | None:
        """The version `ref` names (a sha256, a 12+ hex prefix or a tag) among the resident ones
        and the running canary, or None.

        Raises:
            ValueError: `ref` is not a version reference (or its prefix names two versions).
        """
        found = self._swap.resident.find(ref)
        canary = self.canary.canary if self.canary is not None else None
        if found is None and canary is not None and matching(ref, [canary]):
            return canary
        return found

    def tags(self) -> list[str]:
        """The tags of the versions a request may name, newest first (a running canary first)."""
        canary = self.canary.canary if self.canary is not None else None
        return [*([canary.version.tag] if canary is not None else []), *self._swap.resident.tags()]

    def misbehaved(self, live: LiveModel, reason: str) -> LiveModel | None:
        """`live` misbehaved on real states (they passed every input check): a running canary
        is rolled back and marked bad; the live version (non-finite actions) is rolled back to
        the previous resident one and marked bad. Returns the version that answers now, or None
        when nothing changed."""
        swap, canary = self._swap, self.canary
        if canary is not None and canary.canary is live:
            decision = canary.failed(live.version.sha256, reason)
            if decision is not None:
                self._judged(decision)
                return swap.live
        if swap.live is live:
            return self.roll_back(live.version.sha256, reason)
        return None

    def roll_back(self, sha256: str, reason: str) -> LiveModel | None:
        """`ModelRegistry.roll_back`: serve the previous resident version at once (without
        waiting for a load in flight) instead of `sha256`, which misbehaves on live traffic, and
        mark it bad (in `state_dir`: not loaded again, also after a restart). The version now
        live, or None (`sha256` is not live, or no other version is resident)."""
        previous = self._swap.roll_back(sha256, reason)
        if previous is not None:
            self._tell("rolled_back", sha256)
        return previous

    def poll(self, rewards: FeedbackStore | None = None) -> CanaryDecision | None:
        """Judge the running canary if its window is over (the server's watch calls this about
        once a second): promoted, it goes live; rolled back, it is marked bad."""
        decision = self.canary.poll(rewards) if self.canary is not None else None
        if decision is not None:
            self._judged(decision)
        return decision

    def _judged(self, decision: CanaryDecision) -> None:
        swap, subject = self._swap, decision.subject
        if decision.action == "promote":
            swap.promote(subject)
        else:
            swap.mark_bad(subject, f"canary rolled back: {decision.reason}")
        swap.ended(decision)
        self._tell(decision.action, decision.canary)

    def _tell(self, event: str, what: str) -> None:
        for listener in self.listeners:
            try:
                listener(event, what)
            except Exception:
                log.exception("rollout listener failed")

    def status(self) -> dict[str, Any]:
        """The rollout's part of `registry.status()`: resident versions, the judge's last
        verdicts, the shadow buffer, the canary."""
        swap, buffer = self._swap, self.buffer
        live = swap.live
        return {
            "resident": swap.resident.to_dict(live.version.sha256 if live is not None else None),
            "judged": [v.to_dict() for v in list(swap.judge.history)],
            "shadow": {"size": buffer.size, "kept": len(buffer), "recorded": buffer.recorded}
            if buffer is not None else None,
            "canary": self.canary.to_dict() if self.canary is not None else None,
        }  # fmt: skip
