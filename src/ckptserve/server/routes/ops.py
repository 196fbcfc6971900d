"""Operations: liveness, readiness, Prometheus metrics and the live status page (the endpoints;
their paths are in `routing.py`)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from ..errors import RETRY_AFTER
from ..names import text_safe
from ..page import page_html, status_document
from .common import JSONText, runtime_of

__all__ = ["healthz", "metrics", "page", "readyz", "statusz"]


async def healthz() -> dict[str, Any]:
    """200 while the process is alive; says nothing about models."""
    return {"status": "ok"}


async def readyz(request: Request) -> Response:
    """200 when every model has a live version (`fallback` names the models served by an earlier
    checkpoint because the newest cannot be); 503 with the reason for each one that has not."""
    runtime = runtime_of(request)
    reasons = runtime.not_ready()
    if reasons:
        detail = "; ".join(f"{name}: {why}" for name, why in reasons.items())
        return JSONText(
            {"detail": f"not ready: {detail}", "models": reasons},
            status_code=503,
            headers={"retry-after": RETRY_AFTER.decode()},
        )
    return JSONText(
        {"status": "ready", "models": list(runtime.models), "fallback": runtime.fallbacks()}
    )


def metrics(request: Request) -> Response:
    body, content_type = runtime_of(request).metrics.exposition()
    return Response(body, media_type=content_type)


async def page() -> HTMLResponse:
    """The live status page; its script draws `/statusz` once a second."""
    return HTMLResponse(page_html())


async def statusz(request: Request) -> Response:
    """Every model's live version, load attempts, requests per second with p50/p99 and sampled
    actions over the last minutes, as answered by one worker (`pid`)."""
    document = await status_document(runtime_of(request))
    try:
        body = orjson.dumps(document)
    except orjson.JSONEncodeError:  # a file name that is not UTF-8
        body = orjson.dumps(text_safe(document))
    return Response(body, media_type="application/json")
