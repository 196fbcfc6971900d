"""`create_app` served in this process: admin disabled, the OpenAPI document,
limits and bounds, several models, loads off the event loop, one implementation of predict
whether a request takes the fast lane or FastAPI's route, and routes built before the first
request."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import fastapi.routing
import httpx
import pytest
from serverkit import (
    OBS_DIM,
    SLOW_LOAD_SECONDS,
    InProcessServer,
    seeded,
    state,
    torch_script,
    wait_for,
)

from ckptserve import publish
from ckptserve.server.fastlane import FastLane

MakeServer = Callable[..., InProcessServer]


def test_admin_without_configured_token_is_403(model_dir: Path, make_server: MakeServer) -> None:
    server = make_server(model_dir)
    r = server.client.post("/rl/reload", headers={"authorization": "Bearer anything"})
    assert r.status_code == 403 and "CKPTSERVE_ADMIN_TOKEN" in r.json()["detail"]
    r = server.client.post("/rl/predict?force_reload=true", json=state())
    assert r.status_code == 403


def test_openapi_documents_every_status(model_dir: Path, make_server: MakeServer) -> None:
    schema = make_server(model_dir).client.get("/openapi.json").json()
    predict = schema["paths"]["/rl/predict"]["post"]
    assert {"200", "400", "404", "413", "422", "503"} <= set(predict["responses"])
    assert "requestBody" in predict
    infer = schema["paths"]["/v2/models/{name}/infer"]["post"]
    assert {"200", "400", "404", "413", "422", "503"} <= set(infer["responses"])
    pin = schema["paths"]["/rl/pin"]["post"]
    assert {"400", "401", "403", "404", "422"} <= set(pin["responses"])


def test_openapi_follows_the_live_model(model_dir: Path, make_server: MakeServer) -> None:
    """Once a model is live, the predict schema says how many values a state has."""
    server = make_server(model_dir, obs_low=-5.0, obs_high=5.0)
    schema = server.client.get("/openapi.json").json()
    body = schema["paths"]["/rl/predict"]["post"]["requestBody"]["content"]["application/json"]
    one = body["schema"]["oneOf"][0]["properties"]["state"]
    assert one["minItems"] == one["maxItems"] == OBS_DIM
    assert one["prefixItems"][0]["minimum"] == -5.0
    names = schema["paths"]["/rl/{model}/predict"]["post"]["parameters"]
    assert any(p.get("schema", {}).get("enum") == ["actor"] for p in names)


def test_405_lists_every_method_of_the_path(model_dir: Path, make_server: MakeServer) -> None:
    r = make_server(model_dir).client.put("/rl/pin")
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, POST"


def test_body_limit_is_configurable(model_dir: Path, make_server: MakeServer) -> None:
    server = make_server(model_dir, max_body_bytes=64)
    assert server.client.post("/rl/predict", json=state()).status_code == 200
    r = server.client.post("/rl/predict", json={"state": [0.123456789] * 20})
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    r = server.client.post("/rl/pin", content=b"x" * 100)
    assert r.status_code == 413


def test_out_of_bounds_state_names_the_index(model_dir: Path, make_server: MakeServer) -> None:
    server = make_server(model_dir, obs_low=-5.0, obs_high=[5.0, 5.0, 5.0, 1.0])
    assert server.client.post("/rl/predict", json=state(0.5)).status_code == 200
    r = server.client.post("/rl/predict", json={"state": [0.0, 1e30, 0.0, 0.0]})
    assert r.status_code == 422 and "state[1]" in r.json()["detail"]
    r = server.client.post("/rl/predict", json={"states": [[0.0] * 4, [0.0, 0.0, 0.0, 2.0]]})
    assert r.status_code == 422 and "states[1][3]" in r.json()["detail"]
    r = server.client.post(
        "/v2/models/actor/infer",
        json={
            "inputs": [{"name": "state", "shape": [1, 4], "datatype": "FP32", "data": [9, 0, 0, 0]}]
        },
    )
    assert r.status_code == 422 and "[0][0]" in r.json()["error"]


def test_several_models(tmp_path: Path, make_server: MakeServer) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    publish(torch_script(seeded(1)), a)
    publish(torch_script(seeded(2)), b, name="critic")
    server = make_server(a, b)
    default = server.client.post("/rl/predict", json=state()).json()
    m1 = server.client.post("/rl/m1/predict", json=state()).json()
    assert default["sha256"] != m1["sha256"]
    assert m1["checkpoint"].startswith("critic_")
    assert server.client.get("/rl/m1/versions").json()["versions"][0]["live"] is True
    assert server.client.get("/v2/models/m1/ready").status_code == 200


def test_not_ready_reason_and_503(tmp_path: Path, make_server: MakeServer) -> None:
    server = make_server(tmp_path / "empty", ready=False, obs_dim=OBS_DIM)
    r = server.client.get("/readyz")
    assert r.status_code == 503 and "actor" in r.json()["models"]
    r = server.client.post("/rl/predict", json=state())
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert server.client.get("/v2/health/ready").status_code == 503
    assert server.client.get("/rl/status").status_code == 200


def test_directory_that_does_not_exist_yet(tmp_path: Path, make_server: MakeServer) -> None:
    """Serving a model directory before the trainer created it: ready after the first publish."""
    directory = tmp_path / "not-yet"  # only a missing last component is created
    server = make_server(directory, ready=False, obs_dim=OBS_DIM)
    assert server.client.get("/readyz").status_code == 503
    publish(torch_script(seeded(4)), directory)
    wait_for(lambda: server.client.get("/readyz").status_code == 200, 20, "the first publish")
    assert server.client.post("/rl/predict", json=state()).status_code == 200


@pytest.mark.parametrize("swap", ["sync", "background"])
def test_slow_load_never_stalls_the_event_loop(
    tmp_path: Path, make_server: MakeServer, swap: str
) -> None:
    """A reload that takes a second runs off the loop: /healthz answers fast meanwhile, and with
    background swap the old model keeps answering predict too."""
    directory = tmp_path / "models"
    publish(seeded(1), directory, format="safetensors")
    server = make_server(directory, swap=swap, factory="serverkit:slow_tiny_actor")
    old = server.client.post("/rl/predict", json=state()).json()["sha256"]
    publish(seeded(2), directory, format="safetensors")
    new = json.loads((directory / "actor_latest.json").read_text())["sha256"]
    results: dict[str, Any] = {}

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:

            async def predict() -> None:
                started = time.perf_counter()
                r = await c.post("/rl/predict", json=state())
                results["predict"] = (r.json()["sha256"], time.perf_counter() - started)

            async with anyio.create_task_group() as tg:
                tg.start_soon(predict)
                await anyio.sleep(0.2)  # the load is under way
                worst = 0.0
                for _ in range(5):
                    started = time.perf_counter()
                    assert (await c.get("/healthz")).status_code == 200
                    worst = max(worst, time.perf_counter() - started)
                    await anyio.sleep(0.05)
                results["healthz"] = worst

    anyio.run(scenario)
    assert results["healthz"] < 0.25
    sha, seconds = results["predict"]
    if swap == "background":
        assert sha == old and seconds < SLOW_LOAD_SECONDS / 2
        wait_for(
            lambda: server.client.post("/rl/predict", json=state()).json()["sha256"] == new,
            10, "the background swap",
        )  # fmt: skip
    else:
        assert sha == new and seconds >= SLOW_LOAD_SECONDS * 0.5


def test_hot_path_never_hops_to_a_thread(
    model_dir: Path, make_server: MakeServer, thread_hops: list[Any]
) -> None:
    """With a live, unchanged model, predict runs on the event loop: no thread-pool hop."""
    server = make_server(model_dir)
    assert server.client.post("/rl/predict", json=state()).status_code == 200
    hops = thread_hops
    hops.clear()  # start-up's first load went through a thread
    for _ in range(20):
        assert server.client.post("/rl/predict", json=state()).status_code == 200
    assert hops == []
    publish(torch_script(seeded(9)), model_dir)  # a new checkpoint: one load, in a thread
    assert server.client.post("/rl/predict", json=state()).status_code == 200
    assert len(hops) >= 1


def _fastapi_only(app: Any) -> Any:
    """The app behind the fast lane: FastAPI's routing, exception handlers and routes."""
    assert isinstance(app, FastLane)
    return app.app


