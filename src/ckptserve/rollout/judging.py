"""Judging a candidate before it is swapped in: the registry's one call into rollout.

`Judge.judge(candidate, live, force=...)` runs, in order:

1. the bad marks: a version marked bad (marks.py) is not loaded again;
2. the order of versions (ordering.py): a lower step of the live run is a regression;
3. the shadow comparison (shadow.py) on the buffered states, when something is live;
4. the guard (guard.py) on its figures.

It returns a `Verdict` (kept in `history`, shown in status) or raises ValidationError, which the
registry records as a rejected load. `force` (an admin's forced reload or pin) skips 1, 2 and 4
and says in the verdict and the log what it took the candidate past; the comparison still runs,
so its figures are recorded. The integrity checks come before the judge and are never skipped.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from ..errors import ValidationError
from ..options import RegistryOptions
from ..versions import ModelVersion
from .guard import Guard
from .marks import BadMarks
from .ordering import check_order
from .shadow import DEAD_BAND, Divergence, StateBuffer, compare

__all__ = ["Candidate", "Judge", "Verdict"]

log = logging.getLogger("ckptserve.rollout")


class _Sizes(Protocol):
    @property
    def obs_dim(self) -> int | None: ...

    @property
    def inputs(self) -> Any: ...


class Candidate(Protocol):
    """What is judged: a loaded model and its version (a LiveModel)."""

    @property
    def model(self) -> Any: ...

    @property
    def version(self) -> ModelVersion: ...

    @property
    def expect(self) -> _Sizes: ...


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the judge decided about one candidate.

    accepted: it may be swapped in (False: refused, `reason` says why).
    forced: a forced reload or pin took it past what `reason` names.
    note: what the log should say though it passed (a new run).
    divergence: the shadow figures (None: shadow off, nothing live, or not comparable).
    """

    checkpoint: str
    sha256: str
    accepted: bool
    forced: bool
    reason: str | None
    note: str | None
    divergence: Divergence | None
    at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Judge:
    """Decides whether a candidate that loaded and passed the probe may replace the live model.

    Args:
        guard: the divergence limits (default: only non-finite actions refuse).
        buffer: the request states to compare on (None or size 0: no shadow comparison).
        marks: the versions marked bad (None: none are kept).
        ordered: refuse step regressions within a run.
        dead_band: actions within it of 0 never count as sign flips.
        device: where the buffered states are sent (the registry's device).
        history: how many verdicts `history` keeps.

    Example:
        judge = Judge(guard=Guard(max_sign_flips=0.1), buffer=StateBuffer(256))
        verdict = judge.judge(candidate, registry.current, force=False)  # or ValidationError
    """

    def __init__(
        self,
        *,
        guard: Guard | None = None,
        buffer: StateBuffer | None = None,
        marks: BadMarks | None = None,
        ordered: bool = True,
        dead_band: float = DEAD_BAND,
        device: str = "cpu",
        history: int = 20,
    ) -> None:
        self.guard = guard or Guard()
        self.buffer = buffer
        self.marks = marks
        self.ordered = ordered
        self.dead_band = dead_band
        self.device = device
        self.history: deque[Verdict] = deque(maxlen=history)

    @classmethod
    def from_options(
        cls, options: RegistryOptions, *, name: str, model_dir: Path | None, device: str = "cpu"
    ) -> Judge:
        """The judge the options describe: `--max-divergence`/`--max-sign-flips` (the guard),
        `--shadow-states` (the buffer; 0: none), `--sign-dead-band`, and the marks of model
        `name` in `--state-dir` (none without one; `model_dir` is where the model's checkpoints
        are, which the state dir must not be inside). With `--follow max:`/`min:` the value
        orders the versions, not the step: the step order is not checked."""
        marks = None
        if options.state_dir is not None:
            marks = BadMarks(options.state_dir, name, model_dir=model_dir)
        return cls(
            guard=Guard(options.max_divergence, options.max_sign_flips),
            buffer=StateBuffer(options.shadow_states) if options.shadow_states else None,
            marks=marks, ordered=options.follow == "latest", dead_band=options.sign_dead_band,
            device=device,
        )  # fmt: skip

    @property
    def last(self) -> Verdict | None:
        history = self.history
        return history[-1] if history else None

    def judge(
        self, candidate: Candidate, live: Candidate | None, *, force: bool = False
    ) -> Verdict:
        """Judge `candidate` against `live`; return the verdict, or raise when it is refused.

        Raises:
            ValidationError: refused (marked bad, a step regression, or beyond the guard).
        """
        version = candidate.version
        refusals: list[str] = []
        note = None
        if self.marks is not None:
            mark = self.marks.get(version.sha256)
            if mark is not None:
                refusals.append(f"marked bad at {_when(mark.at)}: {mark.reason}")
        if self.ordered and live is not None:
            try:
                note = check_order(version.metadata, live.version.metadata)
            except ValidationError as exc:
                refusals.append(str(exc))
        divergence = None
        if not refusals or force:
            divergence, failed = self._compare(candidate, live)
            if failed is not None:
                refusals.append(failed)
            elif divergence is not None:
                refused = self.guard.refusal(divergence)
                if refused is not None:
                    refusals.append(f"shadow comparison: {refused}")
        reason = "; ".join(refusals) or None
        verdict = Verdict(
            checkpoint=version.checkpoint, sha256=version.sha256,
            accepted=reason is None or force, forced=force and reason is not None,
            reason=reason, note=note, divergence=divergence, at=time.time(),
        )  # fmt: skip
        self.history.append(verdict)
        self._log(verdict)
        if not verdict.accepted:
            raise ValidationError(reason)
        return verdict

    def _compare(
        self, candidate: Candidate, live: Candidate | None
    ) -> tuple[Divergence | None, str | None]:
        buffer = self.buffer
        if live is None or buffer is None or not buffer.size:
            return None, None
        if candidate.expect.inputs is not None:  # not a policy: live states are a policy's
            return None, None
        obs_dim = candidate.expect.obs_dim
        states = buffer.states(obs_dim)
        if not states:  # nothing asked yet (or not of this size): nothing to compare on
            return None, None
        try:
            d = compare(
                candidate.model, live.model, states, dead_band=self.dead_band, device=self.device
            )
        except ValidationError as exc:
            return None, f"shadow comparison: {exc}"
        return d, None

    def _log(self, verdict: Verdict) -> None:
        d = verdict.divergence
        extra = {
            "checkpoint": verdict.checkpoint, "sha256": verdict.sha256,
            "divergence": d.to_dict() if d is not None else None,
        }  # fmt: skip
        if verdict.note is not None:
            log.info("%s: %s", verdict.checkpoint, verdict.note, extra=extra)
        if verdict.forced:
            log.warning("forced past the judge: %s: %s", verdict.checkpoint, verdict.reason,
                        extra={**extra, "audit": "force"})  # fmt: skip
        elif d is not None:
            log.info("shadow %s: %s", verdict.checkpoint, d.summary(), extra=extra)


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
