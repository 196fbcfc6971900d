"""Operations: liveness, readiness, Prometheus metrics and the live status page."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from ..errors import RETRY_AFTER
from ..page import page_html, status_document
from ..schemas import error_responses
from .common import runtime_of

__all__ = ["ops_router"]

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, Any]:
    """200 while the process is alive; says nothing about models."""
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness", responses=error_responses(503))
async def readyz(request: Request) -> Response:
    """200 when every model has a live version; 503 with the reason for each one that has not."""
    reasons = runtime_of(request).not_ready()
    if reasons:
        detail = "; ".join(f"{name}: {why}" for name, why in reasons.items())
        return JSONResponse(
            {"detail": f"not ready: {detail}", "models": reasons},
            status_code=503,
            headers={"retry-after": RETRY_AFTER.decode()},
        )
    return JSONResponse({"status": "ready", "models": list(runtime_of(request).models)})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    body, content_type = runtime_of(request).metrics.exposition()
    return Response(body, media_type=content_type)


@router.get("/", summary="Status page", response_class=HTMLResponse, include_in_schema=True)
async def page() -> HTMLResponse:
    """The live status page; its script draws `/statusz` once a second."""
    return HTMLResponse(page_html())


@router.get("/statusz", summary="Status page data", response_class=JSONResponse)
async def statusz(request: Request) -> Response:
    """Every model's live version, load attempts, requests per second with p50/p99 and sampled
    actions over the last minutes, as answered by one worker (`pid`)."""
    body = orjson.dumps(await status_document(runtime_of(request)))
    return Response(body, media_type="application/json")


def ops_router() -> APIRouter:
    return router
