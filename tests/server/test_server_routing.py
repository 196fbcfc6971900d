"""The route table: FastAPI, the OpenAPI document, the fast lane and `Allow` all follow it, and the
model routes never enter FastAPI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from serverkit import OBS_DIM, InProcessServer, seeded, state, torch_script

from ckptserve import publish
from ckptserve.server import ModelSpec, Settings, create_app
from ckptserve.server.fastlane import FastLane
from ckptserve.server.routing import lane_paths, lane_templates, route_table

MakeServer = Callable[..., InProcessServer]

INFER = {"inputs": [{"name": "state", "shape": [1, OBS_DIM], "datatype": "FP32", "data": [0] * 4}]}


def test_lane_paths_are_the_lane_routes_once_per_served_model() -> None:
    """The default model's route once, every other lane route once per name; nothing else."""
    paths = lane_paths(route_table("/api"), ["actor", "critic"])
    assert paths == {
        "/api/predict": ("rl", None),
        "/api/actor/predict": ("rl", "actor"),
        "/api/critic/predict": ("rl", "critic"),
        "/v2/models/actor/infer": ("oip", "actor"),
        "/v2/models/critic/infer": ("oip", "critic"),
    }


def test_versioned_lane_routes_are_matched_by_prefix_and_suffix_per_served_model() -> None:
    """OIP's version path is the one lane route with a segment of its own: one template per
    served model, never an exact path."""
    table = route_table("/api")
    assert lane_templates(table, ["actor", "critic"]) == [
        ("/v2/models/actor/versions/", "/infer", "oip", "actor"),
        ("/v2/models/critic/versions/", "/infer", "oip", "critic"),
    ]
    assert not any("versions" in path for path in lane_paths(table, ["actor"]))


def test_fastapi_and_openapi_serve_exactly_the_table(tmp_path: Path) -> None:
    """Every entry is one FastAPI route and one documented operation, and nothing more is
    documented; the document names each route's own statuses."""
    app = create_app(Settings(models=[ModelSpec(name="actor", path=str(tmp_path))], prefix="/x"))
    table = route_table("/x")
    assert isinstance(app, FastLane) and isinstance(app.app, FastAPI)
    registered = sorted(
        (route.path, method)
        for route in app.app.routes
        if isinstance(route, APIRoute)
        for method in route.methods
    )
    assert registered == sorted((route.path, route.method) for route in table)
    schema = app.app.openapi()
    documented = sorted((path, m.upper()) for path, ops in schema["paths"].items() for m in ops)
    assert documented == sorted((r.path, r.method) for r in table if r.in_schema)
    for route in table:
        if not route.in_schema:
            continue
        responses = schema["paths"][route.path][route.method.lower()]["responses"]
        assert {str(code) for code in route.responses} <= set(responses), route.path


def test_model_routes_never_enter_fastapi(
    tmp_path: Path, make_server: MakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each lane path of each served model is answered by the fast lane alone; other requests
    go through FastAPI."""
    a, b = tmp_path / "a", tmp_path / "b"
    publish(torch_script(seeded(1)), a)
    publish(torch_script(seeded(2)), b)
    server = make_server(a, b)
    entered: list[str] = []
    real = FastAPI.__call__

    async def counting(self: FastAPI, scope: Any, receive: Any, send: Any) -> None:
        entered.append(scope.get("path", scope["type"]))
        await real(self, scope, receive, send)

    monkeypatch.setattr(FastAPI, "__call__", counting)
    for path, (lane, _) in lane_paths(route_table("/rl"), ["actor", "m1"]).items():
        r = server.client.post(path, json=INFER if lane == "oip" else state())
        assert r.status_code == 200 and r.headers["x-model-version"], (path, r.text)
    sha = server.runtime.models["m1"].registry.version.sha256
    r = server.client.post(f"/v2/models/m1/versions/{sha}/infer", json=INFER)
    assert r.status_code == 200 and r.json()["parameters"]["sha256"] == sha, r.text
    assert entered == []
    assert server.client.get("/healthz").status_code == 200
    assert server.client.post("/rl/nobody/predict", json=state()).status_code == 404
    assert entered == ["/healthz", "/rl/nobody/predict"]


def test_create_app_keeps_the_runtime_on_its_state(tmp_path: Path) -> None:
    """`create_app(...).state.runtime`, as before the fast lane moved in front of FastAPI."""
    app = create_app(Settings(models=[ModelSpec(name="actor", path=str(tmp_path))]))
    assert app.state.runtime is app.runtime is app.app.state.runtime


def test_every_route_that_takes_a_body_documents_and_answers_413(
    model_dir: Path, make_server: MakeServer
) -> None:
    """The fast lane refuses an over-limit body on every route but GET, before the route runs
    (admin routes included, without a token): each of them lists 413."""
    server = make_server(model_dir, max_body_bytes=64)
    schema = server.client.get("/openapi.json").json()
    for route in route_table("/rl"):
        if route.method == "GET":
            continue
        where = route.path.replace("{model}", "actor").replace("{name}", "actor")
        r = server.client.request(route.method, where, content=b"x" * 65)
        assert r.status_code == 413, (route.method, where, r.status_code, r.text)
        assert "413" in schema["paths"][route.path][route.method.lower()]["responses"], route.path
