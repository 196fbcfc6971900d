"""SWAP, on live traffic: what the server reaches of a registry's rollout (docs/rollout.md), on top
of the swapper: the shadow buffer requests record into, the canary that answers a share of them,
the versions a request may name, and what becomes of a version that misbehaves on live traffic.

It asks the swapper for what `Swap` declares (the registry passes its `_swapping.Swapper`), so the
two sit side by side in the import contract."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from .loading import LiveModel
from .rollout.canary import Canary, CanaryDecision
from .rollout.feedback import FeedbackStore
from .rollout.judging import Judge
from .rollout.resident import ResidentVersions, matching

__all__ = ["Rollout", "Swap"]

log = logging.getLogger("ckptserve.registry")


class Swap(Protocol):
    """What the rollout host may ask of the swapper (`_swapping.Swapper`)."""

    live: LiveModel | None
    resident: ResidentVersions[LiveModel]
    judge: Judge
    canary: Canary[LiveModel] | None

    def roll_back(self, sha256: str, reason: str) -> LiveModel | None:
        """Serve the previous resident version instead of `sha256`, marked bad; the one now live."""

    def promote(self, canary: LiveModel) -> None:
        """`canary` (its window ended cleanly) goes live, the newest resident version."""

    def mark_bad(self, bad: LiveModel, reason: str) -> None:
        """Remember in the judge's marks (if kept) that `bad` misbehaved: it is not loaded again."""

    def ended(self, decision: CanaryDecision | None) -> None:
        """Log what became of a canary."""


class Rollout:
    """What the server reaches of a registry's rollout (docs/rollout.md): the buffer requests
    record their states into, the canary that answers a share of them, the resident versions a
    request may name, and what becomes of a version that misbehaves on live traffic.

    `listeners` are called as `listener(event, tag)` for "rolled_back" (the live version, by a
    rollback), "promote" and "roll_back" (a canary's end, judged)."""

    def __init__(self, swap: Swap) -> None:
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
