"""Bad input: schemathesis against the server's own OpenAPI schema (every check), and hypothesis
properties of request parsing: never a 5xx, the server still answers afterwards, and every status
the server returns is documented in the schema."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import positive_data_acceptance
from serverkit import ADMIN_TOKEN, OBS_DIM, InProcessServer, seeded, torch_script, wait_for

from ckptserve import publish
from ckptserve.server import ModelSpec, Settings, create_app


def _app(directory: Path, **options: Any) -> Any:
    return create_app(Settings(models=[ModelSpec(name="actor", path=str(directory))],
                               admin_token=ADMIN_TOKEN, **options))  # fmt: skip


# schemathesis loads the schema when the module is collected (its pytest fixture loader does not
# work with pytest 9), so the served directory is made here and removed when the process exits.
_ROOT = Path(tempfile.mkdtemp(prefix="ckptserve-input-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)
publish(torch_script(seeded(0)), _ROOT / "models")
_APP = _app(_ROOT / "models")
# The first load starts the app's lifespan; the schema follows the live model (state size,
# bounds), so it is loaded again once the model is live.
schemathesis.openapi.from_asgi("/openapi.json", _APP)
wait_for(lambda: _APP.state.runtime.models["actor"].registry.current is not None, 30, "the model")
schema = schemathesis.openapi.from_asgi("/openapi.json", _APP)


def _wait_ready() -> None:
    """schemathesis ends the app's lifespan after each test and starts it again on the next
    request: wait until the model is live again, so a 503 is never an expected answer."""
    from schemathesis.python import asgi

    with asgi.get_client(_APP) as client:
        wait_for(lambda: client.get("http://testserver/readyz").status_code == 200, 30, "ready")


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_openapi_conformance(case: Any) -> None:
    """Every operation, schemathesis' generated and negative cases, every check. One exception:
    an OIP request's `data` must hold shape[0] x shape[1] values, a constraint across fields that
    JSON Schema cannot state, so schema-valid infer requests may get 422 (positive data check)."""
    _wait_ready()
    excluded = [positive_data_acceptance] if case.path.endswith("/infer") else []
    case.call_and_validate(excluded_checks=excluded)


# ---- hypothesis: request parsing over real HTTP ---------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=30,
)
NUMBER = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.booleans(), st.none(),
    st.text(max_size=4), st.just(1e39), st.just(-3.5e38), st.just(2**70),
)  # fmt: skip
STATE = st.lists(NUMBER, min_size=0, max_size=8)
BODY = st.one_of(
    st.fixed_dictionaries({"state": STATE}),
    st.fixed_dictionaries({"states": st.lists(STATE, max_size=4)}),
    st.dictionaries(st.sampled_from(["state", "states", "x", ""]), JSON, max_size=3),
    JSON,
)
RAW = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"", b"{", b'{"state": [NaN, 0, 0, 0]}', b'{"state": [Infinity,0,0,0]}',
                     b'{"state": [1e400, 0, 0, 0]}', b"[" * 5000, b'{"state": [false]}',
                     b'{"state": [0,0,0,0]}garbage', b"\xff\xfe", b'{"state": "0000"}']),
)  # fmt: skip


def _documented_statuses(spec: dict[str, Any], path: str) -> set[int]:
    template = "/v2/models/{name}/infer" if path.startswith("/v2/") else path
    responses = spec["paths"][template]["post"]["responses"]
    return {int(code) for code in responses if code.isdigit()}


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    directory = tmp_path_factory.mktemp("parse") / "models"
    publish(torch_script(seeded(0)), directory)
    server = InProcessServer(_app(directory, max_body_bytes=4096))
    try:
        wait_for(lambda: server.client.get("/readyz").status_code == 200, 30, "readiness")
        yield server
    finally:
        server.stop()


def _check(server: InProcessServer, path: str, content: bytes, allowed: set[int]) -> int:
    r = server.client.post(path, content=content, headers={"content-type": "application/json"})
    assert r.status_code < 500, (content[:200], r.status_code, r.text[:300])
    assert r.status_code in allowed, (content[:200], r.status_code, sorted(allowed))
    if r.status_code == 200:
        assert len(r.json()["sha256"]) == 64
    else:
        assert "detail" in r.json() or "error" in r.json()
    return r.status_code


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=BODY)
def test_predict_parsing_never_fails_the_server(live_server: InProcessServer, body: Any) -> None:
    """Any JSON body: a 200 or a documented 4xx, never a 5xx."""
    spec = live_server.client.get("/openapi.json").json()
    _check(
        live_server,
        "/rl/predict",
        json.dumps(body).encode(),
        _documented_statuses(spec, "/rl/predict"),
    )


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=RAW, path=st.sampled_from(["/rl/predict", "/v2/models/actor/infer"]))
def test_raw_bodies_never_fail_the_server(
    live_server: InProcessServer, raw: bytes, path: str
) -> None:
    """Any bytes, including malformed JSON and non-standard literals: a documented 4xx or 200."""
    spec = live_server.client.get("/openapi.json").json()
    _check(live_server, path, raw, _documented_statuses(spec, path))


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'{"state": [false, 0, 0, 0]}', 422),
        (b'{"state": [false]}', 422),
        (b'{"state": [0, 0, 0, true]}', 422),
        (b"{not json", 400),
        (b'{"state": [NaN, 0, 0, 0]}', 422),
        (b'{"state": [0, 0, 0, 0]}', 200),
    ],
)
def test_known_traps(live_server: InProcessServer, body: bytes, status: int) -> None:
    """Booleans are not numbers; malformed JSON is a 400; NaN literals a 422."""
    assert _check(live_server, "/rl/predict", body, {status}) == status


def test_every_status_the_server_returns_is_documented(live_server: InProcessServer) -> None:
    """400, 413, 422 and 503 are in the schema of both model routes, and the server answers
    each of them (503 from a model whose checkpoint does not exist yet)."""
    spec = live_server.client.get("/openapi.json").json()
    for path in ("/rl/predict", "/v2/models/actor/infer"):
        assert {400, 413, 422, 503} <= _documented_statuses(spec, path), path
    client = live_server.client
    assert client.post("/rl/predict", content=b"{").status_code == 400
    assert client.post("/rl/predict", content=b"[" + b"0," * 4096 + b"0]").status_code == 413
    assert client.post("/rl/predict", json={"state": [1]}).status_code == 422
    assert client.get("/healthz").status_code == 200


def test_no_model_yet_is_a_documented_503(tmp_path: Path) -> None:
    """Before the first checkpoint exists, predict answers 503 with Retry-After."""
    server = InProcessServer(_app(tmp_path / "empty"))
    try:
        r = server.client.post("/rl/predict", json={"state": [0.0] * OBS_DIM})
        assert r.status_code == 503
        assert "retry-after" in r.headers
        spec = server.client.get("/openapi.json").json()
        assert 503 in _documented_statuses(spec, "/rl/predict")
    finally:
        server.stop()
