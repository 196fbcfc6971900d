"""The ASGI application: `create_app(settings)` builds it, its lifespan starts and stops the models.

    FastLane (raw ASGI: model routes, body limit)  ->  FastAPI (routes, OpenAPI, other routes)

`app_from_env` is the factory uvicorn calls in each worker process under `--workers N`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..errors import CkptServeError
from .errors import ApiError, Style, error_reply
from .fastlane import FastLane
from .openapi import install as install_openapi
from .routes.common import to_response
from .routes.fleet import fleet_router
from .routes.oip import oip_router
from .routes.ops import ops_router
from .routes.rl import rl_router
from .settings import Settings
from .state import Runtime

__all__ = ["SETTINGS_ENV", "app_from_env", "create_app"]

#: Environment variable through which the CLI hands its settings to worker processes.
SETTINGS_ENV = "CKPTSERVE_SERVE_SETTINGS_JSON"


async def _error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        exc = ApiError(422, f"{where}: {first.get('msg')}" if where else str(first.get("msg")))
    style: Style = "oip" if request.url.path.startswith("/v2/") else "detail"
    return to_response(error_reply(exc, style))


class _App(FastAPI):
    """FastAPI whose model routes go straight to the fast lane: a POST to a path the lane answers
    skips FastAPI's per-request telemetry check and the error middleware (the lane catches every
    error itself). Anything else takes the full stack, the fast lane included."""

    _lane: FastLane | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lane = self._lane
        if lane is None and self.middleware_stack is not None:
            layer: Any = self.middleware_stack
            while layer is not None and not isinstance(layer, FastLane):
                layer = getattr(layer, "app", None)
            lane = self._lane = layer
        if (
            lane is not None
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] in lane.routes
        ):
            await lane(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


async def _warm_up(app: ASGIApp, paths: Iterable[str]) -> None:
    """One in-process GET per path, replies discarded. FastAPI (>= 0.137) builds the routes of an
    included router when the first request reaches it: ~10 ms on the event loop for ours, paid
    here, before any connection is accepted, instead of by the first request."""
    for path in paths:
        with contextlib.suppress(Exception):
            await _get(app, path)


async def _get(app: ASGIApp, path: str) -> None:
    messages = iter([{"type": "http.request", "body": b"", "more_body": False}])

    async def receive() -> Message:
        return next(messages, {"type": "http.disconnect"})

    async def send(message: Message) -> None:
        pass

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": [(b"host", b"warm-up")], "client": None, "server": None,
    }  # fmt: skip
    await app(scope, receive, send)


def create_app(settings: Settings) -> FastAPI:
    """Build the app for `settings`; the models are opened and loaded by its lifespan.

    Example:
        app = create_app(Settings(models=[ModelSpec(name="actor", path="models/")]))
        uvicorn.run(app)
    """
    runtime = Runtime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One read-only route per router, before the models open (status answers 404): the
        # warm-up reads no model and counts no request.
        await _warm_up(app, (f"{settings.prefix}/status", "/v2/health/live", "/healthz"))
        await runtime.start()
        try:
            yield
        finally:
            await runtime.close()

    app = _App(
        title="ckptserve",
        version=__version__,
        summary="Serve a model that is still being trained: hot-reloaded, verified checkpoints.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.include_router(rl_router(settings.prefix))
    app.include_router(fleet_router(settings.prefix))
    app.include_router(oip_router())
    app.include_router(ops_router())
    for exc_type in (ApiError, CkptServeError, FileNotFoundError, RequestValidationError):
        app.add_exception_handler(exc_type, _error)
    install_openapi(app, runtime)
    app.add_middleware(FastLane, runtime=runtime)
    return app


def app_from_env() -> FastAPI:
    """The uvicorn factory for worker processes: settings from `$CKPTSERVE_SERVE_SETTINGS_JSON`."""
    raw = os.environ.get(SETTINGS_ENV)
    if not raw:
        raise RuntimeError(f"{SETTINGS_ENV} is not set: start the server with `ckptserve serve`")
    # Through __init__, so fields left out (the admin token) still come from the environment.
    return create_app(Settings(**json.loads(raw)))
