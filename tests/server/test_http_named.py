"""A model with named inputs over HTTP: `{"inputs": {"state": [...], "action": [...]}}` on
`/rl/predict` is answered with `{"outputs": {"q": [...]}}`, OIP v2 takes one input tensor per
name (JSON or binary, as tritonclient sends them), and the metadata and the OpenAPI document
name what the model takes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from serverkit import InProcessServer

from ckptserve import publish
from policies import ACT, OBS, Critic, TwinCritic, examples

MakeServer = Callable[..., InProcessServer]


@pytest.fixture
def critic(tmp_path: Path) -> tuple[Path, Critic]:
    model = Critic()
    directory = tmp_path / "critics"
    publish(model, directory, example_inputs=examples(), output_name="q")
    return directory, model


def q_of(model: torch.nn.Module, state: list[Any], action: list[Any]) -> list[Any]:
    with torch.no_grad():
        return model(torch.tensor(state), torch.tensor(action)).tolist()  # type: ignore[no-any-return]


def test_predict_answers_named_inputs_by_name(
    critic: tuple[Path, Critic], make_server: MakeServer
) -> None:
    directory, model = critic
    server = make_server(directory)
    state, action = [0.1] * OBS, [0.5]
    r = server.client.post("/rl/predict", json={"inputs": {"state": state, "action": action}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"outputs", "model_version", "version", "load_count", "checkpoint",
                         "sha256", "replica", "request_id"}  # fmt: skip
    np.testing.assert_allclose(body["outputs"]["q"], q_of(model, [state], [action])[0], rtol=1e-6)
    states, actions = [[0.1] * OBS, [0.3] * OBS], [[0.5], [-0.5]]
    r = server.client.post("/rl/predict", json={"inputs": {"state": states, "action": actions}})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["outputs"]["q"], q_of(model, states, actions), rtol=1e-6)
    assert r.headers["x-model-version"] == body["version"]
    rid = r.json()["request_id"]
    assert (
        server.client.post("/rl/feedback", json={"request_id": rid, "reward": 1}).status_code == 200
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"state": [0.1] * OBS}, 'this model takes named inputs: send {"inputs": {...}} (action[1], state[8] -> q[1])'),
        ({"inputs": {"state": [0.1] * OBS}}, "\"inputs\" has 'state'; the model takes action[1], state[8] -> q[1]"),
        ({"inputs": {"state": [0.1] * 7, "action": [0.5]}}, "inputs.state has 7 values, expected 8"),
        ({"inputs": {"state": [0.1] * OBS, "action": [True]}}, "inputs.action[0] is a boolean"),
        ({"inputs": {"state": [[0.1] * OBS], "action": [0.5]}}, "one row for every input, or a batch"),
        ({"inputs": {"state": [[0.1] * OBS] * 2, "action": [[0.5]]}}, "inputs.state has 2 rows, the other inputs 1"),
        ({"inputs": [[0.1] * OBS]}, '"inputs" must be an object of named inputs, not a list'),
        ({"inputs": {"state": [0.1] * OBS, "action": [0.5]}, "state": [0.1]}, 'send "inputs" (named inputs) or "state"/"states", not both'),
        ({"inputs": {"state": [0.1] * OBS, "action": [1e39]}}, "inputs.action[0] is 1e+39, not a finite float32"),
    ],
)  # fmt: skip
def test_bad_named_inputs_are_a_422_that_says_why(
    critic: tuple[Path, Critic], make_server: MakeServer, body: dict[str, Any], message: str
) -> None:
    server = make_server(critic[0])
    r = server.client.post("/rl/predict", json=body)
    assert r.status_code == 422 and message in r.json()["detail"], r.text


def test_a_batch_of_named_inputs_is_bounded_by_max_batch(
    critic: tuple[Path, Critic], make_server: MakeServer
) -> None:
    server = make_server(critic[0], max_batch=4)
    body = {"inputs": {"state": [[0.1] * OBS] * 5, "action": [[0.5]] * 5}}
    r = server.client.post("/rl/predict", json=body)
    assert r.status_code == 422 and "inputs.action has 5 rows, at most 4 allowed" in r.text, r.text


def test_a_policy_refuses_named_inputs(model_dir: Path, make_server: MakeServer) -> None:
    server = make_server(model_dir)
    r = server.client.post("/rl/predict", json={"inputs": {"state": [0.1] * 4}})
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == 'this model is a policy: send "state" or "states", not "inputs"'


def test_oip_infer_takes_one_tensor_per_name(
    critic: tuple[Path, Critic], make_server: MakeServer
) -> None:
    directory, model = critic
    server = make_server(directory)
    states, actions = [[0.1] * OBS, [0.2] * OBS], [[0.5], [0.25]]
    request = {"inputs": [
        {"name": "state", "datatype": "FP32", "shape": [2, OBS], "data": states},
        {"name": "action", "datatype": "FP64", "shape": [2, 1], "data": [0.5, 0.25]},
    ]}  # fmt: skip
    r = server.client.post("/v2/models/actor/infer", json=request)
    assert r.status_code == 200, r.text
    (output,) = r.json()["outputs"]
    assert output["name"] == "q" and output["shape"] == [2, 1]
    np.testing.assert_allclose(output["data"], np.ravel(q_of(model, states, actions)), rtol=1e-6)
    meta = server.client.get("/v2/models/actor").json()
    assert meta["inputs"] == [{"name": "action", "datatype": "FP32", "shape": [-1, ACT]},
                              {"name": "state", "datatype": "FP32", "shape": [-1, OBS]}]  # fmt: skip
    assert meta["outputs"] == [{"name": "q", "datatype": "FP32", "shape": [-1, 1]}]
    for inputs, message in [
        (request["inputs"][:1], "inputs 'state': the model takes action[1], state[8] -> q[1]"),
        ([request["inputs"][0], {**request["inputs"][1], "shape": [3, 1], "data": [1, 2, 3]}],
         "the inputs have different batch sizes: [2, 3]"),
        ([request["inputs"][0], {**request["inputs"][1], "shape": [2, 2], "data": [1, 2, 3, 4]}],
         'input "action" has shape [2, 2], expected [batch, 1]'),
        ([request["inputs"][0], {**request["inputs"][1], "name": None}],
         "every input needs a name, a string"),
    ]:  # fmt: skip
        r = server.client.post("/v2/models/actor/infer", json={"inputs": inputs})
        assert r.status_code in (400, 422) and message in r.json()["error"], r.text
    r = server.client.post("/v2/models/actor/infer", json={**request, "outputs": []})
    assert [o["name"] for o in r.json()["outputs"]] == ["q"], r.text  # none named: all


def test_oip_binary_tensors_and_chosen_outputs(tmp_path: Path, make_server: MakeServer) -> None:
    """Binary inputs one after the other in the body, a chosen output sent as binary data, as
    tritonclient sends and reads them."""
    httpclient = pytest.importorskip("tritonclient.http")
    model = TwinCritic()
    publish(model, tmp_path, example_inputs=examples())
    server = make_server(tmp_path)
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        state = np.random.default_rng(0).random((3, OBS), dtype=np.float32)
        action = np.random.default_rng(1).random((3, ACT), dtype=np.float32)
        inputs = [httpclient.InferInput("state", [3, OBS], "FP32"),
                  httpclient.InferInput("action", [3, ACT], "FP32")]  # fmt: skip
        inputs[0].set_data_from_numpy(state, binary_data=True)
        inputs[1].set_data_from_numpy(action, binary_data=True)
        wanted = [httpclient.InferRequestedOutput("q2", binary_data=True)]
        result = client.infer("actor", inputs=inputs, outputs=wanted)
        with torch.no_grad():
            q2 = model(torch.from_numpy(state), torch.from_numpy(action))["q2"].numpy()
        np.testing.assert_allclose(result.as_numpy("q2"), q2, rtol=1e-6)
        assert result.as_numpy("q1") is None
        both = client.infer("actor", inputs=inputs)  # the client's default: every output, binary
        assert both.as_numpy("q1").shape == (3, 1) and both.as_numpy("q2").shape == (3, 1)
    finally:
        client.close()


def test_the_openapi_document_names_the_inputs(
    critic: tuple[Path, Critic], make_server: MakeServer
) -> None:
    server = make_server(critic[0])
    doc = server.client.get("/openapi.json").json()
    body = doc["paths"]["/rl/predict"]["post"]["requestBody"]["content"]["application/json"]
    (variant,) = body["schema"]["oneOf"]
    inputs = variant["properties"]["inputs"]
    assert inputs["required"] == ["action", "state"] and inputs["additionalProperties"] is False
    row, rows = inputs["properties"]["state"]["oneOf"]
    assert row["minItems"] == row["maxItems"] == OBS and rows["items"] == row
    infer = doc["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]
    spec = infer["application/json"]["schema"]["properties"]["inputs"]
    assert spec["minItems"] == spec["maxItems"] == 2
    assert spec["items"]["properties"]["name"]["enum"] == ["action", "state"]
