"""Safe rollout on the request path (docs/rollout.md): signed request ids on every answer, a
request that names a resident version, the shadow states requests leave behind, and a rollback
the moment the live version gives non-finite actions on real states."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import torch
from serverkit import OBS_DIM, InProcessServer, seeded, state, torch_script, wait_for

from ckptserve import publish
from ckptserve.rollout import BadMarks

MakeServer = Callable[..., InProcessServer]


class NanAwayFromZero(torch.nn.Module):
    """A policy whose action is NaN where the state's first value is above 0.5: the probe's zero
    state passes, such real states do not."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = seeded(1)

    def forward(
        self, state: torch.Tensor, deterministic: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        action, log_prob = self.inner(state, deterministic)
        nan = torch.full_like(action, float("nan"))
        return torch.where(state[:, :1] > 0.5, nan, action), log_prob


def infer_body(values: list[float]) -> dict[str, Any]:
    return {"inputs": [{"name": "state", "shape": [1, len(values)], "datatype": "FP32",
                        "data": values}]}  # fmt: skip


def answer(server: InProcessServer, body: Any = None, headers: dict[str, str] | None = None) -> Any:
    r = server.client.post("/rl/predict", json=state() if body is None else body, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def test_every_answer_carries_a_request_id_this_server_signed(
    model_dir: Path, make_server: MakeServer
) -> None:
    """/rl/predict (body and X-Request-Id) and OIP infer (parameters and X-Request-Id): the id
    names the version that answered and reads back under the server's secret; an error reply
    carries none, and two answers never share one."""
    server = make_server(model_dir)
    ids = server.runtime.ids
    r = server.client.post("/rl/predict", json=state())
    body = r.json()
    assert r.headers["x-request-id"] == body["request_id"]
    assert ids.read(body["request_id"]).version == body["sha256"][:12]
    oip = server.client.post("/v2/models/actor/infer", json=infer_body([0.1] * OBS_DIM))
    params = oip.json()["parameters"]
    assert oip.headers["x-request-id"] == params["request_id"] != body["request_id"]
    assert ids.read(params["request_id"]).version == params["sha256"][:12]
    refused = server.client.post("/rl/predict", json={"state": [0.1]})
    assert refused.status_code == 422 and "x-request-id" not in refused.headers
    assert "request_id" not in refused.json()


def test_a_named_version_answers_after_a_swap_then_409_once_it_is_evicted(
    model_dir: Path, make_server: MakeServer
) -> None:
    """--keep-versions 2: after one swap the first version still answers a request that names
    it (by tag, by 12 hex digits, by its sha256; in the body, the X-Model-Version header or
    OIP's version path); after the next swap it is evicted and the request gets 409 naming the
    versions that are resident."""
    server = make_server(model_dir)
    first = answer(server)
    publish(torch_script(seeded(1)), model_dir)
    second = answer(server)
    assert second["sha256"] != first["sha256"]
    for ref in (first["version"], first["sha256"][:12], first["sha256"].upper()):
        pinned = answer(server, {**state(), "version": ref})
        assert (pinned["sha256"], pinned["action"]) == (first["sha256"], first["action"]), ref
    header = answer(server, headers={"X-Model-Version": quote(first["version"], safe="@")})
    assert header["sha256"] == first["sha256"]
    path = f"/v2/models/actor/versions/{first['version']}/infer"
    oip = server.client.post(path, json=infer_body(state()["state"]))
    assert oip.status_code == 200, oip.text
    assert oip.json()["model_version"] == first["version"]
    assert answer(server)["sha256"] == second["sha256"]  # naming a version changed nothing

    publish(torch_script(seeded(2)), model_dir)
    third = answer(server)
    gone = server.client.post("/rl/predict", json={**state(), "version": first["version"]})
    assert gone.status_code == 409, gone.text
    detail = gone.json()["detail"]
    assert first["version"] in detail and third["version"] in detail and second["version"] in detail
    oip_gone = server.client.post(path, json=infer_body(state()["state"]))
    assert oip_gone.status_code == 409 and "error" in oip_gone.json()


@pytest.mark.parametrize(
    ("body", "headers"),
    [({"version": "latest"}, {}), ({"version": 7}, {}), ({"version": "abc123"}, {}),
     ({}, {"X-Model-Version": "not-a-version"})],
    ids=["word", "number", "short-prefix", "header"],
)  # fmt: skip
def test_a_malformed_version_reference_is_a_422(
    model_dir: Path, make_server: MakeServer, body: dict[str, Any], headers: dict[str, str]
) -> None:
    server = make_server(model_dir)
    r = server.client.post("/rl/predict", json={**state(), **body}, headers=headers)
    assert r.status_code == 422, r.text
    assert "version" in r.json()["detail"]


def test_requests_leave_their_states_in_the_shadow_buffer_and_bad_input_leaves_none(
    model_dir: Path, make_server: MakeServer
) -> None:
    """Each answered request records one of its states (a batch one row); a request refused by
    the input checks records nothing; the buffer never holds more than --shadow-states."""
    server = make_server(model_dir, shadow_states=4)
    buffer = server.runtime.models["actor"].buffer
    assert buffer is server.runtime.models["actor"].registry.judge.buffer
    answer(server, {"state": [0.25] * OBS_DIM})
    answer(server, {"states": [[0.5] * OBS_DIM, [0.75] * OBS_DIM]})
    for bad in ({"state": [float("1e39")] * OBS_DIM}, {"state": [0.1]}, {"states": []}):
        assert server.client.post("/rl/predict", json=bad).status_code == 422
    oip = server.client.post("/v2/models/actor/infer", json=infer_body([0.125] * OBS_DIM))
    assert oip.status_code == 200
    kept = buffer.states()
    assert len(kept) == 3 and kept[0] == [0.25] * OBS_DIM and kept[2] == [0.125] * OBS_DIM, kept
    assert kept[1] in ([0.5] * OBS_DIM, [0.75] * OBS_DIM), kept  # the batch's rows take turns
    for i in range(10):
        answer(server, {"state": [i / 10] * OBS_DIM})
    assert len(buffer.states()) == 4 and buffer.states()[-1] == [0.9] * OBS_DIM


def test_non_finite_actions_from_the_live_version_roll_it_back_at_once(
    tmp_path: Path, model_dir: Path, make_server: MakeServer
) -> None:
    """A version NaN only away from zero goes live (no shadow check to catch it). The first real
    state it answers with NaN rolls it back: that request is answered by the previous version,
    every later one too, the bad version is marked in --state-dir and the rollback counted. A
    client's own NaN input is a 422 and never counts."""
    state_dir = tmp_path / "state"
    server = make_server(model_dir, shadow_states=0, state_dir=str(state_dir))
    good = answer(server)
    publish(torch.jit.script(NanAwayFromZero()), model_dir)
    bad = answer(server, {"state": [0.1] * OBS_DIM})  # below 0.5: a finite action
    assert bad["sha256"] != good["sha256"]
    nan_input = server.client.post("/rl/predict", content=b'{"state": [NaN, 0, 0, 0]}')
    assert nan_input.status_code == 422
    assert server.runtime.models["actor"].registry.version.sha256 == bad["sha256"]

    rescued = answer(server, {"state": [0.9] * OBS_DIM})
    assert rescued["sha256"] == good["sha256"], rescued
    registry = server.runtime.models["actor"].registry
    assert registry.version.sha256 == good["sha256"]
    mark = BadMarks(state_dir, "actor").get(bad["sha256"])
    assert mark is not None and "non-finite actions on live traffic" in mark.reason, mark
    assert answer(server)["sha256"] == good["sha256"]
    text = server.client.get("/metrics").text
    assert metric(text, "ckptserve_rollbacks_total", model="actor") == 1.0


def test_a_client_that_named_the_misbehaving_version_gets_the_error(
    model_dir: Path, make_server: MakeServer
) -> None:
    """A request pinned to a version is never answered by another: the NaN is a 422 for it,
    while the version is rolled back for everyone else."""
    server = make_server(model_dir, shadow_states=0)
    good = answer(server)
    publish(torch.jit.script(NanAwayFromZero()), model_dir)
    bad = answer(server)
    r = server.client.post(
        "/rl/predict", json={"state": [0.9] * OBS_DIM, "version": bad["version"]}
    )
    assert r.status_code == 422 and "not finite" in r.json()["detail"], r.text
    assert r.headers["x-model-version"] == bad["version"]
    assert answer(server)["sha256"] == good["sha256"]


def test_tritonclient_model_version_asks_for_a_resident_version(
    model_dir: Path, make_server: MakeServer
) -> None:
    """tritonclient's `model_version=` uses OIP's version path; the fast lane answers it."""
    httpclient = pytest.importorskip("tritonclient.http")
    import numpy as np

    server = make_server(model_dir)
    first = answer(server)
    publish(torch_script(seeded(1)), model_dir)
    answer(server)
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        inp = httpclient.InferInput("state", [1, OBS_DIM], "FP32")
        inp.set_data_from_numpy(np.asarray([state()["state"]], dtype=np.float32))
        result = client.infer("actor", inputs=[inp], model_version=first["sha256"][:16])
    finally:
        client.close()
    assert result.get_response()["model_version"] == first["version"]
    assert result.as_numpy("action").tolist() == [pytest.approx(first["action"])]


def test_feedback_attributes_a_reward_to_the_version_that_answered_once(
    model_dir: Path, make_server: MakeServer
) -> None:
    """POST /rl/feedback with an answer's request id: the reward counts for the version that
    answered (also after a swap); the same id again is 409; an id never issued (or altered) and
    a reward that is not a finite number are 422; each refusal is counted by reason."""
    server = make_server(model_dir)
    first = answer(server)
    publish(torch_script(seeded(1)), model_dir)
    second = answer(server)
    ok = server.client.post("/rl/feedback", json={"request_id": first["request_id"], "reward": 2})
    assert ok.status_code == 200, ok.text
    assert ok.json()["version"] == first["sha256"][:12] and ok.json()["reward"] == 2.0
    again = server.client.post(
        "/rl/feedback", json={"request_id": first["request_id"], "reward": 2}
    )
    assert again.status_code == 409, again.text
    forged = second["request_id"][:-1] + ("0" if second["request_id"][-1] != "0" else "1")
    refusals = [
        ({"request_id": forged, "reward": 1.0}, 422),
        ({"request_id": second["request_id"], "reward": True}, 422),
        ({"request_id": second["request_id"], "reward": "1"}, 422),
        ({"request_id": second["request_id"]}, 422),
        ({"request_id": second["request_id"], "reward": 1, "note": "x"}, 422),
        (["not", "an", "object"], 422),
    ]
    for body, status in refusals:
        r = server.client.post("/rl/feedback", json=body)
        assert r.status_code == status, (body, r.status_code, r.text)
    assert (
        server.client.post(
            "/rl/feedback", content=b'{"request_id": "x", "reward": NaN}'
        ).status_code
        == 422
    )
    assert (
        server.client.post(
            "/rl/feedback", json={"request_id": second["request_id"], "reward": -1.5}
        ).status_code
        == 200
    )
    stats = server.runtime.feedback.stats()
    assert {v: (s.count, s.mean) for v, s in stats.items()} == {
        first["sha256"][:12]: (1, 2.0),
        second["sha256"][:12]: (1, -1.5),
    }
    refused = server.runtime.feedback.refused
    # Bodies that are no feedback at all (not an object, an unknown field, a NaN literal) are
    # refused before an id is read: they are not counted.
    assert refused == {"unknown_id": 1, "expired": 0, "duplicate": 1, "bad_reward": 3}, refused
    metrics = server.client.get("/metrics").text
    assert 'ckptserve_feedback_refused_total{reason="duplicate"} 1.0' in metrics
    assert 'ckptserve_feedback_refused_total{reason="bad_reward"} 3.0' in metrics


def test_feedback_needs_the_token_when_one_is_set(
    model_dir: Path, make_server: MakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CKPTSERVE_FEEDBACK_TOKEN set: a reward without that bearer token is 401 and not counted."""
    monkeypatch.setenv("CKPTSERVE_FEEDBACK_TOKEN", "r3ward")
    server = make_server(model_dir)
    rid = answer(server)["request_id"]
    body = {"request_id": rid, "reward": 1.0}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic r3ward"}):
        r = server.client.post("/rl/feedback", json=body, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (headers, r.text)
    assert server.runtime.feedback.stats() == {}
    r = server.client.post("/rl/feedback", json=body, headers={"Authorization": "Bearer r3ward"})
    assert r.status_code == 200, r.text


def test_ids_signed_with_a_shared_secret_are_read_by_another_server(
    model_dir: Path, make_server: MakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two servers (workers, replicas) with one CKPTSERVE_FEEDBACK_SECRET read each other's
    ids; a server with its own random secret refuses them."""
    monkeypatch.setenv("CKPTSERVE_FEEDBACK_SECRET", "shared-s3cret")
    one, two = make_server(model_dir), make_server(model_dir)
    rid = answer(one)["request_id"]
    assert two.client.post("/rl/feedback", json={"request_id": rid, "reward": 1}).status_code == 200
    monkeypatch.delenv("CKPTSERVE_FEEDBACK_SECRET")
    alone = make_server(model_dir)
    r = alone.client.post(
        "/rl/feedback", json={"request_id": answer(one)["request_id"], "reward": 1}
    )
    assert r.status_code == 422 and "not a request id this server issued" in r.json()["detail"]


def test_feedback_for_an_answer_over_an_hour_old_is_410(
    model_dir: Path, make_server: MakeServer
) -> None:
    """An id older than the store's max_age (1 h) is refused as expired."""
    import time

    from ckptserve.rollout import FeedbackStore

    server = make_server(model_dir)
    rid = answer(server)["request_id"]
    runtime = server.runtime
    runtime.feedback = FeedbackStore(runtime.ids, clock=lambda: time.time() + 3601)
    r = server.client.post("/rl/feedback", json={"request_id": rid, "reward": 1})
    assert r.status_code == 410 and "too late" in r.json()["detail"], r.text


class RaisesAwayFromZero(torch.nn.Module):
    """A policy that raises where the state's first value is above 0.5 (the probe passes)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = seeded(1)

    def forward(
        self, state: torch.Tensor, deterministic: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if bool((state[:, 0] > 0.5).any()):
            raise RuntimeError("this policy breaks on real states")
        return self.inner(state, deterministic)


def start_canary(server: InProcessServer, model_dir: Path, module: torch.nn.Module) -> Any:
    """Publish `module` and make one request, so the sync swap loads it as the canary."""
    publish(torch.jit.script(module), model_dir)
    answer(server)
    canary = server.runtime.models["actor"].canary
    assert canary is not None and canary.canary is not None, "no canary started"
    return canary.canary


def test_a_canary_at_half_answers_about_half_sticky_per_session(
    model_dir: Path, make_server: MakeServer
) -> None:
    """--canary-fraction 0.5: of 200 requests without a session about half are answered by the
    canary; each X-Session-Id gets one side for all of its requests, and both sides are used."""
    server = make_server(model_dir, canary_fraction=0.5, canary_seconds=600)
    incumbent = answer(server)["sha256"]
    canary = start_canary(server, model_dir, seeded(1)).version.sha256
    answered = [answer(server)["sha256"] for _ in range(200)]
    assert set(answered) == {incumbent, canary}
    assert 90 <= answered.count(canary) <= 110, answered.count(canary)
    sides = {}
    for session in (f"episode-{i}" for i in range(20)):
        seen = {answer(server, headers={"X-Session-Id": session})["sha256"] for _ in range(5)}
        assert len(seen) == 1, (session, seen)
        sides[session] = seen.pop()
    assert set(sides.values()) == {incumbent, canary}, sides


def test_a_canary_is_promoted_when_its_window_ends_then_answers_every_request(
    model_dir: Path, make_server: MakeServer
) -> None:
    """The server's watch judges the canary about once a second: a clean window promotes it,
    and every request is then answered by it (the registry's current version)."""
    server = make_server(model_dir, canary_fraction=0.5, canary_seconds=0.5)
    answer(server)
    canary = start_canary(server, model_dir, seeded(1))
    registry = server.runtime.models["actor"].registry
    wait_for(lambda: registry.current is canary, 20, "the canary's promotion")
    assert {answer(server)["sha256"] for _ in range(20)} == {canary.version.sha256}
    decision = server.client.get("/rl/status").json()["canary"]["decisions"][-1]
    assert decision["action"] == "promote" and decision["canary"] == canary.version.tag


@pytest.mark.parametrize("module", [NanAwayFromZero, RaisesAwayFromZero], ids=["nan", "raises"])
def test_a_canary_that_misbehaves_on_live_traffic_is_rolled_back_at_once(
    tmp_path: Path, model_dir: Path, make_server: MakeServer, module: type[torch.nn.Module]
) -> None:
    """A canary giving NaN, or raising where the live version does not, on states that passed
    the checks: that request is answered by the live version, the canary ends at once and its
    version is marked bad."""
    state_dir = tmp_path / "state"
    server = make_server(model_dir, canary_fraction=1.0, canary_seconds=600, shadow_states=0,
                         state_dir=str(state_dir))  # fmt: skip
    incumbent = answer(server)["sha256"]
    canary = start_canary(server, model_dir, module())
    assert answer(server, {"state": [0.1] * OBS_DIM})["sha256"] == canary.version.sha256
    rescued = answer(server, {"state": [0.9] * OBS_DIM})
    assert rescued["sha256"] == incumbent, rescued
    assert server.runtime.models["actor"].canary.canary is None
    assert BadMarks(state_dir, "actor").is_bad(canary.version.sha256)
    decision = server.client.get("/rl/status").json()["canary"]["decisions"][-1]
    assert decision["action"] == "roll_back" and "on live traffic" in decision["reason"]


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a Prometheus exposition, None when it is absent."""
    import re

    shown = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))  # as exposed: sorted
    found = re.search(rf"^{re.escape(name)}{re.escape('{' + shown + '}') if labels else ''} (\S+)$",
                      text, re.MULTILINE)  # fmt: skip
    return float(found.group(1)) if found else None


def test_metrics_and_status_show_the_rollout(
    tmp_path: Path, model_dir: Path, make_server: MakeServer
) -> None:
    """ckptserve_versions_behind, the live step, resident count and bytes, the last shadow
    figures, rollbacks, canary decisions and rewards per version are metrics; /rl/status shows
    versions behind, the resident versions, the shadow buffer, the canary and the rewards."""
    publish(torch_script(seeded(1)), model_dir, metadata={"step": 10})
    server = make_server(model_dir, canary_fraction=1.0, canary_seconds=600,
                         state_dir=str(tmp_path / "state"))  # fmt: skip
    rid = answer(server)["request_id"]
    server.client.post("/rl/feedback", json={"request_id": rid, "reward": 3.0})
    canary = start_canary(server, model_dir, NanAwayFromZero())
    rescued = answer(server, {"state": [0.9] * OBS_DIM})  # NaN: the canary is rolled back
    assert rescued["sha256"] != canary.version.sha256
    status = server.client.get("/rl/status").json()
    assert status["versions_behind"] == 1 and status["follow"] == "latest"  # the canary's
    assert status["resident"]["versions"][0]["live"] and status["shadow"]["size"] == 256
    assert status["canary"]["decisions"][-1]["action"] == "roll_back"
    assert status["rewards"] == {rescued["sha256"][:12]: {"count": 1, "mean": 3.0}}
    assert status["history"][-1]["divergence"] is not None
    text = server.client.get("/metrics").text
    assert metric(text, "ckptserve_live_step", model="actor") == 10.0
    assert metric(text, "ckptserve_versions_behind", model="actor") == 1.0
    assert metric(text, "ckptserve_resident_versions", model="actor") == 1.0
    assert (metric(text, "ckptserve_resident_bytes", model="actor") or 0) > 0
    assert (
        metric(text, "ckptserve_shadow_divergence", model="actor", figure="sign_flips") is not None
    )
    assert (
        metric(text, "ckptserve_canary_decisions_total", model="actor", action="roll_back") == 1.0
    )
    assert (
        metric(text, "ckptserve_reward_count", model="actor", version=rescued["sha256"][:12]) == 1
    )
    assert metric(text, "ckptserve_reward_mean", model="actor", version=rescued["sha256"][:12]) == 3
