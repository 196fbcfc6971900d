"""The original API's endpoints, under the prefix (default `/rl`) for the default model and under
`{prefix}/{model}/...` for every model (the paths are in `routing.py`).

`predict` is normally answered by the fast lane before FastAPI routes it; the endpoint here calls
the same implementation, so it documents (and, reached directly, behaves as) the same thing.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import anyio.to_thread
from fastapi import Header, Query
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError
from starlette.requests import Request
from starlette.responses import Response

from ...errors import CheckpointError
from ...rollout.feedback import FeedbackRefused
from ...sources import confine
from ..errors import ApiError
from ..predict import handle_model_request, parse_json
from ..schemas import VERSION_REF, PinRequest, ReloadRequest
from ..state import ModelHandle, Runtime
from .common import runtime_of, to_response

__all__ = [
    "feedback",
    "for_default",
    "for_named",
    "pin",
    "predict",
    "predict_named",
    "reload",
    "status",
    "unpin",
    "versions",
]


_FORCE = Query(False, description="Reload before answering (needs the admin token)")
_VERSION = Header(
    None, alias="x-model-version", pattern=VERSION_REF["pattern"],
    description="The resident version that answers, as the body's `version` (percent-encoded "
    "as responses write it); 409 naming the resident ones when it is not resident",
)  # fmt: skip
_SESSION = Header(
    None, alias="x-session-id", description="While a canary runs, the requests of one session "
    "(an episode) are all answered by the same side",
)  # fmt: skip


async def predict(
    request: Request,
    force_reload: bool = _FORCE,
    x_model_version: str | None = _VERSION,
    x_session_id: str | None = _SESSION,
) -> Response:
    """Run the default policy on one state (`{"state": [...]}`) or a batch (`{"states": [[...]]}`).

    Every response from a model carries `X-Model-Version: <checkpoint>@<sha256[:12]>`; every
    answer its `request_id` (body and `X-Request-Id`), to report its outcome with
    `POST {prefix}/feedback`. `"version"` (or `X-Model-Version`) names the resident version
    that answers, so an episode can stay on one version.
    """
    return await _predict(request, None)


async def predict_named(
    request: Request,
    model: str,
    force_reload: bool = _FORCE,
    x_model_version: str | None = _VERSION,
    x_session_id: str | None = _SESSION,
) -> Response:
    """Run the named model's policy; the same body and response as the default model's route."""
    return await _predict(request, model)


async def _predict(request: Request, model: str | None) -> Response:
    headers = request.headers
    reply = await handle_model_request(
        runtime_of(request), "rl", model, await request.body(), request.scope["query_string"],
        headers.get("authorization", "").encode() or None, None,
        headers.get("x-model-version", "").encode("latin-1") or None,
        headers.get("x-session-id", "").encode("latin-1") or None,
    )  # fmt: skip
    return to_response(reply)


async def status_of(runtime: Runtime, handle: ModelHandle) -> dict[str, Any]:
    """The status with staleness, computed in a thread: it lists and stats the directory."""
    return await anyio.to_thread.run_sync(_status, runtime, handle)


def _status(runtime: Runtime, handle: ModelHandle) -> dict[str, Any]:
    status = handle.registry.status()
    age, lag = handle.staleness()
    status.update(
        default=handle.name == runtime.default, age_seconds=age, lag_seconds=lag, pid=os.getpid(),
        versions_behind=handle.versions_behind(), rewards=handle.rewards(runtime.feedback.stats()),
    )  # fmt: skip
    return status


async def status(request: Request, model: str | None = None) -> dict[str, Any]:
    """The registry's status (original fields plus version, last_error, history, pinned)."""
    runtime = runtime_of(request)
    return await status_of(runtime, runtime.model(model))


async def versions(request: Request, model: str | None = None) -> dict[str, Any]:
    """Timestamped checkpoints in the model's directory, newest first, marking the live one."""
    handle = runtime_of(request).model(model)
    found = await anyio.to_thread.run_sync(handle.versions)
    live = handle.registry.version
    return {
        "model": handle.name,
        "directory": str(handle.directory),
        "live": live.checkpoint if live is not None else None,
        "pinned": str(handle.registry.pinned) if handle.registry.pinned else None,
        "versions": found,
    }


def _admin(request: Request, model: str | None) -> tuple[Runtime, ModelHandle]:
    runtime = runtime_of(request)
    runtime.require_admin(request.headers.get("authorization", "").encode() or None)
    return runtime, runtime.model(model)


