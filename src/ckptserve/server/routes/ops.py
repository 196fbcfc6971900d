"""Operations: liveness, readiness, Prometheus metrics and the live status page (the endpoints;
their paths are in `routing.py`)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from ..errors import RETRY_AFTER
from ..names import printable
from ..page import render_page
from .common import JSONText, runtime_of

__all__ = ["healthz", "metrics", "page", "readyz"]


async def healthz() -> dict[str, Any]:
    """200 while the process is alive; says nothing about models."""
    return {"status": "ok"}


async def readyz(request: Request) -> Response:
    """200 when every model has a live version; 503 with the reason for each one that has not."""
    reasons = runtime_of(request).not_ready()
    if reasons:
        detail = "; ".join(f"{name}: {why}" for name, why in reasons.items())
        return JSONText(
            {"detail": f"not ready: {detail}", "models": reasons},
            status_code=503,
            headers={"retry-after": RETRY_AFTER.decode()},
        )
    return JSONText({"status": "ready", "models": list(runtime_of(request).models)})


def metrics(request: Request) -> Response:
    body, content_type = runtime_of(request).metrics.exposition()
    return Response(body, media_type=content_type)


def page(request: Request) -> HTMLResponse:
    """A small HTML page: each model's live version, load history, last error and staleness."""
    return HTMLResponse(printable(render_page(runtime_of(request))))
