"""What a careless client can send: a long forward pass never runs on the event loop, batched or
not, and JSON nested to any depth, in any field, is a 4xx, never a 500."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import torch
from serverkit import OBS_DIM, InProcessServer, ThreadRecordingActor, seeded

from ckptserve import publish
from ckptserve.server.batching import FORWARD_COST, OFF_LOOP_ROWS, Batcher, ForwardCost

MakeServer = Callable[..., InProcessServer]


@pytest.fixture
def recording_server(tmp_path: Path, make_server: MakeServer) -> InProcessServer:
    directory = tmp_path / "models"
    publish(seeded(0), directory, format="safetensors")
    server = make_server(directory, factory="serverkit:thread_recording_actor")
    ThreadRecordingActor.threads.clear()  # the probe ran in the loading thread
    return server


@pytest.mark.parametrize("route", ["/rl/predict", "/v2/models/actor/infer"])
def test_a_long_forward_pass_runs_off_the_event_loop(
    recording_server: InProcessServer, route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A few states run on the loop (no thread hop); OFF_LOOP_ROWS states or more in a worker
    thread while their pass is expected to take longer than the budget, and on the loop when the
    model's timed passes say it is quick (here: a budget of 0 s, then of 10 s)."""
    loop_thread = recording_server.thread.ident

    def ran_on_loop(n: int) -> bool:
        states = [[0.01 * i] * OBS_DIM for i in range(n)]
        if route.startswith("/rl"):
            body: dict[str, Any] = {"states": states}
        else:
            body = {"inputs": [{"name": "state", "datatype": "FP32", "shape": [n, OBS_DIM],
                                "data": states}]}  # fmt: skip
        r = recording_server.client.post(route, json=body)
        assert r.status_code == 200, r.text
        return ThreadRecordingActor.threads[-1] == loop_thread

    monkeypatch.setattr(FORWARD_COST, "budget", 0.0)
    seen = {n: ran_on_loop(n) for n in (1, OFF_LOOP_ROWS - 1, OFF_LOOP_ROWS, 4096)}
    assert seen == {1: True, OFF_LOOP_ROWS - 1: True, OFF_LOOP_ROWS: False, 4096: False}, seen
    monkeypatch.setattr(FORWARD_COST, "budget", 10.0)
    assert ran_on_loop(4096), "a pass the timed ones say is quick stays on the loop"


def test_the_forward_cost_sends_slow_and_untimed_passes_to_a_thread() -> None:
    cost = ForwardCost(budget=0.001, min_rows=64)
    quick, slow, new = object(), object(), object()
    cost.record(quick, 64, 64 * 2e-6)  # 2 us a state: 64 states take 0.13 ms
    cost.record(slow, 64, 64 * 1e-4)  # 100 us a state: 6.4 ms
    cost.record(new, 8, 1.0)  # too few states to say anything
    assert [cost.off_loop(quick, n) for n in (63, 64, 400, 600)] == [False, False, False, True]
    assert [cost.off_loop(slow, n) for n in (63, 64)] == [False, True]
    assert cost.off_loop(new, 64), "not timed yet: a first large pass goes to a thread"
    others = [object() for _ in range(64)]
    for model in others:  # the 64 models timed since forget the oldest, `quick`
        cost.record(model, 64, 64 * 2e-6)
    assert cost.off_loop(quick, 64) and not cost.off_loop(others[-1], 64)


def test_a_gathered_batch_of_many_rows_runs_off_the_event_loop() -> None:
    """Requests gathered into one pass of OFF_LOOP_ROWS rows or more: the pass runs in a worker
    thread, each request still gets its own rows, and a bad one is still split out."""
    threads: list[int] = []

    def forward(live: Any, x: torch.Tensor) -> torch.Tensor:
        threads.append(threading.get_ident())
        if bool((x[:, 0] > 1).any()):
            raise ValueError("state out of range")
        return x[:, :1] * 2

    per_request = 8
    firsts = [0.1] * (OFF_LOOP_ROWS // per_request)
    firsts[2] = 5.0

    async def scenario() -> list[Any]:
        batcher = Batcher(4 * OFF_LOOP_ROWS, cost=ForwardCost(budget=0.0))
        live: Any = object()
        return await asyncio.gather(
            *(batcher.run(live, torch.full((per_request, 3), v), forward) for v in firsts),
            return_exceptions=True,
        )

    results = asyncio.run(scenario())
    assert threading.get_ident() not in threads, threads
    for i, result in enumerate(results):
        if i == 2:
            assert isinstance(result, ValueError), result
        else:
            assert isinstance(result, torch.Tensor) and result.shape == (per_request, 1)
            assert torch.allclose(result, torch.full((per_request, 1), 0.2))


def _nest(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


def _deep_bodies(depth: int) -> list[tuple[str, bytes]]:
    """Each field of both model routes' bodies replaced, in turn, by a value `depth` deep. Deeper
    than the parsers go (orjson: 1024), as raw text."""
    deep = "[" * depth + "]" * depth
    state = orjson.dumps([0.0] * OBS_DIM).decode()
    spec = {"name": '"state"', "datatype": '"FP32"', "shape": f"[1, {OBS_DIM}]", "data": state}

    def infer(field: str | None, top: str | None = None) -> bytes:
        fields = {**spec, **({field: deep} if field else {})}
        inner = ", ".join(f'"{k}": {v}' for k, v in fields.items())
        extra = f', "{top}": {deep}' if top else ""
        return f'{{"inputs": [{{{inner}}}]{extra}}}'.encode()

    return [
        ("/rl/predict", f'{{"state": {deep}}}'.encode()),
        ("/rl/predict", f'{{"states": {deep}}}'.encode()),
        ("/rl/predict", f'{{"states": [{deep}]}}'.encode()),
        ("/rl/predict", f'{{"state": {state}, "x": {deep}}}'.encode()),
        ("/rl/predict", deep.encode()),
        *(("/v2/models/actor/infer", infer(f)) for f in (*spec, "parameters")),
        *(("/v2/models/actor/infer", infer(None, top)) for top in ("id", "outputs", "parameters")),
        ("/v2/models/actor/infer", f'{{"inputs": {deep}}}'.encode()),
    ]


@pytest.mark.parametrize("depth", [260, 1000, 2000, 100_000])
def test_json_nested_to_any_depth_is_never_a_500(
    recording_server: InProcessServer, depth: int
) -> None:
    """Through the fast lane: every reply is JSON with a status under 500 (and the server keeps
    answering)."""
    for path, body in _deep_bodies(depth):
        r = recording_server.client.post(path, content=body)
        assert r.status_code < 500, (path, depth, r.status_code, r.text[:300])
        assert r.json(), (path, depth)
    assert recording_server.client.get("/healthz").status_code == 200


def test_an_oip_id_nested_260_deep_is_a_400(recording_server: InProcessServer) -> None:
    body = {"id": _nest(260), "inputs": [{"name": "state", "datatype": "FP32",
            "shape": [1, OBS_DIM], "data": [0.0] * OBS_DIM}]}  # fmt: skip
    r = recording_server.client.post("/v2/models/actor/infer", content=json.dumps(body).encode())
    assert r.status_code == 400 and "id" in r.json()["error"], r.text