BODIES = [
    json.dumps(state()).encode(),
    json.dumps({"states": [[0.1] * OBS_DIM] * 3}).encode(),
    b'{"state": [0.1, 0.2]}',
    b'{"state": [NaN, 0, 0, 0]}',
    b'{"state": [true, 0, 0, 0]}',
    b"{not json",
    b'{"states": []}',
]


def _without_request_id(reply: httpx.Response, runtime: Any) -> Any:
    """The reply's JSON without its request id (unique per answer), after checking that the id
    is one this server issued, for the version that answered, and is also in `X-Request-Id`."""
    doc = reply.json()
    holder = doc.get("parameters", doc)
    if "request_id" not in holder:
        return doc
    request_id = holder.pop("request_id")
    assert reply.headers["x-request-id"] == request_id
    assert runtime.ids.read(request_id).version == holder["sha256"][:12]
    return doc


def test_fast_lane_and_fastapi_route_answer_alike(model_dir: Path, make_server: MakeServer) -> None:
    """One implementation: the fast lane and the declared FastAPI route give the same replies
    (each answer with a request id of its own)."""
    server = make_server(model_dir)
    direct = _fastapi_only(server.app)
    runtime = server.runtime

    async def compare() -> None:
        transport = httpx.ASGITransport(app=direct)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as inner:
            for body in BODIES:
                fast = server.client.post("/rl/predict", content=body)
                routed = await inner.post("/rl/predict", content=body)
                assert routed.status_code == fast.status_code, body
                assert _without_request_id(routed, runtime) == _without_request_id(fast, runtime)
                assert routed.headers.get("x-model-version") == fast.headers.get("x-model-version")
            infer = {
                "inputs": [{"name": "state", "shape": [1, 4], "datatype": "FP32", "data": [0] * 4}]
            }
            fast = server.client.post("/v2/models/actor/infer", json=infer)
            routed = await inner.post("/v2/models/actor/infer", json=infer)
            assert fast.status_code == routed.status_code == 200
            assert _without_request_id(fast, runtime) == _without_request_id(routed, runtime)

    anyio.run(compare)


def test_routes_are_built_before_the_first_request(
    model_dir: Path, make_server: MakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lifespan warms FastAPI's routes up: no first request builds one on the event loop."""
    server = make_server(model_dir, ready=False)
    wait_for(lambda: not server.runtime.not_ready(), 20, "readiness, without a request")
    built: list[Any] = []
    real = fastapi.routing.get_dependant

    def counting(*args: Any, **kwargs: Any) -> Any:
        built.append(kwargs.get("call"))
        return real(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "get_dependant", counting)
    for path in ("/rl/status", "/rl/versions", "/metrics", "/v2/health/ready", "/v2/models/actor"):
        assert server.client.get(path).status_code == 200, path
    assert built == []