async def reload(request: Request, model: str | None = None) -> dict[str, Any]:
    """Load the served checkpoint again now (the pinned one while pinned), even if unchanged
    (admin). `{"force": true}` also takes a checkpoint whose sizes differ from the live model's."""
    runtime, handle = _admin(request, model)
    raw = await request.body()
    body = (
        _parse(ReloadRequest, raw, '{"force": true} or no body') if raw.strip() else ReloadRequest()
    )
    check = partial(handle.registry.check, reload=True, force=body.force)
    await anyio.to_thread.run_sync(check)
    status = await status_of(runtime, handle)
    status["attempt"] = status["history"][-1] if status["history"] else None
    return status


async def pin(request: Request, model: str | None = None) -> dict[str, Any]:
    """Serve a given checkpoint from the model's own directory until unpinned (admin)."""
    runtime, handle = _admin(request, model)
    body = _parse(PinRequest, await request.body(), '{"checkpoint": "<file name>"}')
    path = confine(handle.directory, body.checkpoint)  # PathNotAllowed -> 400, before existence
    if not path.is_file():
        raise ApiError(404, f"no checkpoint named {body.checkpoint!r} in {handle.directory}")
    try:
        await anyio.to_thread.run_sync(partial(handle.registry.pin, path, force=body.force))
    except CheckpointError as exc:
        raise ApiError(422, f"{body.checkpoint} cannot be served: {exc}") from None
    await anyio.to_thread.run_sync(runtime.pins.record, handle)  # for every worker and restart
    return await status_of(runtime, handle)


async def unpin(request: Request, model: str | None = None) -> dict[str, Any]:
    """Follow the watched path again (admin)."""
    runtime, handle = _admin(request, model)
    await anyio.to_thread.run_sync(handle.registry.unpin)
    await anyio.to_thread.run_sync(runtime.pins.record, handle)
    return await status_of(runtime, handle)


Body = TypeVar("Body", bound=BaseModel)


def _parse(model: type[Body], raw: bytes, wanted: str) -> Body:
    """The request body as `model`, or a 422 that says what was wanted."""
    try:
        return model.model_validate_json(raw)
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ApiError(422, f"the body must be {wanted}: {where}: {first['msg']}") from None


#: The status of each reason a reward is refused (rollout/feedback.py).
_REFUSED = {"unknown_id": 422, "bad_reward": 422, "duplicate": 409, "expired": 410}


async def feedback(request: Request) -> dict[str, Any]:
    """Attribute a reward to the version that answered a request: `{"request_id": ..., "reward":
    float}`, once per request id (`Authorization: Bearer <CKPTSERVE_FEEDBACK_TOKEN>` when set).
    With `--canary-metric reward` a canary is judged on these rewards."""
    runtime = runtime_of(request)
    runtime.require_feedback_token(request.headers.get("authorization", "").encode() or None)
    payload = parse_json(await request.body())
    if type(payload) is not dict:
        raise ApiError(422, 'feedback is a JSON object {"request_id": "...", "reward": <number>}')
    extra = sorted(set(payload) - {"request_id", "reward"})
    if extra:
        raise ApiError(422, f"unknown field(s) {', '.join(map(repr, extra))}"[:300])
    try:
        issued = runtime.feedback.add(payload.get("request_id"), payload.get("reward"))
    except FeedbackRefused as exc:
        runtime.metrics.feedback_refused(exc.reason)
        raise ApiError(_REFUSED[exc.reason], str(exc)) from None
    return {"request_id": issued.request_id, "version": issued.version,
            "issued_at": issued.issued_at, "reward": float(payload["reward"])}  # fmt: skip


Handler = Callable[[Request, "str | None"], Awaitable[Any]]


def for_default(fn: Handler) -> Callable[[Request], Awaitable[Any]]:
    """`fn` as the endpoint of the default model's route (`{prefix}/...`)."""

    async def endpoint(request: Request) -> Any:
        return await fn(request, None)

    endpoint.__name__, endpoint.__doc__ = fn.__name__, fn.__doc__
    return endpoint


def for_named(fn: Handler) -> Callable[[Request, str], Awaitable[Any]]:
    """`fn` as the endpoint of a named model's route (`{prefix}/{model}/...`)."""

    async def endpoint(request: Request, model: str) -> Any:
        return await fn(request, model)

    endpoint.__name__, endpoint.__doc__ = f"{fn.__name__}_named", fn.__doc__
    return endpoint
