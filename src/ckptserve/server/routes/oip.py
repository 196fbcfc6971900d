"""Open Inference Protocol v2 (KServe v2 / Triton HTTP) for every model: health, metadata and
`infer` with JSON tensors or the binary tensor extension that `tritonclient` sends by default."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ... import __version__
from ..errors import error_reply
from ..predict import handle_model_request
from ..schemas import INFER_BODY, InferResponse, error_responses, json_body
from .common import runtime_of, to_response

__all__ = ["oip_router"]

router = APIRouter(prefix="/v2", tags=["oip"])


def _not_ready(*fields: str) -> dict[int | str, dict[str, Any]]:
    """The 503 of a readiness route: the same body as its 200, with `"ready": false`."""
    props = {f: {"type": "boolean" if f == "ready" else "string"} for f in fields}
    schema = {"type": "object", "required": list(fields), "properties": props}
    return {503: {"description": "Not ready", "content": {"application/json": {"schema": schema}}}}


def _json(data: dict[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status)


@router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": "ckptserve", "version": __version__, "extensions": ["binary_tensor_data"]}


@router.get("/health/live", summary="Server live")
async def live() -> dict[str, Any]:
    return {"live": True}


@router.get("/health/ready", summary="Server ready", responses=_not_ready("ready"))
async def ready(request: Request) -> Response:
    ok = not runtime_of(request).not_ready()
    return _json({"ready": ok}, 200 if ok else 503)


@router.get("/models/{name}", summary="Model metadata", responses=error_responses(404, oip=True))
async def model_metadata(request: Request, name: str) -> Response:
    runtime = runtime_of(request)
    try:
        handle = runtime.model(name)
    except Exception as exc:
        return to_response(error_reply(exc, "oip"))
    live = handle.registry.current
    obs_dim = live.expect.obs_dim if live is not None else runtime.settings.registry.obs_dim
    action_dim = (
        live.expect.action_dim if live is not None else runtime.settings.registry.action_dim or 1
    )
    return _json({
        "name": handle.name,
        "versions": [live.version.tag] if live is not None else [],
        "platform": "pytorch_" + (live.version.format if live is not None else "unknown"),
        "inputs": [{"name": "state", "datatype": "FP32", "shape": [-1, obs_dim or -1]}],
        "outputs": [{"name": "action", "datatype": "FP32", "shape": [-1, action_dim]}],
    })  # fmt: skip


@router.get(
    "/models/{name}/ready",
    summary="Model ready",
    responses={**error_responses(404, oip=True), **_not_ready("name", "ready")},
)
async def model_ready(request: Request, name: str) -> Response:
    try:
        handle = runtime_of(request).model(name)
    except Exception as exc:
        return to_response(error_reply(exc, "oip"))
    ok = handle.registry.current is not None
    return _json({"name": handle.name, "ready": ok}, 200 if ok else 503)


@router.post(
    "/models/{name}/infer",
    summary="Infer",
    response_model=None,
    responses={
        200: {"model": InferResponse},
        **error_responses(400, 404, 413, 422, 503, oip=True),
    },
    openapi_extra=json_body(INFER_BODY),
)
async def infer(request: Request, name: str) -> Response:
    """FP32 input `state` of shape `[batch, obs_dim]` -> FP32 output `action`."""
    reply = await handle_model_request(
        runtime_of(request), "oip", name, await request.body(), b"", None,
        request.headers.get("inference-header-content-length", "").encode() or None,
    )  # fmt: skip
    return to_response(reply)


def oip_router() -> APIRouter:
    return router
