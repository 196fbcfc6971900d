"""The status page's data: the bounded per-second recorder behind it, and `GET /statusz` (one
worker's view of every model) served by `create_app` in this process."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pagekit import model_entry, publish_corrupt
from serverkit import InProcessServer, seeded, state, torch_script, wait_for

from ckptserve import publish
from ckptserve.server.errors import Reply
from ckptserve.server.live import _BINS, LiveRecorder

MakeServer = Callable[..., InProcessServer]


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rl_reply(action: list[float], version: str = "actor_1.pt@abc") -> Reply:
    body = f'{{"action": {action}, "checkpoint": "actor_1.pt"}}'.encode()
    return Reply(200, body, [(b"content-type", b"application/json"), (b"x-model-version", version.encode())])  # fmt: skip


def test_requests_are_counted_in_the_second_they_were_answered() -> None:
    clock = Clock()
    recorder = LiveRecorder(window=10, clock=clock)
    for _ in range(3):
        recorder.record("actor", 200, 0.001, None)
    clock.now += 1
    recorder.record("actor", 200, 0.001, None)
    recorder.record("actor", 422, 0.001, None)
    requests = recorder.snapshot("actor")["requests"]
    assert requests["start"] == int(clock.now) - 9
    assert requests["count"][-2:] == [3, 2] and sum(requests["count"]) == 5
    assert requests["errors"][-2:] == [0, 1]
    assert requests["p50_ms"][:-2] == [None] * 8


def test_seconds_older_than_the_window_drop_out() -> None:
    clock = Clock()
    recorder = LiveRecorder(window=10, clock=clock)
    recorder.record("actor", 200, 0.001, None)
    clock.now += 9
    assert sum(recorder.snapshot("actor")["requests"]["count"]) == 1
    clock.now += 1
    assert sum(recorder.snapshot("actor")["requests"]["count"]) == 0
    recorder.record("actor", 200, 0.001, None)  # reuses the slot of the second that dropped out
    assert recorder.snapshot("actor")["requests"]["count"][-1] == 1


def test_memory_stays_bounded_however_long_it_runs() -> None:
    """A ring of `window` seconds, histograms of at most `_BINS` + 1 keys, `max_samples` actions."""
    clock = Clock()
    recorder = LiveRecorder(window=30, sample_interval=0.0, max_samples=50, clock=clock)
    rng = random.Random(0)
    for _ in range(5_000):
        clock.now += 0.05
        recorder.record("actor", 200, rng.lognormvariate(-7, 3), rl_reply([0.5]))
    series = recorder._series["actor"]
    assert len(series.seconds) == len(series.hists) == 30
    assert max(len(h) for h in series.hists) <= _BINS + 1
    assert len(series.samples) == 50
    assert len(recorder.snapshot("actor")["actions"]) <= 50


def test_p50_and_p99_are_within_one_histogram_bin_of_the_exact_ones() -> None:
    clock = Clock()
    recorder = LiveRecorder(window=5, clock=clock)
    rng = np.random.default_rng(0)
    latencies = rng.lognormal(mean=np.log(0.002), sigma=0.8, size=2_000)
    for seconds in latencies:
        recorder.record("actor", 200, float(seconds), None)
    requests = recorder.snapshot("actor")["requests"]
    for key, q in (("p50_ms", 50), ("p99_ms", 99)):
        exact = float(np.percentile(latencies, q)) * 1000
        measured = requests[key][-1]
        assert abs(measured / exact - 1) < 0.1, f"{key}: {measured:.4f} ms, exact {exact:.4f} ms"


def test_one_action_is_kept_per_sample_interval_with_its_version() -> None:
    clock = Clock()
    recorder = LiveRecorder(window=60, sample_interval=0.5, clock=clock)
    for i in range(16):  # 2 s of requests, 8 per second
        recorder.record("actor", 200, 0.001, rl_reply([float(i), -1.0], f"actor_{i // 8}.pt@abc"))
        clock.now += 0.125
    actions = recorder.snapshot("actor")["actions"]
    assert [a["action"] for a in actions] == [[0.0, -1.0], [4.0, -1.0], [8.0, -1.0], [12.0, -1.0]]
    assert [a["version"] for a in actions] == ["actor_0.pt@abc"] * 2 + ["actor_1.pt@abc"] * 2


def test_errors_are_never_sampled_as_actions() -> None:
    recorder = LiveRecorder(sample_interval=0.0)
    body = b'{"detail": "state has 3 values, expected 4"}'
    recorder.record("actor", 422, 0.001, Reply(422, body, []))
    recorder.record("actor", 200, 0.001, Reply(200, b"not json", []))
    assert recorder.snapshot("actor")["actions"] == []
    assert recorder.snapshot("actor")["requests"]["errors"][-1] == 1


def test_an_unknown_model_has_an_empty_series() -> None:
    snapshot = LiveRecorder(window=4).snapshot("nobody")
    assert snapshot == {
        "requests": {"start": snapshot["requests"]["start"], "count": [0] * 4, "errors": [0] * 4,
                     "p50_ms": [None] * 4, "p99_ms": [None] * 4},
        "actions": [],
    }  # fmt: skip


# ---- GET /statusz and GET / ------------------------------------------------------------------


def test_statusz_describes_the_live_version_and_the_worker_that_answered(
    tmp_path: Path, make_server: MakeServer
) -> None:
    directory = tmp_path / "models"
    checkpoint = publish(torch_script(seeded(0)), directory, metadata={"step": 1234})
    server = make_server(directory)
    doc = server.client.get("/statusz").json()
    assert doc["pid"] == os.getpid() and doc["workers"] == 1
    assert doc["not_ready"] == {} and doc["window_seconds"] == server.runtime.live.window
    model = model_entry(doc)
    live = model["live"]
    assert live["checkpoint"] == checkpoint.name and live["step"] == 1234
    assert live["sha256"] == server.client.get("/rl/status").json()["version"]["sha256"]
    assert live["age_seconds"] >= 0 and 0 <= model["lag_seconds"] < 1
    assert model["default"] is True and model["pinned"] is None
    assert model["routes"] == {"status": "/rl/actor/status", "reload": "/rl/actor/reload",
                               "pin": "/rl/actor/pin"}  # fmt: skip
    assert model["versions"] == [
        {"checkpoint": checkpoint.name, "mtime": checkpoint.stat().st_mtime_ns / 1e9, "live": True}
    ]
    assert [a["result"] for a in model["history"]] == ["ok"]


def test_statusz_counts_requests_and_tags_each_action_with_its_version(
    tmp_path: Path, make_server: MakeServer
) -> None:
    directory = tmp_path / "models"
    publish(torch_script(seeded(0)), directory)
    server = make_server(directory)
    server.runtime.live.sample_interval = 0.0
    c = server.client
    first = c.post("/rl/predict", json=state(0.3)).json()
    assert c.post("/rl/predict", json={"state": [0.1]}).status_code == 422
    publish(torch_script(seeded(1)), directory)
    second = c.post("/rl/predict", json={"states": [[0.3] * 4, [0.0] * 4]}).json()
    assert second["checkpoint"] != first["checkpoint"]
    doc = c.get("/statusz").json()
    model = model_entry(doc)
    assert sum(model["requests"]["count"]) == 3 and sum(model["requests"]["errors"]) == 1
    got = [(a["version"], a["action"]) for a in model["actions"]]
    assert got == [
        (f"{first['checkpoint']}@{first['sha256'][:12]}", pytest.approx(first["action"])),
        (f"{second['checkpoint']}@{second['sha256'][:12]}", pytest.approx(second["actions"][0])),
    ]


def test_statusz_samples_the_actions_of_oip_json_and_binary_replies(
    model_dir: Path, make_server: MakeServer
) -> None:
    server = make_server(model_dir)
    server.runtime.live.sample_interval = 0.0
    tensor = {"name": "state", "datatype": "FP32", "shape": [1, 4], "data": [0.2] * 4}
    json_reply = server.client.post("/v2/models/actor/infer", json={"inputs": [tensor]})
    binary_reply = server.client.post(
        "/v2/models/actor/infer",
        json={"inputs": [tensor], "parameters": {"binary_data_output": True}},
    )
    assert binary_reply.headers["content-type"] == "application/octet-stream"
    expected = json_reply.json()["outputs"][0]["data"]
    actions = model_entry(server.client.get("/statusz").json())["actions"]
    assert [a["action"] for a in actions] == [pytest.approx(expected), pytest.approx(expected)]
    assert {a["version"] for a in actions} == {json_reply.headers["x-model-version"]}


def test_statusz_shows_a_failed_load_while_the_old_version_stays_live(
    tmp_path: Path, make_server: MakeServer
) -> None:
    directory = tmp_path / "models"
    good = publish(torch_script(seeded(0)), directory)
    server = make_server(directory)
    corrupt = publish_corrupt(directory)

    def failed() -> bool:
        server.client.post("/rl/predict", json=state())
        return model_entry(server.client.get("/statusz").json())["last_error"] is not None

    wait_for(failed, 10, "the corrupt checkpoint's failed load")
    model = model_entry(server.client.get("/statusz").json())
    assert model["live"]["checkpoint"] == good.name
    error = model["last_error"]
    assert error["checkpoint"] == corrupt.name and error["result"] in ("failed", "rejected")
    assert error["reason"], error
    assert model["history"][-1]["result"] == error["result"]


def test_status_page_is_one_response_with_no_external_assets(
    model_dir: Path, make_server: MakeServer
) -> None:
    r = make_server(model_dir).client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "{{" not in page and 'fetch("/statusz"' in page and "<canvas" in page
    assert " src=" not in page and "stylesheet" not in page
    urls = {page[i : page.index('"', i)] for i in _find_all(page, "http")}
    assert urls <= {"http://www.w3.org/2000/svg"}, urls  # the SVG namespace, never fetched


def _find_all(text: str, word: str) -> list[int]:
    found, i = [], text.find(word)
    while i != -1:
        found.append(i)
        i = text.find(word, i + 1)
    return found
