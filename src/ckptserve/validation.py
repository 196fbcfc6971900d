"""VALIDATE: decide whether a loaded model may go live.

The probe runs the model once on zeros of the observation size and demands finite actions of the
expected shape inside the action bounds; the user's `validate(model)` may add checks. Anything
that fails raises ValidationError, and the registry treats the model as rejected.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from .errors import ValidationError, one_line
from .inference import act, call_named, infer_obs_dim
from .options import BoundSpec

__all__ = [
    "MAX_NAMED",
    "MAX_PROBE_VALUES",
    "Bounds",
    "Expectations",
    "Named",
    "expectations_for",
    "probe",
    "run_checks",
]


@dataclass(frozen=True, slots=True)
class Bounds:
    """Elementwise [low, high] limits for a vector of `size` values (None: unbounded)."""

    low: tuple[float, ...] | None
    high: tuple[float, ...] | None

    @classmethod
    def build(cls, low: BoundSpec, high: BoundSpec, size: int | None, what: str) -> Bounds | None:
        if low is None and high is None:
            return None
        return cls(_expand(low, size, f"{what}_low"), _expand(high, size, f"{what}_high"))

    def at(self, i: int) -> tuple[float | None, float | None]:
        """The (low, high) limits of element `i`; a single value bounds every element."""
        low, high = self.low, self.high
        return (
            None if low is None else low[i if len(low) > 1 else 0],
            None if high is None else high[i if len(high) > 1 else 0],
        )

    def first_violation(self, values: Sequence[float]) -> tuple[int, float] | None:
        """The first (index, value) outside the bounds, or None."""
        if _inside(values, self.low, self.high):
            return None
        for i, v in enumerate(values):
            low, high = self.at(i)
            if (low is not None and v < low) or (high is not None and v > high):
                return i, v
        return None

    def tensors(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        low = torch.tensor(self.low, dtype=torch.float32) if self.low is not None else None
        high = torch.tensor(self.high, dtype=torch.float32) if self.high is not None else None
        return low, high


def _inside(
    values: Sequence[float], low: tuple[float, ...] | None, high: tuple[float, ...] | None
) -> bool:
    """Whether every value is within the bounds, in C loops (min, max, map): every request's state
    is checked. `not low <= min(...)` is also true when min() returns a NaN (it does when the
    first value is one), which sends the row to first_violation's exact search."""
    if len(values) == 0:
        return True
    if low is not None:
        if len(low) == 1:
            if not low[0] <= min(values):
                return False
        elif len(values) > len(low) or any(map(operator.lt, values, low)):
            return False  # a row longer than its bounds: the search raises IndexError
    if high is not None:
        if len(high) == 1:
            if not max(values) <= high[0]:
                return False
        elif len(values) > len(high) or any(map(operator.gt, values, high)):
            return False
    return True


def _expand(spec: BoundSpec, size: int | None, name: str) -> tuple[float, ...] | None:
    if spec is None:
        return None
    try:
        if isinstance(spec, str):
            raise TypeError(spec)
        if isinstance(spec, (int, float)):
            values: tuple[float, ...] = (float(spec),)
        else:
            values = tuple(float(v) for v in spec)
    except (TypeError, ValueError):
        raise ValidationError(
            f"{name} must be a number or a list of numbers, not {spec!r}"
        ) from None
    if not values:
        raise ValidationError(f"{name} is empty")
    if size is not None and len(values) not in (1, size):
        raise ValidationError(f"{name} has {len(values)} values, expected 1 or {size}")
    if any(math.isnan(v) for v in values):
        raise ValidationError(f"{name} contains NaN")
    return values


#: A model's named inputs or outputs, in the order it takes or returns them: (name, size) pairs.
Named = tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Expectations:
    """What a model must look like to be served: sizes and bounds, from config, the live model or
    metadata. `action_dim=None`: whatever the model gives (nothing live, nothing configured).

    A model whose metadata names its tensors (`"inputs": {"state": 8, "action": 1}`, `"outputs":
    {"q": 1}`: a critic) has `inputs` and `outputs` instead of the policy's sizes and bounds."""

    obs_dim: int | None
    action_dim: int | None
    obs_bounds: Bounds | None
    action_bounds: Bounds | None
    inputs: Named | None = None
    outputs: Named | None = None

    def named(self) -> str:
        """The named inputs and outputs as a client writes them: `state[8], action[1] -> q[1]`."""
        return f"{_listed(self.inputs)} -> {_listed(self.outputs)}"


