"""The OpenAPI document, made exact where it can be: the default model's observation size and
bounds go into the `predict` body schema once a model is live, and a 405 lists every method the
path supports in `Allow`, as documented (POST and DELETE `/pin` are two routes on one path). The
model routes and each path's methods come from the route table."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .routing import Route, path_pattern
from .schemas import number_schema
from .state import Runtime

__all__ = ["install"]


def _state_schema(runtime: Runtime, name: str | None) -> dict[str, Any] | None:
    handle = runtime.models.get(name or "")
    live = handle.registry.current if handle is not None else None
    if live is None or live.expect.obs_dim is None:
        return None
    n = live.expect.obs_dim
    bounds = live.expect.obs_bounds
    if bounds is None:
        return {"type": "array", "items": number_schema(None, None), "minItems": n, "maxItems": n}
    items = [number_schema(*bounds.at(i)) for i in range(n)]
    return {"type": "array", "prefixItems": items, "items": False, "minItems": n, "maxItems": n}


def _names(runtime: Runtime) -> list[str]:
    return [spec.name for spec in runtime.settings.models]


def _with_model_names(schema: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Path parameters naming a model list the served names (others get 404)."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for param in operation.get("parameters", ()):
                if param.get("in") == "path" and param.get("name") in ("model", "name"):
                    param["schema"] = {**param.get("schema", {}), "enum": names}
    return schema


def install(app: FastAPI, runtime: Runtime, table: Sequence[Route]) -> None:
    """Serve the live-shaped OpenAPI document and complete `Allow` on 405 responses, both from
    the route table."""
    generate: Callable[[], dict[str, Any]] = app.openapi
    base: dict[str, Any] | None = None
    predicts = [route.path for route in table if route.lane == "rl"]
    path = next(p for p in predicts if "{" not in p)  # the default model's
    named = next(p for p in predicts if "{" in p)
    infer = next(route.path for route in table if route.lane == "oip")

    def openapi() -> dict[str, Any]:
        nonlocal base
        if base is None:
            base = _with_model_names(generate(), _names(runtime))
        shapes = [_state_schema(runtime, name) for name in _names(runtime)]
        if shapes[0] is None:
            return base
        schema = copy.deepcopy(base)
        paths = [path]
        if all(shape == shapes[0] for shape in shapes):  # then the named route is exact too
            paths.append(named)
        for where in paths:
            body = schema["paths"][where]["post"]["requestBody"]["content"]["application/json"]
            one, batch = body["schema"]["oneOf"]
            one["properties"]["state"] = shapes[0]
            batch["properties"]["states"]["items"] = shapes[0]
            batch["properties"]["states"]["maxItems"] = runtime.settings.max_batch
        if len(paths) == 2:
            body = schema["paths"][infer]["post"]["requestBody"]["content"]["application/json"]
            shape = body["schema"]["properties"]["inputs"]["items"]["properties"]["shape"]
            batch_dim = {"type": "integer", "minimum": 1, "maximum": runtime.settings.max_batch}
            obs = {"type": "integer", "enum": [shapes[0]["minItems"]]}
            shape.clear()  # [batch, obs_dim], or [obs_dim] for one state
            shape.update(type="array", anyOf=[
                {"prefixItems": [batch_dim, obs], "minItems": 2, "items": False},
                {"prefixItems": [obs], "minItems": 1, "items": False},
            ])  # fmt: skip
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

    methods: dict[str, set[str]] = {}
    for route in table:
        methods.setdefault(route.path, set()).add(route.method)
    templates = [(path_pattern(path), allowed) for path, allowed in methods.items()]

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code != 405:
            return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)
        allowed: set[str] = set()
        for pattern, on_path in templates:
            if pattern.match(request.url.path):
                allowed |= on_path
        return JSONResponse(
            {"detail": "Method Not Allowed"}, 405, headers={"allow": ", ".join(sorted(allowed))}
        )

    app.add_exception_handler(StarletteHTTPException, method_not_allowed)
