"""Canary: a new version first answers a fraction of requests, and is promoted or rolled back on
what it does with them.

    --canary-fraction 0.1    the share of requests the canary answers (0: no canary)
    --canary-seconds 60      how long it answers them before it is judged
    --canary-metric reward   also require its rewards to be no worse than the incumbent's

Routing (`route`, on the request path): a request with an `X-Session-Id` goes to the canary when
a keyed hash of the session id (keyed by the canary's sha256, so every worker and replica agrees)
falls below the fraction, so an episode stays on one side for the whole window. A request
without one takes the next value of a golden-ratio sequence: deterministic, and the share it
sends is within a few requests of the fraction over any stretch of requests.

Judging: an exception or a non-finite action from the canary on live traffic (`failed`) rolls it
back at once. When the window ends cleanly (`poll`), the canary is promoted; with the reward
metric, only once both sides have at least `min_rewards` rewards for requests answered within
the window, and only when a one-sided Mann-Whitney U test (ranktest.py) does not find the
canary's rewards lower than the incumbent's at `level` (default 0.05): p < level rolls it back,
with the test's figures. Without enough rewards after `patience` windows it is rolled back (the
metric was asked for and could not be judged). A rolled-back version should be marked bad by
the host (marks.py), so it is not tried again. A newer candidate that arrives during a window
replaces the canary.

The host applies each `CanaryDecision`: promote = make the canary the live version; roll back =
keep the incumbent. Neither touches the model here.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar

from ..versions import ModelVersion
from .ranktest import UTest, mann_whitney_less

__all__ = ["Canary", "CanaryConfig", "CanaryDecision", "RewardSource"]

Metric = Literal["none", "reward"]
#: The golden ratio's fractional part: n * PHI mod 1 spreads requests evenly over [0, 1).
_PHI = (math.sqrt(5) - 1) / 2
_SPAN = float(1 << 64)
#: Sessions whose side is remembered (a cache: the keyed hash gives the same side again).
_SESSIONS = 65_536


class _Versioned(Protocol):
    @property
    def version(self) -> ModelVersion: ...


V = TypeVar("V", bound=_Versioned)


class RewardSource(Protocol):
    """Where the canary reads rewards from (a FeedbackStore)."""

    def rewards(self, version: str, *, since: float, until: float | None = None) -> list[float]:
        """The rewards of requests `version` answered within [since, until]."""
        ...


@dataclass(frozen=True, slots=True)
class CanaryConfig:
    """How a canary runs. `fraction=0` turns canaries off.

    fraction: the share of requests the canary answers (0-1).
    seconds: the window it answers them for before it is judged.
    metric: "none" (promoted when clean) or "reward" (also: rewards no worse).
    min_rewards: rewards needed on each side before the test is run.
    level: the test's significance level (one-sided).
    patience: windows waited for `min_rewards` before rolling back.
    """

    fraction: float = 0.0
    seconds: float = 60.0
    metric: Metric = "none"
    min_rewards: int = 20
    level: float = 0.05
    patience: float = 10.0

    def __post_init__(self) -> None:
        if not 0 <= self.fraction <= 1:
            raise ValueError(f"--canary-fraction is a share between 0 and 1, not {self.fraction}")
        if not self.seconds > 0:
            raise ValueError(f"--canary-seconds must be > 0, not {self.seconds}")
        if self.metric not in ("none", "reward"):
            raise ValueError(f"--canary-metric must be 'none' or 'reward', not {self.metric!r}")
        if self.min_rewards < 1 or not 0 < self.level < 1 or self.patience < 1:
            raise ValueError("min_rewards >= 1, 0 < level < 1 and patience >= 1 are required")

    @property
    def enabled(self) -> bool:
        return self.fraction > 0


@dataclass(frozen=True, slots=True)
class CanaryDecision:
    """What became of one canary: promoted or rolled back, why, and the figures it rests on."""

    action: Literal["promote", "roll_back"]
    canary: str  # tags, <checkpoint>@<sha256[:12]>
    incumbent: str
    reason: str
    at: float
    rewards: dict[str, dict[str, float | None]] | None = None  # side -> {"count", "mean"}
    test: UTest | None = None
    #: The canary's handle (what the host makes live on "promote"); not shown in status.
    subject: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action, "canary": self.canary, "incumbent": self.incumbent,
            "reason": self.reason, "at": self.at, "rewards": self.rewards,
            "test": self.test.to_dict() if self.test is not None else None,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Run(Generic[V]):
    canary: V
    incumbent: V
    fraction: float
    started: float
    deadline: float
    hashing: Any = field(repr=False)  # blake2b keyed by the canary's sha256, copied per session
    sides: dict[str, bool] = field(default_factory=dict, repr=False)  # session -> on the canary


def _stats(values: list[float]) -> dict[str, float | None]:
    return {"count": len(values), "mean": sum(values) / len(values) if values else None}


class Canary(Generic[V]):
    """One model's canary: which version answers a request, and when the canary is judged.

    Args:
        config: fraction, window and metric.
        clock: wall-clock seconds (rewards are attributed by the wall time their request was
            answered; tests pass a fake clock).

    Example:
        canary = Canary(CanaryConfig(fraction=0.1, seconds=60))
        canary.start(candidate, registry.current)     # instead of swapping it in
        live = canary.route(session) or registry.current  # per request
        decision = canary.poll(feedback)              # now and then: promote or roll back
    """

    def __init__(self, config: CanaryConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        self._run: _Run[V] | None = None
        self._next = itertools.count().__next__
        self._lock = threading.Lock()  # guards starting and ending a run; route() reads _run once
        self.history: deque[CanaryDecision] = deque(maxlen=20)

    # ---- the request path -------------------------------------------------------------------

    def route(self, session: str | None = None) -> V | None:
        """The version that answers this request: the canary or the incumbent while a canary
        runs, None when none does (the host's live version answers)."""
        run = self._run
        if run is None:
            return None
        return run.canary if self._side(run, session) else run.incumbent

    def pick(self, session: str | None = None) -> V | None:
        """The canary when this request goes to it; None when it does not, or no canary runs
        (the host's live version answers: the incumbent, unless it was rolled back meanwhile)."""
        run = self._run
        if run is None:
            return None
        return run.canary if self._side(run, session) else None

    def _side(self, run: _Run[V], session: str | None) -> bool:
        if session is None:
            return (self._next() * _PHI) % 1.0 < run.fraction
        side = run.sides.get(session)
        if side is None:
            h = run.hashing.copy()
            h.update(session.encode("utf-8", "surrogateescape"))
            side = int.from_bytes(h.digest(), "big") / _SPAN < run.fraction
            if len(run.sides) >= _SESSIONS:
                run.sides.clear()  # the hash decides again, the same way
            run.sides[session] = side
        return side

    @property
    def canary(self) -> V | None:
        run = self._run
        return run.canary if run is not None else None

    @property
    def incumbent(self) -> V | None:
        run = self._run
        return run.incumbent if run is not None else None

    # ---- starting and judging ---------------------------------------------------------------

    def start(self, canary: V, incumbent: V) -> CanaryDecision | None:
        """Let `canary` answer the configured fraction beside `incumbent`, from now. Returns the
        decision on the canary it replaces, if one was running."""
        if not self.config.enabled:
            raise ValueError("canaries are off (--canary-fraction 0)")
        now = self._clock()
        key = bytes.fromhex(canary.version.sha256)[:16]
        hashing = hashlib.blake2b(key=key, digest_size=8)
        with self._lock:
            replaced = self._end(
                "roll_back", f"replaced by {canary.version.tag} before its window ended", now
            )
            self._run = _Run(canary, incumbent, self.config.fraction, now,
                             now + self.config.seconds, hashing)  # fmt: skip
        return replaced

    def failed(self, sha256: str, reason: str) -> CanaryDecision | None:
        """The version `sha256` raised or gave a non-finite action on live traffic: if it is the
        canary, roll it back at once."""
        with self._lock:
            run = self._run
            if run is None or run.canary.version.sha256 != sha256:
                return None
            return self._end("roll_back", f"on live traffic: {reason}", self._clock())

    def stop(self, reason: str) -> CanaryDecision | None:
        """End the running canary without judging it (e.g. an admin's forced reload went live):
        a roll-back decision that says nothing against the version."""
        with self._lock:
            return self._end("roll_back", reason, self._clock())

    def poll(self, rewards: RewardSource | None = None) -> CanaryDecision | None:
        """Judge the canary if its window is over; None while it runs (or waits for rewards)."""
        now = self._clock()
        run = self._run
        if run is None or now < run.deadline:
            return None
        with self._lock:
            if self._run is not run:
                return None
            config = self.config
            clean = f"clean for its {config.seconds:g} s window at {run.fraction:.0%}"
            if config.metric == "none":
                return self._end("promote", clean, now)
            if rewards is None:
                raise ValueError("--canary-metric reward needs the feedback store")
            since = run.started - 0.001  # an id's issue time is in whole milliseconds
            mine = rewards.rewards(run.canary.version.sha256, since=since, until=now)
            theirs = rewards.rewards(run.incumbent.version.sha256, since=since, until=now)
            figures = {"canary": _stats(mine), "incumbent": _stats(theirs)}
            need = config.min_rewards
            if len(mine) < need or len(theirs) < need:
                if now < run.started + config.patience * config.seconds:
                    return None
                return self._end(
                    "roll_back",
                    f"not enough rewards to judge after {now - run.started:.0f} s: canary "
                    f"{len(mine)}, incumbent {len(theirs)}, {need} needed on each side",
                    now, figures,
                )  # fmt: skip
            test = mann_whitney_less(mine, theirs)
            means = f"mean {sum(mine) / len(mine):.4g} vs {sum(theirs) / len(theirs):.4g}"
            if test.p < config.level:
                reason = (
                    f"rewards worse than the incumbent's ({means}; one-sided Mann-Whitney "
                    f"U={test.u:g}, z={test.z:.2f}, p={test.p:.3g} < {config.level:g})"
                )
                return self._end("roll_back", reason, now, figures, test)
            reason = (
                f"{clean}, rewards not worse than the incumbent's ({means}; U={test.u:g}, "
                f"z={test.z:.2f}, p={test.p:.3g} >= {config.level:g})"
            )
            return self._end("promote", reason, now, figures, test)

    def _end(
        self,
        action: Literal["promote", "roll_back"],
        reason: str,
        now: float,
        rewards: dict[str, dict[str, float | None]] | None = None,
        test: UTest | None = None,
    ) -> CanaryDecision | None:
        run = self._run  # the caller holds the lock
        if run is None:
            return None
        self._run = None
        decision = CanaryDecision(action, run.canary.version.tag, run.incumbent.version.tag,
                                  reason, now, rewards, test, run.canary)  # fmt: skip
        self.history.append(decision)
        return decision

    def to_dict(self) -> dict[str, Any]:
        """Status: the running canary (if any) and the last decisions, newest last."""
        run = self._run
        running = None
        if run is not None:
            running = {
                "canary": run.canary.version.tag, "incumbent": run.incumbent.version.tag,
                "fraction": run.fraction, "started": run.started,
                "ends": run.deadline, "metric": self.config.metric,
            }  # fmt: skip
        return {"running": running, "decisions": [d.to_dict() for d in self.history]}