def _kind(expect: Expectations) -> str:
    return expect.named() if expect.inputs is not None else "a policy's state -> action"


def _listed(named: Named | None) -> str:
    return ", ".join(f"{name}[{size}]" for name, size in named or ())


#: The most named inputs (or outputs) a model may have.
MAX_NAMED = 16
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")


#: The most values a probe state may have: a size beyond it (e.g. `obs_dim=5e8` in metadata) is
#: refused before anything is allocated. 4M float32 values are 16 MiB.
MAX_PROBE_VALUES = 1 << 22

_SETS = {"obs_dim": "--obs-dim", "action_dim": "--action-dim"}


def _dimension(value: Any, key: str) -> int | None:
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value != int(value)):  # fmt: skip
        raise ValidationError(f"{key} must be a whole number, not {value!r}")
    if value < 1:
        raise ValidationError(f"{key} must be at least 1, not {value!r}")
    if value > MAX_PROBE_VALUES:
        raise ValidationError(
            f"{key}={int(value)} is over the {MAX_PROBE_VALUES} values a state may have"
        )
    return int(value)


def _pick(configured: Any, metadata: Mapping[str, Any], key: str) -> Any:
    return configured if configured is not None else metadata.get(key)


def expectations_for(
    metadata: Mapping[str, Any],
    *,
    obs_dim: int | None = None,
    action_dim: int | None = None,
    obs_low: BoundSpec = None,
    obs_high: BoundSpec = None,
    action_low: BoundSpec = None,
    action_high: BoundSpec = None,
    served: Expectations | None = None,
) -> Expectations:
    """Combine configured expectations with a checkpoint's metadata; configuration wins, and a
    checkpoint whose metadata contradicts it is rejected.

    `served` is the live model's: its sizes lock what a candidate may have (clients were built
    against them) wherever the configuration does not set one, also against the candidate's own
    metadata. Without it (nothing live, or a forced load) metadata, then the model, decide.
    """
    inputs, outputs = _named(metadata, "inputs"), _named(metadata, "outputs")
    if (inputs is None) != (outputs is None):
        raise ValidationError("checkpoint metadata names its inputs or its outputs, not both")
    if served is not None and not (_same(served.inputs, inputs) and _same(served.outputs, outputs)):
        have = Expectations(None, None, None, None, inputs, outputs)
        raise ValidationError(
            f"checkpoint takes {_kind(have)}, the live model serves {_kind(served)} (clients "
            "were built against it; an admin reload with force takes it anyway)"
        )
    if inputs is not None:
        if obs_dim is not None or action_dim is not None:
            raise ValidationError(
                "checkpoint names its inputs and outputs: --obs-dim and --action-dim describe "
                "a policy's state and action, unset them"
            )
        return Expectations(None, None, None, None, inputs, outputs)
    locked = {
        "obs_dim": obs_dim if obs_dim is not None else served.obs_dim if served else None,
        "action_dim": action_dim
        if action_dim is not None
        else served.action_dim
        if served
        else None,
    }
    for key, want in locked.items():
        declared = _dimension(metadata.get(key), key)
        if want is not None and declared is not None and declared != want:
            configured = (obs_dim if key == "obs_dim" else action_dim) is not None
            whose = "the server is configured with" if configured else "the live model serves"
            raise ValidationError(
                f"checkpoint declares {key}={declared}, {whose} {want}"
                f" ({_SETS[key]} sets it; an admin reload with force takes it anyway)"
            )
    o = _dimension(_pick(locked["obs_dim"], metadata, "obs_dim"), "obs_dim")
    a = _dimension(_pick(locked["action_dim"], metadata, "action_dim"), "action_dim")
    return Expectations(
        obs_dim=o,
        action_dim=a,
        obs_bounds=Bounds.build(
            _pick(obs_low, metadata, "obs_low"), _pick(obs_high, metadata, "obs_high"), o, "obs"
        ),
        action_bounds=Bounds.build(
            _pick(action_low, metadata, "action_low"),
            _pick(action_high, metadata, "action_high"),
            a,
            "action",
        ),
    )


def _named(metadata: Mapping[str, Any], key: str) -> Named | None:
    """metadata[key] as (name, size) pairs, from a JSON object of sizes; None when it is not an
    object (a policy's own metadata may use the key for something else)."""
    value = metadata.get(key)
    if not isinstance(value, Mapping):
        return None
    if not 1 <= len(value) <= MAX_NAMED:
        raise ValidationError(
            f"metadata {key} must map 1 to {MAX_NAMED} names to sizes, not {one_line(repr(value), 80)}"
        )
    pairs = []
    for name, size in value.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValidationError(
                f"metadata {key} name {one_line(repr(name), 80)} is not a name (letters, digits, "
                "_ . -, at most 64)"
            )
        pairs.append((name, _dimension(size, f"{key}[{name!r}]") or 1))
    return tuple(pairs)


