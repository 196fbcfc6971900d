"""What the model routes share (`predict.py`, `infer.py`): parsing and checking a body by hand,
the forward pass (batched, or off the event loop for big batches), the version a request names,
and the answer's version fields."""

from __future__ import annotations

import json
import math
import reprlib
from typing import Any
from urllib.parse import parse_qsl, unquote

import anyio.to_thread
import orjson
import torch

from ..inference import act
from ..registry import LiveModel
from ..validation import Bounds
from .batching import FORWARD_COST
from .errors import ApiError
from .schemas import F32_MAX
from .state import ModelHandle

__all__ = [
    "REQUEST_ID_HEADER",
    "answer",
    "asked_version",
    "check_bounds",
    "check_row",
    "force_reload",
    "json_type",
    "parse_json",
    "short",
]

#: Every answer carries its signed request id (rollout/feedback.py) in this header and its body.
REQUEST_ID_HEADER = b"x-request-id"

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 2, 40, 40

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


class _NonFinite(ValueError):
    pass


class _NonFiniteAction(ApiError):
    """The model's action for states that passed every input check is not finite."""


class _ModelFailed(ApiError):
    """The model raised on states that passed every input check."""


def _refuse_constant(name: str) -> float:
    raise _NonFinite(name)


def parse_json(body: bytes) -> Any:
    """Parse a JSON body: malformed is a 400, the non-standard NaN/Infinity literals a 422."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    # orjson refuses NaN/Infinity literals, 1e400 and huge integers; tell those apart.
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except _NonFinite as exc:
        raise ApiError(422, f"{exc} is not a finite number") from None
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"malformed JSON: {exc}") from None


def _describe(v: Any) -> str:
    if isinstance(v, bool):
        return f"a boolean ({'true' if v else 'false'}), not a number"
    if isinstance(v, (int, float)):
        return f"{v!r}, not a finite float32 number"
    return f"a {type(v).__name__ if v is not None else 'null'}, not a number"


def check_row(row: Any, obs_dim: int | None, where: str) -> list[float]:
    """A list of finite numbers of the expected length, or a 422 that says what is wrong."""
    if type(row) is not list:
        raise ApiError(422, f"{where} must be a list of numbers, not {json_type(row)}")
    if obs_dim is not None and len(row) != obs_dim:
        raise ApiError(422, f"{where} has {len(row)} values, expected {obs_dim}")
    if not row:
        raise ApiError(422, f"{where} is empty")
    for v in row:
        t = type(v)
        if (t is not float and t is not int) or not (-F32_MAX <= v <= F32_MAX):
            break
    else:
        return row
    for i, v in enumerate(row):
        t = type(v)
        if (t is not float and t is not int) or not (-F32_MAX <= v <= F32_MAX):
            raise ApiError(422, f"{where}[{i}] is {_describe(v)}")
    return row  # pragma: no cover


def short(v: Any) -> str:
    """A client's value in an error message: its repr, cut short (any depth, any size)."""
    return _REPR.repr(v)


def json_type(v: Any) -> str:
    if v is None:
        return "null"
    return {dict: "an object", str: "a string", bool: "a boolean", list: "a list"}.get(
        type(v), "a number"
    )


def check_bounds(
    bounds: Bounds | None, rows: list[list[float]], where: str, batched: bool = True
) -> None:
    if bounds is None:
        return
    for b, row in enumerate(rows):
        hit = bounds.first_violation(row)
        if hit is not None:
            i, v = hit
            at = f"{where}[{b}][{i}]" if batched else f"{where}[{i}]"
            raise ApiError(422, f"{at}={v!r} is outside the observation bounds{_range(bounds, i)}")


def _range(bounds: Bounds, i: int) -> str:
    low, high = bounds.at(i)
    return f" [{low}, {high}]"


def force_reload(query: bytes) -> bool:
    force = False
    for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if key == "force_reload":
            low = value.lower()
            if low in _TRUE:
                force = True
            elif low not in _FALSE:
                raise ApiError(422, f"force_reload must be true or false, not {value!r}")
    return force


async def _forward_maybe_batched(handle: ModelHandle, live: LiveModel,
                                 x: torch.Tensor) -> list[list[float]]:  # fmt: skip
    batcher = handle.batcher
    if batcher is not None:
        return _rows(await batcher.run(live, x, _run_model))
    if FORWARD_COST.off_loop(live, x.shape[0]):  # a long pass must not hold the event loop
        return _rows(await anyio.to_thread.run_sync(_run_model, live, x))
    return _rows(_run_model(live, x))


def _forward(live: LiveModel, x: torch.Tensor) -> torch.Tensor:
    """The model's actions for `x` as a `[batch, action_dim]` tensor (a 422/500 when not)."""
    try:
        action = act(live.model, x)
    except Exception as exc:
        raise _ModelFailed(
            422, f"the model cannot run on this input: {type(exc).__name__}: {exc}"
        ) from None
    want = live.expect.action_dim
    if action.dim() == 1:
        action = action.unsqueeze(-1)
    if action.dim() != 2 or action.shape[0] != x.shape[0] or action.shape[1] != want:
        raise ApiError(
            500,
            f"model returned an action of shape {list(action.shape)}, expected [{x.shape[0]}, {want}]",
        )
    return action


#: Every policy pass, timed for FORWARD_COST (where it runs: on the loop or in a thread).
_run_model = FORWARD_COST.timed(_forward)


def _rows(action: torch.Tensor) -> list[list[float]]:
    values: list[list[float]] = action.tolist()
    for row in values:
        for a in row:
            if not -math.inf < a < math.inf:
                raise _NonFiniteAction(422, "the model's action for this state is not finite")
    return values


def asked_version(body: str | None, header: bytes | str | None) -> str | None:
    """The version a request names: `"version"` in its body, else the `X-Model-Version` header
    (percent-decoded, as responses encode it) or OIP's version path."""
    if isinstance(header, bytes):
        header = unquote(header.decode("latin-1"), errors="surrogateescape")
    if body is None:
        return header
    if header is not None and header != body:
        raise ApiError(422, '"version" and the X-Model-Version header name different versions')
    return body


async def answer(handle: ModelHandle, live: LiveModel, x: torch.Tensor,
                  pinned: bool) -> tuple[LiveModel, list[list[float]]]:  # fmt: skip
    """The actions of `live` for `x` (states that passed every input check), and the version
    that gave them. A version that misbehaves on them is rolled back at once (registry.rollout:
    the live one for non-finite actions; a canary also for raising where the live version does
    not) and, unless the client named it, the version that answers now is asked instead."""
    try:
        return live, await _forward_maybe_batched(handle, live, x)
    except _NonFiniteAction as exc:
        failure: ApiError = exc
        reason = f"non-finite actions on live traffic ({x.shape[0]} states that passed the checks)"
    except _ModelFailed as exc:
        canary = handle.canary
        incumbent = handle.registry.current
        if pinned or canary is None or canary.canary is not live or incumbent is None:
            raise
        values = await _forward_maybe_batched(handle, incumbent, x)  # the input is fine if so
        reason = f"raised on live traffic where the live version does not: {exc.detail}"
        await anyio.to_thread.run_sync(handle.registry.rollout.misbehaved, live, reason)
        return incumbent, values
    now = await anyio.to_thread.run_sync(handle.registry.rollout.misbehaved, live, reason)
    if pinned or now is None or now is live:
        raise failure
    return now, await _forward_maybe_batched(handle, now, x)
