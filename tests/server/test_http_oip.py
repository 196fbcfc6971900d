"""Open Inference Protocol v2 through the official client, `tritonclient.http`, against a real
server: binary tensors (the client's default) and JSON tensors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from serverkit import OBS_DIM, ServerProcess

pytestmark = pytest.mark.slow

httpclient = pytest.importorskip("tritonclient.http")


@pytest.fixture
def client(shared_server: tuple[ServerProcess, Path]):  # type: ignore[no-untyped-def]
    server, _ = shared_server
    c = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    yield c
    c.close()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_infer(client, shared_server, binary: bool) -> None:  # type: ignore[no-untyped-def]
    server, _ = shared_server
    states = np.full((3, OBS_DIM), 0.1, dtype=np.float32)
    inp = httpclient.InferInput("state", list(states.shape), "FP32")
    inp.set_data_from_numpy(states, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("action", binary_data=binary)]
    result = client.infer("actor", inputs=[inp], outputs=outputs)
    action = result.as_numpy("action")
    assert action.shape == (3, 1) and action.dtype == np.float32
    response = result.get_response()
    rl = server.client.post("/rl/predict", json={"states": states.tolist()}).json()
    assert response["model_version"] == f"{rl['checkpoint']}@{rl['sha256'][:12]}"
    np.testing.assert_allclose(action, np.asarray(rl["actions"], dtype=np.float32), rtol=1e-6)


def test_tritonclient_default_request(client) -> None:  # type: ignore[no-untyped-def]
    """No outputs named: the client asks for binary output of everything."""
    inp = httpclient.InferInput("state", [1, OBS_DIM], "FP32")
    inp.set_data_from_numpy(np.zeros((1, OBS_DIM), dtype=np.float32))
    assert client.infer("actor", inputs=[inp]).as_numpy("action").shape == (1, 1)


def test_tritonclient_health_and_metadata(client) -> None:  # type: ignore[no-untyped-def]
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("actor")
    meta = client.get_model_metadata("actor")
    assert meta["inputs"][0]["name"] == "state" and meta["inputs"][0]["shape"] == [-1, OBS_DIM]
    assert meta["outputs"][0]["name"] == "action" and meta["outputs"][0]["shape"] == [-1, 1]


def test_tritonclient_wrong_shape_is_an_error(client) -> None:  # type: ignore[no-untyped-def]
    from tritonclient.utils import InferenceServerException

    inp = httpclient.InferInput("state", [1, OBS_DIM + 1], "FP32")
    inp.set_data_from_numpy(np.zeros((1, OBS_DIM + 1), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="expected"):
        client.infer("actor", inputs=[inp])


def _infer(**fields: object) -> dict[str, object]:
    """A valid one-state infer request, with `fields` of its input replaced."""
    spec = {"name": "state", "shape": [1, OBS_DIM], "datatype": "FP32", "data": [0.0] * OBS_DIM}
    return {"inputs": [{**spec, **fields}]}


@pytest.mark.parametrize(
    ("request_body", "status"),
    [
        (
            {
                "inputs": [
                    {
                        "name": "state",
                        "shape": [1, OBS_DIM],
                        "datatype": "FP32",
                        "data": [0.0, 0.0, 0.0, float("nan")],
                    }
                ]
            },
            422,
        ),
        (
            {
                "inputs": [
                    {
                        "name": "state",
                        "shape": [1, OBS_DIM],
                        "datatype": "FP32",
                        "data": [0.0, 0.0, 0.0, True],
                    }
                ]
            },
            422,
        ),
        (
            {
                "inputs": [
                    {"name": "state", "shape": [1, OBS_DIM], "datatype": "FP32", "data": [0.0]}
                ]
            },
            422,
        ),
        (
            {"inputs": [{"name": "state", "shape": [0, OBS_DIM], "datatype": "FP32", "data": []}]},
            422,
        ),
        (
            {
                "inputs": [
                    {"name": "obs", "shape": [1, OBS_DIM], "datatype": "FP32", "data": [0] * 4}
                ]
            },
            400,
        ),
        (
            {
                "inputs": [
                    {"name": "state", "shape": [1, OBS_DIM], "datatype": "BYTES", "data": [0] * 4}
                ]
            },
            400,
        ),
        ({"inputs": []}, 400),
        ([], 400),
        (_infer(data=[]), 422),
        (_infer(shape=[1.5, OBS_DIM]), 400),
        (_infer(shape=[True, OBS_DIM]), 400),
        (_infer(data=[[[0.0] * OBS_DIM]]), 422),
        (_infer(data=[[0.0] * OBS_DIM, 0.0]), 400),
        ({**_infer(), "id": 7}, 400),
        ({**_infer(), "id": [[["deep"]]]}, 400),
        ({**_infer(), "parameters": []}, 400),
        (_infer(parameters="binary"), 400),
        ({**_infer(), "outputs": [{"name": "action", "parameters": None}]}, 400),
    ],
    ids=[
        "nan",
        "boolean",
        "count",
        "empty-batch",
        "input-name",
        "datatype",
        "no-inputs",
        "not-object",
        "empty-data",
        "fractional-shape",
        "boolean-shape",
        "data-too-deep",
        "data-mixed",
        "id-number",
        "id-nested",
        "parameters-list",
        "input-parameters-string",
        "output-parameters-null",
    ],
)
def test_bad_infer_requests(
    shared_server: tuple[ServerProcess, Path], request_body: object, status: int
) -> None:
    server, _ = shared_server
    body = json.dumps(request_body).encode()  # json writes NaN as the non-standard literal
    r = server.client.post("/v2/models/actor/infer", content=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]


def test_binary_header_larger_than_body_is_400(shared_server: tuple[ServerProcess, Path]) -> None:
    server, _ = shared_server
    r = server.client.post(
        "/v2/models/actor/infer", content=b"{}", headers={"inference-header-content-length": "99"}
    )
    assert r.status_code == 400


@pytest.mark.parametrize(
    "request_body",
    [
        _infer(shape=[1.0, float(OBS_DIM)]),
        _infer(shape=[OBS_DIM]),
        _infer(shape=[2, OBS_DIM], data=[[0.0] * OBS_DIM, [0.5] * OBS_DIM]),
        {**_infer(), "id": "request-1", "parameters": {}},
    ],
    ids=["integral-float-shape", "one-dimension", "one-list-per-row", "id-and-parameters"],
)
def test_schema_valid_infer_requests_are_answered(
    shared_server: tuple[ServerProcess, Path], request_body: dict[str, object]
) -> None:
    """What the schema allows, the server answers: `4.0` is a JSON Schema integer too."""
    server, _ = shared_server
    r = server.client.post("/v2/models/actor/infer", json=request_body)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["shape"][1] == 1
    assert r.json().get("id") == request_body.get("id")
