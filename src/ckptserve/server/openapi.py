"""The OpenAPI document, made exact where it can be: the default model's observation size and
bounds (or its named inputs) go into the `predict` body schema once a model is live, the resident versions into every
version a request may name (`"version"`, `X-Model-Version`, OIP's version path), and a 405 lists every method the
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


def _named_inputs(runtime: Runtime, name: str | None) -> tuple[tuple[str, int], ...] | None:
    handle = runtime.models.get(name or "")
    live = handle.registry.current if handle is not None else None
    return live.expect.inputs if live is not None else None


def _with_named_inputs(schema: dict[str, Any], predict: str, infer: str | None,
                       inputs: tuple[tuple[str, int], ...], max_batch: int) -> None:  # fmt: skip
    """The predict body takes exactly these inputs (and OIP's infer, when `infer` is given)."""
    body = schema["paths"][predict]["post"]["requestBody"]["content"]["application/json"]
    named = body["schema"]["oneOf"][2]
    properties = {}
    for name, size in inputs:
        row = {"type": "array", "items": number_schema(None, None), "minItems": size,
               "maxItems": size}  # fmt: skip
        rows = {"type": "array", "items": row, "minItems": 1, "maxItems": max_batch}
        properties[name] = {"oneOf": [row, rows]}
    named["properties"]["inputs"] = {"type": "object", "required": [n for n, _ in inputs],
                                     "additionalProperties": False, "properties": properties}  # fmt: skip
    body["schema"]["oneOf"] = [named]
    if infer is None:
        return
    body = schema["paths"][infer]["post"]["requestBody"]["content"]["application/json"]
    spec = body["schema"]["properties"]["inputs"]
    spec["minItems"] = spec["maxItems"] = len(inputs)
    spec["items"]["properties"]["name"]["enum"] = [n for n, _ in inputs]


def _resident(runtime: Runtime, name: str | None) -> list[str]:
    """What names a resident version of model `name`: each one's tag and sha256."""
    handle = runtime.models.get(name or "")
    if handle is None:
        return []
    versions = handle.registry.resident.versions()
    return [ref for v in reversed(versions) for ref in (v.version.tag, v.version.sha256)]


def _with_versions(schema: dict[str, Any], paths: list[str], refs: list[str]) -> None:
    """Every version reference on `paths` (body field, header, path segment) lists `refs`."""
    for where in paths:
        operation = schema["paths"][where]["post"]
        for param in operation.get("parameters", ()):
            if param.get("name") in ("version", "x-model-version"):
                param["schema"] = {**param.get("schema", {}), "enum": refs}
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        for variant in body.get("oneOf", ()):
            if "version" in variant.get("properties", {}):
                variant["properties"]["version"] = {
                    **variant["properties"]["version"],
                    "enum": refs,
                }


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
    versioned = [route.path for route in table if route.lane is not None and "{" in route.path]

    def openapi() -> dict[str, Any]:
        nonlocal base
        if base is None:
            base = _with_model_names(generate(), _names(runtime))
        names = _names(runtime)
        if not names:
            return base
        shapes = [_state_schema(runtime, name) for name in names]
        refs = _resident(runtime, names[0])
        inputs = _named_inputs(runtime, names[0])
        if shapes[0] is None and not refs and inputs is None:
            return base
        schema = copy.deepcopy(base)
        if inputs is not None:  # the default model takes named inputs: only they are accepted
            _with_named_inputs(schema, path, infer if len(names) == 1 else None, inputs,
                               runtime.settings.max_batch)  # fmt: skip
        if refs:  # a named model's versions are exact when it is the only model
            _with_versions(schema, [path, *(versioned if len(names) == 1 else ())], refs)
        if shapes[0] is None:
            return schema
        paths = [path]
        if all(shape == shapes[0] for shape in shapes):  # then the named route is exact too
            paths.append(named)
        for where in paths:
            body = schema["paths"][where]["post"]["requestBody"]["content"]["application/json"]
            del body["schema"]["oneOf"][2:]  # a policy's: no named inputs
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
