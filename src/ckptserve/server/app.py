"""The ASGI application: `create_app(settings)` builds it, its lifespan starts and stops the models.

    FastLane (raw ASGI: model routes, body limit)  ->  FastAPI (every route, OpenAPI)

Both read one route table (`routing.route_table`).

`app_from_env` is the factory uvicorn calls in each worker process under `--workers N`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message

from .. import __version__
from ..errors import CkptServeError
from .errors import ApiError, Style, error_reply
from .fastlane import FastLane
from .openapi import install as install_openapi
from .routes.common import to_response
from .routing import Route, lane_paths, lane_templates, route_table
from .schemas import json_body
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


async def _warm_up(app: ASGIApp, paths: Iterable[str]) -> None:
    """One in-process GET per path, replies discarded: the first request through FastAPI builds
    its middleware stack and the error path (~1 ms), paid here, before any connection is
    accepted. The routes themselves are built when registered (`add_api_route` on the app; an
    included router would build its routes on the first request, ~10 ms on the event loop)."""
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


def create_app(settings: Settings) -> FastLane:
    """Build the app for `settings`: the fast lane in front of FastAPI (`app.app`); the models
    are opened and loaded by its lifespan.

    Example:
        app = create_app(Settings(models=[ModelSpec(name="actor", path="models/")]))
        uvicorn.run(app)
    """
    runtime = Runtime(settings)
    table = route_table(settings.prefix)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Before the models open (status answers 404): the warm-up reads no model and counts
        # no request.
        await _warm_up(app, (route.path for route in table if route.warm))
        await runtime.start()
        try:
            yield
        finally:
            await runtime.close()

    app = FastAPI(
        title="ckptserve",
        version=__version__,
        summary="Serve a model that is still being trained: hot-reloaded, verified checkpoints.",
        lifespan=lifespan,
        docs_url=None,  # the docs pages are in the route table, served without a CDN
        redoc_url=None,
    )
    app.state.runtime = runtime
    for route in table:
        _register(app, route)
    for exc_type in (ApiError, CkptServeError, FileNotFoundError, RequestValidationError):
        app.add_exception_handler(exc_type, _error)
    install_openapi(app, runtime, table)
    names = [spec.name for spec in settings.models]
    return FastLane(app, runtime, lane_paths(table, names), lane_templates(table, names))


def _register(app: FastAPI, route: Route) -> None:
    app.add_api_route(
        route.path,
        route.endpoint,
        methods=[route.method],
        summary=route.summary,
        tags=[route.tag],
        responses={code: dict(doc) for code, doc in route.responses.items()},
        response_class=route.response_class,
        openapi_extra=(
            json_body(dict(route.body), required=route.body_required)
            if route.body is not None
            else None
        ),
        include_in_schema=route.in_schema,
    )


def app_from_env() -> FastLane:
    """The uvicorn factory for worker processes: settings from `$CKPTSERVE_SERVE_SETTINGS_JSON`."""
    raw = os.environ.get(SETTINGS_ENV)
    if not raw:
        raise RuntimeError(f"{SETTINGS_ENV} is not set: start the server with `ckptserve serve`")
    # Through __init__, so fields left out (the admin token) still come from the environment.
    return create_app(Settings(**json.loads(raw)))
