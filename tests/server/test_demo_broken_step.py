"""`ckptserve demo --broken-step N`: a deliberately broken training step (every action negated)
is published, refused by the guard on the probe states the demo asks about, and shown on the
status page; driven here in-process and in small steps (no learning needed: the broken copy of
any policy with decisive actions flips them all)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from serverkit import InProcessServer

from ckptserve.demo.runner import GUARD_FLAGS, _Watcher, probe_states
from ckptserve.demo.trainer import Published, train

MakeServer = Callable[..., InProcessServer]


def test_a_broken_training_step_is_refused_by_the_guard_and_shown_on_the_status_page(
    tmp_path: Path, make_server: MakeServer
) -> None:
    """The trainer publishes step 0, step 1,000 and a broken copy of step 1,000. Asked about
    the probe states after each publish (as the demo's runner does), the server with the demo's
    guard serves step 1,000 and refuses the broken copy: its actions change sign on every
    probe state. /statusz shows the refusal with its figures; the runner prints it."""
    flag, limit = GUARD_FLAGS
    assert flag == "--max-sign-flips"
    models = tmp_path / "models"
    server = make_server(models, ready=False, max_sign_flips=float(limit))
    answers: list[dict[str, object]] = []

    def ask(record: Published) -> None:
        for _ in range(2):  # each request leaves one of its states in the shadow buffer
            r = server.client.post("/rl/predict", json={"states": probe_states()})
            assert r.status_code == 200, r.text
            answers.append(r.json())

    published = train(models, steps=1_000, publish_every=1_000, seed=1, warmup=1_000,
                      eval_episodes=1, broken_step=1_000, on_publish=ask)  # fmt: skip
    assert [(p.step, p.broken) for p in published] == [(0, False), (1_000, False), (1_000, True)]
    good, broken = published[1], published[2]
    assert answers[-1]["sha256"] == good.sha256  # the broken copy never answered

    doc = server.client.get("/statusz").json()
    model = doc["models"][0]
    assert model["live"]["sha256"] == good.sha256 and model["live"]["step"] == 1_000
    refused = model["history"][-1]
    assert refused["result"] == "rejected" and refused["sha256"] == broken.sha256, refused
    assert "actions change sign on 100.0% of the compared states" in refused["reason"]
    # the two probe states, each left by two requests before the broken copy arrived
    assert refused["divergence"]["sign_flips"] == 1.0 and refused["divergence"]["states"] == 4
    assert model["history"][-2]["divergence"]["sign_flips"] == 0.0  # step 1,000: same weights

    lines: list[str] = []
    watcher = _Watcher(server.url, lines.append)
    status = server.client.get("/rl/status").json()
    watcher._refusals(status)
    watcher._refusals(status)  # printed once
    assert len(lines) == 1 and broken.sha256[:12] in lines[0], lines
    assert "sign flips 100% of 4 live states" in lines[0], lines
