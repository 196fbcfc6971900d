"""Open Inference Protocol v2 (KServe v2 / Triton HTTP) for every model: health, metadata and
`infer` with JSON tensors or the binary tensor extension that `tritonclient` sends by default.
The endpoints; their paths are in `routing.py`."""

from __future__ import annotations

from typing import Any

from fastapi import Header, Path
from starlette.requests import Request
from starlette.responses import Response

from ... import __version__
from ..errors import error_reply
from ..predict import handle_model_request
from ..schemas import VERSION_REF
from .common import JSONText, runtime_of, to_response

__all__ = [
    "infer",
    "infer_version",
    "live",
    "model_metadata",
    "model_ready",
    "ready",
    "server_metadata",
]


def _json(data: dict[str, Any], status: int = 200) -> JSONText:
    return JSONText(data, status_code=status)


async def server_metadata() -> dict[str, Any]:
    return {"name": "ckptserve", "version": __version__, "extensions": ["binary_tensor_data"]}


async def live() -> dict[str, Any]:
    return {"live": True}


async def ready(request: Request) -> Response:
    ok = not runtime_of(request).not_ready()
    return _json({"ready": ok}, 200 if ok else 503)


async def model_metadata(request: Request, name: str) -> Response:
    runtime = runtime_of(request)
    try:
        handle = runtime.model(name)
    except Exception as exc:
        return to_response(error_reply(exc, "oip"))
    live = handle.registry.current
    if live is not None and live.expect.inputs is not None:  # a model with named inputs
        inputs, outputs = live.expect.inputs, live.expect.outputs or ()
    else:
        obs_dim = live.expect.obs_dim if live is not None else runtime.settings.registry.obs_dim
        action_dim = (
            live.expect.action_dim
            if live is not None
            else runtime.settings.registry.action_dim or 1
        )
        inputs, outputs = (("state", obs_dim or -1),), (("action", action_dim or 1),)
    return _json({
        "name": handle.name,
        "versions": [live.version.tag] if live is not None else [],
        "platform": "pytorch_" + (live.version.format if live is not None else "unknown"),
        "inputs": [{"name": n, "datatype": "FP32", "shape": [-1, size]} for n, size in inputs],
        "outputs": [{"name": n, "datatype": "FP32", "shape": [-1, size]} for n, size in outputs],
    })  # fmt: skip


async def model_ready(request: Request, name: str) -> Response:
    try:
        handle = runtime_of(request).model(name)
    except Exception as exc:
        return to_response(error_reply(exc, "oip"))
    ok = handle.registry.current is not None
    return _json({"name": handle.name, "ready": ok}, 200 if ok else 503)


_SESSION = Header(
    None, alias="x-session-id", description="While a canary runs, the requests of one session "
    "(an episode) are all answered by the same side",
)  # fmt: skip
_VERSION_PATH = Path(pattern=VERSION_REF["pattern"], description=VERSION_REF["description"])


async def infer(request: Request, name: str, x_session_id: str | None = _SESSION) -> Response:
    """FP32 input `state` of shape `[batch, obs_dim]` -> FP32 output `action`; `parameters`
    carries the `request_id` to report a reward for (`POST /rl/feedback`)."""
    return await _infer(request, name, None)


async def infer_version(
    request: Request, name: str, version: str = _VERSION_PATH, x_session_id: str | None = _SESSION
) -> Response:
    """As `infer`, answered by the resident version `version` names (its sha256, 12+ hex digits
    of it, or its `<checkpoint>@<sha256[:12]>` tag: tritonclient's `model_version=`); 409
    naming the resident versions when it is not resident."""
    return await _infer(request, name, version)


async def _infer(request: Request, name: str, version: str | None) -> Response:
    headers = request.headers
    reply = await handle_model_request(
        runtime_of(request), "oip", name, await request.body(), b"", None,
        headers.get("inference-header-content-length", "").encode() or None, version,
        headers.get("x-session-id", "").encode("latin-1") or None,
    )  # fmt: skip
    return to_response(reply)
