"""Shadow comparison: run a candidate on recent real states beside the live model, before a swap.

`StateBuffer` keeps the last `size` request states (`--shadow-states`, default 256; 0 = off). It
holds states only, never actions, responses or headers, and it costs the request path one list
store: a request records one of its states (a batch records one row, taken in turn), so a client
sending large batches does not crowd out the others and the cost does not grow with the batch.
The rows are kept as the request parsed them (lists of floats); nothing is copied.

`compare` runs both models on the buffered states and says how far the candidate's actions are
from the live one's (`Divergence`):

    mean_abs, max_abs   mean and max of |candidate - live| over every action value
    sign_flips          the share of states where some action changes sign, counting only values
                        outside the dead band: |a| > dead_band in both (default 0.05, so noise
                        around 0 is no flip)
    non_finite          the share of states where the candidate's action is NaN or infinite

States where the live model's own action is not finite are left out of the differences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..errors import ValidationError
from ..inference import act
from ..options import SIGN_DEAD_BAND

__all__ = ["DEAD_BAND", "Divergence", "StateBuffer", "compare"]

#: Actions within this distance of 0 never count as a sign flip (a value of 0.01 becoming
#: -0.01 is noise, not a policy that turned from long to short): `--sign-dead-band`'s default.
DEAD_BAND = SIGN_DEAD_BAND


class StateBuffer:
    """A ring buffer of the last `size` request states; `record` is O(1) and never grows it.

    Args:
        size: how many states are kept (0: none; `record` then does nothing).

    Example:
        buffer = StateBuffer(256)
        buffer.record(rows)          # per request, with the rows it parsed
        states = buffer.states()     # before a swap: the states to compare on
    """

    __slots__ = ("_count", "_slots", "size")

    def __init__(self, size: int = 256) -> None:
        if size < 0:
            raise ValueError(f"size must be >= 0 (0 = off), not {size}")
        self.size = size
        self._slots: list[Any] = [None] * size
        self._count = 0

    def record(self, rows: Sequence[Sequence[float]] | torch.Tensor) -> None:
        """Keep one of this request's states: the only row, or a batch's rows in turn.

        `rows` is what the request parsed: a list of lists of floats, or a `[batch, obs_dim]`
        tensor (its row is copied out as a list)."""
        size = self.size
        if not size:
            return
        # A tensor's len() is a Python call: its shape is read instead.
        count = rows.shape[0] if isinstance(rows, torch.Tensor) else len(rows)
        if not count:
            return
        n = self._count
        self._count = n + 1
        row: Any
        if isinstance(rows, torch.Tensor):  # copied out as a list: a view would keep its batch
            row = rows.tolist()[0] if count == 1 else rows[n % count].tolist()
        else:
            row = rows[n % count]
        # Two threads may read the same n: one state is then lost, the size never exceeded.
        self._slots[n % size] = row

    def states(self, obs_dim: int | None = None) -> list[Sequence[float]]:
        """The buffered states, oldest first; only those of length `obs_dim` when given."""
        size, n = self.size, self._count
        if not size:
            return []
        slots = list(self._slots)  # one copy: requests may record meanwhile
        start = n % size if n >= size else 0
        ordered = slots[start:] + slots[:start]
        return [s for s in ordered if s is not None and (obs_dim is None or len(s) == obs_dim)]

    @property
    def recorded(self) -> int:
        """States recorded since the start (the buffer keeps the last `size` of them)."""
        return self._count

    def __len__(self) -> int:
        return min(self._count, self.size)


@dataclass(frozen=True, slots=True)
class Divergence:
    """How far a candidate's actions are from the live model's on the buffered states.

    `mean_abs` and `max_abs` are None when no state gave both models finite actions.
    """

    states: int
    mean_abs: float | None
    max_abs: float | None
    sign_flips: float
    flipped_states: int
    non_finite: float
    non_finite_states: int
    dead_band: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line for the load log and the status page."""
        if not self.states:
            return "no buffered states to compare on"
        mean = "n/a" if self.mean_abs is None else f"{self.mean_abs:.4g}"
        top = "n/a" if self.max_abs is None else f"{self.max_abs:.4g}"
        return (
            f"over {self.states} buffered states: mean |Δaction| {mean}, max {top}, "
            f"sign flips {self.sign_flips:.1%}, non-finite {self.non_finite:.1%}"
        )


def _actions(model: Any, x: torch.Tensor, who: str) -> torch.Tensor:
    try:
        out = act(model, x)
    except Exception as exc:
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise ValidationError(
            f"the {who} fails on {x.shape[0]} buffered states: {reason}"
        ) from None
    out = out.detach().to("cpu", torch.float32)
    if out.dim() == 1:
        out = out.unsqueeze(-1)
    if out.dim() != 2 or out.shape[0] != x.shape[0]:
        raise ValidationError(
            f"the {who} answers {x.shape[0]} buffered states with an action of shape "
            f"{list(out.shape)}, expected [{x.shape[0]}, k]"
        )
    return out


def compare(
    candidate: Any,
    live: Any,
    states: Sequence[Sequence[float]],
    *,
    dead_band: float = DEAD_BAND,
    device: str = "cpu",
) -> Divergence:
    """Run `candidate` and `live` (models) on `states` and measure how their actions differ.

    Raises:
        ValidationError: the candidate fails on the states, or its actions do not have the live
            model's shape.

    Example:
        d = compare(candidate.model, live.model, buffer.states(live.expect.obs_dim))
    """
    if dead_band < 0 or not math.isfinite(dead_band):
        raise ValueError(f"dead_band must be a finite number >= 0, not {dead_band}")
    if not states:
        return Divergence(0, None, None, 0.0, 0, 0.0, 0, dead_band)
    x = torch.tensor(states, dtype=torch.float32, device=device)
    new = _actions(candidate, x, "candidate")
    old = _actions(live, x, "live model")
    if new.shape != old.shape:
        raise ValidationError(
            f"the candidate's actions have shape {list(new.shape)} on the buffered states, the "
            f"live model's {list(old.shape)}"
        )
    n = x.shape[0]
    new_finite = torch.isfinite(new).all(dim=1)
    both = new_finite & torch.isfinite(old).all(dim=1)
    bad = int((~new_finite).sum())
    compared = int(both.sum())
    if compared:
        a, b = new[both], old[both]
        diff = (a - b).abs()
        outside = (a.abs() > dead_band) & (b.abs() > dead_band)
        flipped = int((outside & (torch.sign(a) != torch.sign(b))).any(dim=1).sum())
        mean_abs: float | None = float(diff.mean())
        max_abs: float | None = float(diff.max())
    else:
        flipped, mean_abs, max_abs = 0, None, None
    return Divergence(
        states=n, mean_abs=mean_abs, max_abs=max_abs,
        sign_flips=flipped / compared if compared else 0.0, flipped_states=flipped,
        non_finite=bad / n, non_finite_states=bad, dead_band=dead_band,
    )  # fmt: skip
