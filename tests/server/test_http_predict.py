"""POST /rl/predict over real HTTP against `ckptserve serve`: the original API, hot reloads seen
by clients, and every kind of bad input answered with a clear 4xx."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serverkit import OBS_DIM, ServerProcess, seeded, state, torch_script

from ckptserve import publish

pytestmark = pytest.mark.slow


@pytest.fixture
def server(shared_server: tuple[ServerProcess, Path]) -> ServerProcess:
    return shared_server[0]


def test_predict_returns_action_and_version_fields(server: ServerProcess) -> None:
    """The original response fields (`model_version` is the mtime) plus checkpoint, sha256,
    `version` (the tag that X-Model-Version and OIP's `model_version` carry), replica and
    request_id, and the X-Model-Version, X-Replica and X-Request-Id headers."""
    r = server.client.post("/rl/predict", json=state())
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {
        "action", "model_version", "version", "load_count", "checkpoint", "sha256", "replica",
        "request_id",
    }  # fmt: skip
    assert r.headers["x-request-id"] == body["request_id"]
    assert body["request_id"].startswith(body["sha256"][:12] + ".")
    assert r.headers["x-replica"] == body["replica"] == f"{socket.gethostname()}:{server.proc.pid}"
    assert len(body["action"]) == 1 and isinstance(body["action"][0], float)
    assert isinstance(body["model_version"], float) and body["load_count"] >= 1
    assert body["version"] == f"{body['checkpoint']}@{body['sha256'][:12]}"
    assert r.headers["x-model-version"] == body["version"]
    oip = {"inputs": [{"name": "state", "shape": [1, OBS_DIM], "datatype": "FP32",
                       "data": state()["state"]}]}  # fmt: skip
    assert (
        server.client.post("/v2/models/actor/infer", json=oip).json()["model_version"]
        == (body["version"])
    )


def test_batch_of_states_returns_actions(server: ServerProcess) -> None:
    r = server.client.post("/rl/predict", json={"states": [[0.1] * OBS_DIM, [0.2] * OBS_DIM]})
    assert r.status_code == 200, r.text
    assert len(r.json()["actions"]) == 2 and "x-model-version" in r.headers


def test_named_model_route_serves_the_default_model(server: ServerProcess) -> None:
    r = server.client.post("/rl/actor/predict", json=state())
    assert r.status_code == 200 and r.json()["sha256"]


def test_publish_is_served_on_the_next_request(shared_server: tuple[ServerProcess, Path]) -> None:
    """publish() a new checkpoint: the very next response carries its sha256 (sync swap)."""
    server, directory = shared_server
    before = server.client.post("/rl/predict", json=state()).json()
    path = publish(torch_script(seeded(7)), directory)
    manifest = json.loads((directory / "actor_latest.json").read_text())
    after = server.client.post("/rl/predict", json=state())
    assert after.status_code == 200
    assert after.json()["sha256"] == manifest["sha256"] != before["sha256"]
    assert after.json()["checkpoint"] == path.name
    assert after.json()["load_count"] == before["load_count"] + 1


BAD_BODIES = [
    pytest.param(b'{"state": [0.1, 0.2]}', 422, "expected 4", id="too-short"),
    pytest.param(json.dumps(state(n=OBS_DIM + 1)).encode(), 422, "expected 4", id="too-long"),
    pytest.param(b'{"state": [NaN, 0, 0, 0]}', 422, "NaN", id="nan-literal"),
    pytest.param(b'{"state": [Infinity, 0, 0, 0]}', 422, "Infinity", id="infinity-literal"),
    pytest.param(b'{"state": [-Infinity, 0, 0, 0]}', 422, "Infinity", id="minus-infinity"),
    pytest.param(b'{"state": [1e400, 0, 0, 0]}', 422, "state[0]", id="overflow-1e400"),
    pytest.param(b'{"state": [1e39, 0, 0, 0]}', 422, "float32", id="float32-overflow"),
    pytest.param(b'{"state": [false, 0, 0, 0]}', 422, "boolean", id="boolean"),
    pytest.param(b'{"state": ["1", 0, 0, 0]}', 422, "state[0]", id="string"),
    pytest.param(b'{"state": [null, 0, 0, 0]}', 422, "null", id="null"),
    pytest.param(b'{"state": [[0, 0, 0, 0]]}', 422, "expected 4", id="nested"),
    pytest.param(b'{"state": "0,0,0,0"}', 422, "list of numbers", id="not-a-list"),
    pytest.param(b'{"stat": [0, 0, 0, 0]}', 422, '"state"', id="missing-field"),
    pytest.param(b"[0, 0, 0, 0]", 422, "JSON object", id="not-an-object"),
    pytest.param(b'{"states": []}', 422, "empty batch", id="empty-batch"),
    pytest.param(b'{"state": [0, 0, 0, 0], "x": 1}', 422, "unknown field", id="extra-field"),
    pytest.param(b'{"state": [0, 0, 0, 0], "states": []}', 422, "not both", id="both-fields"),
    pytest.param(b'{"states": [[0, 0, 0, 0], [0, 0]]}', 422, "states[1]", id="ragged-batch"),
    pytest.param(b'{"states": [[0, 0, 0, true]]}', 422, "states[0][3]", id="batch-boolean"),
    pytest.param(b'{"state": [0, 0, 0', 400, "malformed JSON", id="truncated-json"),
    pytest.param(b"", 400, "malformed JSON", id="empty-body"),
    pytest.param(b"\xff\xfe", 400, "malformed JSON", id="not-utf8"),
]


@pytest.mark.parametrize(("body", "status", "says"), BAD_BODIES)
def test_bad_input_is_a_clear_4xx(
    server: ServerProcess, body: bytes, status: int, says: str
) -> None:
    """Every malformed or invalid body gets its 4xx with a message saying what is wrong."""
    r = server.client.post(
        "/rl/predict", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == status, r.text
    assert says in r.json()["detail"]
    assert server.client.get("/healthz").status_code == 200


def test_wrong_length_says_expected_and_got(server: ServerProcess) -> None:
    """The original sixth test, made real: shape validation through an HTTP client."""
    r = server.client.post("/rl/predict", json={"state": [0.0] * 3})
    assert r.status_code == 422
    assert r.json()["detail"] == "state has 3 values, expected 4"
    ok = server.client.post("/rl/predict", json={"state": [0.0] * 4})
    assert ok.status_code == 200 and len(ok.json()["action"]) == 1


def test_body_over_the_limit_is_413(server: ServerProcess) -> None:
    big = b'{"state": [' + b"0," * 600_000 + b"0]}"
    r = server.client.post("/rl/predict", content=big)
    assert r.status_code == 413


def test_chunked_body_is_cut_off_at_the_limit(server: ServerProcess) -> None:
    """Without a Content-Length the limit is enforced while the body streams in."""
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        for _ in range(50 * 16):  # up to 50 MiB in 64 KiB chunks
            sent += 65536
            yield b" " * 65536

    try:
        r = server.client.post("/rl/predict", content=chunks())
        assert r.status_code == 413
    except httpx.TransportError:
        pass  # the server answered 413 and closed while we were still sending
    assert sent < 20 * 1024 * 1024
    assert server.client.get("/healthz").status_code == 200


def test_unknown_model_is_404_on_every_route(server: ServerProcess) -> None:
    c = server.client
    assert c.post("/rl/nope/predict", json=state()).status_code == 404
    assert c.get("/rl/nope/status").status_code == 404
    assert c.get("/rl/nope/versions").status_code == 404
    assert c.post("/v2/models/nope/infer", json={"inputs": []}).status_code == 404
    assert c.get("/v2/models/nope").status_code == 404
    assert c.get("/v2/models/nope/ready").status_code == 404


def test_status_and_versions(shared_server: tuple[ServerProcess, Path]) -> None:
    server, _directory = shared_server
    status = server.client.get("/rl/status").json()
    assert status["loaded"] is True and status["version"]["sha256"]
    assert {"model_path", "load_count", "last_mtime", "last_error", "history", "pinned"} <= set(
        status
    )
    versions = server.client.get("/rl/versions").json()
    names = [v["checkpoint"] for v in versions["versions"]]
    assert names == sorted(names, reverse=True) and names
    assert sum(v["live"] for v in versions["versions"]) == 1
    assert versions["live"] == status["version"]["checkpoint"]


def test_force_reload_is_an_admin_action(server: ServerProcess) -> None:
    r = server.client.post("/rl/predict?force_reload=true", json=state())
    assert r.status_code == 401
    assert server.client.post("/rl/predict?force_reload=false", json=state()).status_code == 200
