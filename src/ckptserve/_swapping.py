"""The registry's write side (TF Serving's BasicManager to the registry's AspiredVersionsManager):
which watch is served, the live model, and the one locked step that looks at a source, loads,
and swaps in or keeps. Every method runs with the registry's lock held; the registry's hot path
reads `live` and `serving` without it (each is replaced whole, never changed in place)."""

from __future__ import annotations

import logging
import threading
import time
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
from .rollout.follow import FollowRule, published
from .rollout.judging import Judge
from .rollout.resident import ResidentVersions
from .sources import Source
from .versions import LoadAttempt

__all__ = ["Swapper"]

log = logging.getLogger("ckptserve.registry")

#: Loads in one step after the first was superseded (a writer that never stops gets no more).
_SUPERSEDED_TRIES = 2
#: --follow max:/min: the best checkpoints tried in one step when the best fails to load.
_BEST_TRIES = 3


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
        self.rule = FollowRule.parse(options.follow)
        self._passed_over: set[str] = set()  # --follow max/min: best ones that failed to load
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
            "follow": str(self.rule), "history": [a.to_dict() for a in history],
        }  # fmt: skip

    def step(self, *, reload: bool, force: bool) -> LoadAttempt | None:
        """Look at the served source and do what `next_action` says; the attempt made, if any."""
        if force:
            log.warning("forced reload", extra={"model": self._attempts.model, "audit": "force"})
        now = time.monotonic()
        watch = self.serving
        token = watch.token()
        if token is None and watch is self._follow.watched and not self.closed:
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
        if self.rule.key is not None and watch is self._follow.watched:
            attempt = self._follow_best(watch, token, now, reload=reload, force=force)
        else:
            attempt = self.load(watch, token, reload=reload, force=force)
        for _ in range(_SUPERSEDED_TRIES):  # a newer write replaced what was read: take it now
            if attempt is None or attempt.result != "superseded":
                break
            attempt = self.load(watch, watch.token(), reload=reload, force=force)
        self._fall_back_if_nothing_live()
        return attempt

    def _follow_best(
        self, watch: Watch, token: Any, now: float, *, reload: bool, force: bool
    ) -> LoadAttempt | None:
        """--follow max:/min:<key>: the watched path changed (a publish), so look at every
        published checkpoint's record and serve the best one, unless it is served already.
        While none has a number under the key, the watched (newest) one is served."""
        directory, prefix = self._follow.earlier()
        digest = watch.source.digest()
        attempt = None
        for _ in range(_BEST_TRIES):
            try:
                found = [p for p in published(directory, prefix)
                         if p.checkpoint not in self._passed_over]  # fmt: skip
            except OSError:
                found = []
            best = self.rule.best(found)
            if best is None:
                if attempt is not None:  # every candidate failed: keep what is served
                    break
                return self.load(watch, token, reload=reload, force=force)
            live = self.live
            if not reload and live is not None and best.sha256 == live.version.sha256:
                move(watch, Outcome.LOADED, token, digest, now)
                return None
            chosen = self._follow.watch(self._follow.checkpoint_source(directory / best.checkpoint))
            attempt = self.load(chosen, chosen.token(), reload=reload, force=force)
            if attempt is not None and attempt.result in ("ok", "unchanged"):
                self.fallback = None
                move(watch, Outcome.LOADED, token, digest, now)
                return attempt
            if len(self._passed_over) >= 1000:
                self._passed_over.clear()
            self._passed_over.add(best.checkpoint)
        move(watch, Outcome.FAILED, token, digest, now)
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

    def close_sources(self) -> None:
        """Stop the watched source's poll thread, if it has one (object storage, NFS)."""
        self._follow.close()

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
            force=force, closed=lambda: self.closed, judge=self.judge, chosen=chosen,
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
                                        forced=reload, unchanged=False, shadow=result.shadow)  # fmt: skip
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