def _same(a: Named | None, b: Named | None) -> bool:
    """The same names and sizes, in any order (inputs are passed by name)."""
    return (a is None) == (b is None) and dict(a or ()) == dict(b or ())


def _probe_named(model: Any, expect: Expectations) -> Expectations:
    inputs, outputs = expect.inputs or (), expect.outputs or ()
    names = [name for name, _ in outputs]
    for batch in (1, 2):
        tensors = {name: torch.zeros(batch, size) for name, size in inputs}
        shapes = ", ".join(f"{name}[{batch}, {size}]" for name, size in inputs)
        try:
            got = call_named(model, tensors, names)
        except Exception as exc:
            reason = one_line(f"{type(exc).__name__}: {exc}")
            raise ValidationError(f"probe with {shapes} failed: {reason}") from None
        for name, size in outputs:
            out = got[name]
            if tuple(out.shape) != (batch, size):
                raise ValidationError(
                    f"probe output {name} has shape {list(out.shape)}, expected [{batch}, {size}]"
                    " (the checkpoint's outputs metadata)"
                )
            if not bool(torch.isfinite(out).all()):
                raise ValidationError(f"probe output {name} is not finite (NaN or infinity)")
    return expect


def probe(model: Any, expect: Expectations) -> Expectations:
    """Run the model on zeros (batch 1 and 2) and check its actions; return the expectations with
    the sizes the probe used and found filled in.

    Zeros are moved into the observation bounds when there are any, so the probe asks the model
    about a state it may really be sent. A model whose observation size nobody states (not the
    configuration, not its metadata, not its first weight matrix) is refused: it cannot be probed.
    A model with named inputs is probed on zeros of each, and each output's shape is checked.
    """
    if expect.inputs is not None:
        return _probe_named(model, expect)
    obs_dim = expect.obs_dim or infer_obs_dim(model)
    if obs_dim is None:
        raise ValidationError(
            "cannot probe the model: its observation size is unknown (set --obs-dim, or obs_dim "
            "in the checkpoint's metadata; publish() writes it)"
        )
    obs_dim = _dimension(obs_dim, "obs_dim") or obs_dim
    state = torch.zeros(1, obs_dim)
    if expect.obs_bounds is not None:
        low, high = expect.obs_bounds.tensors()
        state = state.clamp(min=low, max=high)
    action_dim = expect.action_dim
    for batch in (1, 2):
        try:
            action = act(model, state.expand(batch, obs_dim))
        except Exception as exc:
            reason = one_line(f"{type(exc).__name__}: {exc}")
            raise ValidationError(
                f"probe with a [{batch}, {obs_dim}] state failed: {reason}"
            ) from None
        if action.dim() == 1 and action.shape[0] == batch:
            action = action.unsqueeze(-1)  # one action per state, as the server answers it
        shape = tuple(action.shape)
        if action_dim is None and len(shape) == 2 and shape[0] == batch and shape[1] >= 1:
            action_dim = shape[1]  # nothing says otherwise: the first model sets it
        want = (batch, action_dim)
        if shape != want:
            raise ValidationError(
                f"probe action shape {list(shape)}, expected [{batch}, {action_dim or 'k'}]"
                " (--action-dim or the checkpoint's action_dim metadata sets it)"
            )
        if not bool(torch.isfinite(action).all()):
            raise ValidationError("probe action is not finite (NaN or infinity)")
        if expect.action_bounds is not None:
            hit = expect.action_bounds.first_violation(action[0].tolist())
            if hit is not None:
                raise ValidationError(
                    f"probe action[{hit[0]}]={hit[1]:.6g} is outside the action bounds"
                )
    return replace(expect, obs_dim=obs_dim, action_dim=action_dim)


def run_checks(
    model: Any,
    expect: Expectations,
    validate: Callable[[Any], object] | None = None,
) -> Expectations:
    """The whole validate stage: the probe, then the user's check. Returns the probed expectations."""
    probed = probe(model, expect)
    if validate is not None:
        try:
            validate(model)
        except ValidationError:
            raise
        except Exception as exc:
            reason = one_line(f"{type(exc).__name__}: {exc}")
            raise ValidationError(f"validate() rejected the model: {reason}") from None
    return probed
