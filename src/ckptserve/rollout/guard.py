"""Guard: refuse a candidate whose actions on real states are too far from the live model's.

    --max-divergence X    the mean absolute action difference over the buffered states
    --max-sign-flips F    the share (0-1) of compared states where an action changes sign
                          outside the dead band (see shadow.py)

A candidate beyond either limit is refused like a failed probe, with the figure, the limit and by
how much. Non-finite actions on any buffered state refuse it whatever the limits (the probe only
tries a zero state). Equal to a limit passes. A forced reload or pin takes a candidate through
(judging.py decides that; the guard only says what it would refuse).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ValidationError
from .shadow import Divergence

__all__ = ["Guard"]


@dataclass(frozen=True, slots=True)
class Guard:
    """The limits a candidate's divergence must stay within (None: that one is not checked).

    Example:
        Guard(max_divergence=0.2, max_sign_flips=0.1).check(compare(new, live, states))
    """

    max_divergence: float | None = None
    max_sign_flips: float | None = None

    def __post_init__(self) -> None:
        x, f = self.max_divergence, self.max_sign_flips
        if x is not None and not (math.isfinite(x) and x >= 0):
            raise ValueError(f"--max-divergence must be a number >= 0, not {x}")
        if f is not None and not 0 <= f <= 1:
            raise ValueError(f"--max-sign-flips is a share between 0 and 1, not {f}")

    def refusal(self, d: Divergence) -> str | None:
        """Why `d` refuses the candidate, or None when it passes."""
        reasons = []
        if d.non_finite_states:
            reasons.append(
                f"non-finite actions (NaN or infinite) on {d.non_finite_states} of {d.states} "
                f"buffered states ({d.non_finite:.1%}): refused whatever the limits"
            )
        x = self.max_divergence
        if x is not None and d.mean_abs is not None and d.mean_abs > x:
            reasons.append(
                f"mean absolute action difference {d.mean_abs:.4g} over {d.states} buffered "
                f"states is over --max-divergence {x:g} by {d.mean_abs - x:.4g}"
            )
        f = self.max_sign_flips
        if f is not None and d.sign_flips > f:
            reasons.append(
                f"actions change sign on {d.sign_flips:.1%} of the compared states "
                f"({d.flipped_states}, outside the dead band {d.dead_band:g}), over "
                f"--max-sign-flips {f:g} by {(d.sign_flips - f) * 100:.1f} points"
            )
        return "; ".join(reasons) or None

    def check(self, d: Divergence) -> None:
        """Raise ValidationError saying by how much `d` is beyond the limits, if it is."""
        reason = self.refusal(d)
        if reason is not None:
            raise ValidationError(f"shadow comparison: {reason}")
