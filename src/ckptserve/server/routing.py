"""The route table: every route the server answers, declared once.

`create_app` registers each entry with FastAPI, which documents it in `/openapi.json`; the fast
lane answers the entries that name a `lane` itself (POST on one exact path per served model, one
dict lookup; a path with a `{version}` segment, by its prefix and suffix per served model); `openapi.py` finds the model routes and each path's methods here; the lifespan warms
up the entries marked `warm`. The route modules hold only the endpoints.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from starlette.responses import HTMLResponse, Response

from . import docs
from .routes import fleet, oip, ops, rl
from .routes.common import JSONText
from .schemas import (
    ADMIN,
    BINARY_TENSORS,
    FEEDBACK_BODY,
    INFER_BODY,
    PIN_BODY,
    PREDICT_BODY,
    RELOAD_BODY,
    FeedbackResponse,
    InferResponse,
    PredictResponse,
    error_responses,
    not_ready_response,
)

__all__ = ["Lane", "Route", "lane_paths", "lane_templates", "path_pattern", "route_table"]

#: The fast lane's two kinds of model request: the original API (`rl`) and OIP v2 `infer`.
Lane = Literal["rl", "oip"]

_PARAM = re.compile(r"\{[^}]+\}")
_VERSION = "{version}"


@dataclass(frozen=True, slots=True)
class Route:
    """One route: what FastAPI registers, what OpenAPI says, and who else reads it.

    Args:
        method: the HTTP method.
        path: the path, with at most one parameter naming a model (`{model}` or `{name}`),
            and at most one `{version}` (a version reference) after it.
        endpoint: the FastAPI endpoint.
        summary: the operation's summary; `tag` groups it in the docs.
        responses: the documented statuses besides FastAPI's own.
        body: the JSON schema of a request body the endpoint reads itself (`body_required`: it
            must be sent).
        lane: the fast lane answers this route (POST), once per served model.
        warm: the lifespan GETs it once before serving (it must read no model).
        in_schema: documented in `/openapi.json` (the docs pages themselves are not).
    """

    method: str
    path: str
    endpoint: Callable[..., Any]
    summary: str
    tag: str
    responses: Mapping[int | str, Mapping[str, Any]] = field(default_factory=dict)
    body: Mapping[str, Any] | None = None
    body_required: bool = True
    lane: Lane | None = None
    warm: bool = False
    response_class: type[Response] = JSONText
    in_schema: bool = True


def route_table(prefix: str) -> tuple[Route, ...]:
    """Every route, the original API under `prefix`, in the order the docs list them."""
    table: list[Route] = []
    admin = error_responses(*ADMIN, 404)
    for base, named in ((prefix, False), (f"{prefix}/{{model}}", True)):
        suffix = " (named model)" if named else ""
        bind = rl.for_named if named else rl.for_default
        table += [
            Route("POST", f"{base}/predict", rl.predict_named if named else rl.predict,
                  "Predict" + suffix, "rl", {200: {"model": PredictResponse},
                  **error_responses(400, 401, 403, 404, 409, 413, 422, 503)},
                  body=PREDICT_BODY, lane="rl"),
            Route("GET", f"{base}/status", bind(rl.status), "Status" + suffix, "rl",
                  error_responses(404), warm=not named),
            Route("GET", f"{base}/versions", bind(rl.versions), "Versions" + suffix, "rl",
                  error_responses(404)),
            Route("POST", f"{base}/reload", bind(rl.reload), "Reload" + suffix, "rl",
                  {**admin, **error_responses(422, 503)}, body=RELOAD_BODY, body_required=False),
            Route("POST", f"{base}/pin", bind(rl.pin), "Pin" + suffix, "rl",
                  {**admin, **error_responses(400, 413, 422)}, body=PIN_BODY),
            Route("DELETE", f"{base}/pin", bind(rl.unpin), "Unpin" + suffix, "rl", admin),
        ]  # fmt: skip
    table.append(Route("GET", f"{prefix}/fleet", fleet.fleet, "Fleet", "rl"))
    table.append(Route("POST", f"{prefix}/feedback", rl.feedback, "Feedback", "rl",
                       {200: {"model": FeedbackResponse}, **error_responses(400, 401, 409, 410, 422)},
                       body=FEEDBACK_BODY))  # fmt: skip
    oip_404 = error_responses(404, oip=True)
    table += [
        Route("GET", "/v2", oip.server_metadata, "Server metadata", "oip"),
        Route("GET", "/v2/health/live", oip.live, "Server live", "oip", warm=True),
        Route("GET", "/v2/health/ready", oip.ready, "Server ready", "oip",
              not_ready_response("ready")),
        Route("GET", "/v2/models/{name}", oip.model_metadata, "Model metadata", "oip", oip_404),
        Route("GET", "/v2/models/{name}/ready", oip.model_ready, "Model ready", "oip",
              {**oip_404, **not_ready_response("name", "ready")}),
        Route("POST", "/v2/models/{name}/infer", oip.infer, "Infer", "oip",
              {200: {"model": InferResponse, "content": BINARY_TENSORS},
               **error_responses(400, 404, 413, 422, 503, oip=True)},
              body=INFER_BODY, lane="oip"),
        Route("POST", "/v2/models/{name}/versions/{version}/infer", oip.infer_version,
              "Infer (a named version)", "oip",
              {200: {"model": InferResponse, "content": BINARY_TENSORS},
               **error_responses(400, 404, 409, 413, 422, 503, oip=True)},
              body=INFER_BODY, lane="oip"),
        Route("GET", "/healthz", ops.healthz, "Liveness", "operations", warm=True),
        Route("GET", "/readyz", ops.readyz, "Readiness", "operations", error_responses(503)),
        Route("GET", "/metrics", ops.metrics, "Prometheus metrics", "operations",
              response_class=Response),
        Route("GET", "/", ops.page, "Status page", "operations", response_class=HTMLResponse),
        Route("GET", "/statusz", ops.statusz, "Status page data", "operations"),
        Route("GET", "/docs", docs.swagger_ui, "API docs", "docs", response_class=HTMLResponse,
              in_schema=False),
        Route("GET", "/docs/oauth2-redirect", docs.oauth2_redirect, "OAuth2 redirect", "docs",
              response_class=HTMLResponse, in_schema=False),
        Route("GET", "/redoc", docs.redoc, "API docs (ReDoc)", "docs", response_class=HTMLResponse,
              in_schema=False),
        Route("GET", f"{docs.ASSETS_PATH}/{{file}}", docs.asset, "API docs asset", "docs",
              response_class=Response, in_schema=False),
    ]  # fmt: skip
    # The fast lane refuses a body over the limit on every route that takes one, with 413.
    return tuple(
        route if route.method == "GET" else
        replace(route, responses={**route.responses, **error_responses(413, oip=route.tag == "oip")})
        for route in table
    )  # fmt: skip


def lane_paths(table: Iterable[Route], models: Iterable[str]) -> dict[str, tuple[Lane, str | None]]:
    """The exact paths the fast lane answers: `path -> (lane, model name or None for the
    default model)`, each lane route once per served model."""
    names = list(models)
    paths: dict[str, tuple[Lane, str | None]] = {}
    for route in table:
        if route.lane is None or _VERSION in route.path:
            continue
        if _PARAM.search(route.path) is None:
            paths[route.path] = (route.lane, None)
            continue
        for name in names:
            paths[_PARAM.sub(name, route.path)] = (route.lane, name)
    return paths


def lane_templates(
    table: Iterable[Route], models: Iterable[str]
) -> list[tuple[str, str, Lane, str]]:
    """The lane routes with a `{version}` segment, as `(prefix, suffix, lane, model name)` per
    served model: a path that starts with the prefix and ends with the suffix, with one segment
    between them, is that route for the version the segment names."""
    names = list(models)
    out: list[tuple[str, str, Lane, str]] = []
    for route in table:
        if route.lane is None or _VERSION not in route.path:
            continue
        before, _, after = route.path.partition(_VERSION)
        for name in names:
            out.append((_PARAM.sub(name, before), after, route.lane, name))
    return out


def path_pattern(path: str) -> re.Pattern[str]:
    """A route path as a regular expression matching the concrete paths it serves."""
    return re.compile("".join(
        "[^/]+" if _PARAM.fullmatch(part) else re.escape(part)
        for part in re.split(r"(\{[^}]+\})", path)
    ) + "$")  # fmt: skip
