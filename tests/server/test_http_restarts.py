"""The operator's side over HTTP: forced admin actions, what a restart keeps (pins in the state
directory) and what it serves when the newest checkpoint is bad (the fallback, said by /readyz
and /metrics)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from serverkit import ADMIN_TOKEN, TinyActor, seeded, state, torch_script, wait_for

from ckptserve import publish

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(autouse=True)
def admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKPTSERVE_ADMIN_TOKEN", ADMIN_TOKEN)


class TwoActions(TinyActor):
    """Two actions where the live model gives one."""

    def __init__(self) -> None:
        super().__init__()
        self.mu = torch.nn.Linear(8, 2)


def test_a_reload_with_force_takes_another_action_shape_and_without_it_does_not(
    make_server, model_dir: Path
) -> None:
    """The shape lock refuses a two-action checkpoint; `{"force": true}` takes it (logged)."""
    server = make_server(model_dir)
    assert len(server.client.post("/rl/predict", json=state()).json()["action"]) == 1
    publish(torch_script(TwoActions().eval()), model_dir)
    r = server.client.post("/rl/reload", headers=ADMIN)
    assert r.status_code == 200 and r.json()["attempt"]["result"] == "rejected", r.text
    assert "--action-dim" in r.json()["attempt"]["reason"]
    assert len(server.client.post("/rl/predict", json=state()).json()["action"]) == 1

    r = server.client.post("/rl/reload", json={"force": True}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["attempt"]["result"] == "ok", r.text
    assert len(server.client.post("/rl/predict", json=state()).json()["action"]) == 2
    bad = server.client.post("/rl/reload", json={"force": "yes"}, headers=ADMIN)
    assert bad.status_code == 422, bad.text


def test_a_pin_with_force_takes_another_action_shape(make_server, model_dir: Path) -> None:
    """Pinning a checkpoint of another shape is refused, unless forced."""
    wide = publish(torch_script(TwoActions().eval()), model_dir, keep=20)
    publish(torch_script(seeded(1)), model_dir, keep=20)
    server = make_server(model_dir)
    refused = server.client.post("/rl/pin", json={"checkpoint": wide.name}, headers=ADMIN)
    assert refused.status_code == 422 and "action_dim" in refused.text, refused.text
    forced = server.client.post(
        "/rl/pin", json={"checkpoint": wide.name, "force": True}, headers=ADMIN
    )
    assert forced.status_code == 200, forced.text
    assert len(server.client.post("/rl/predict", json=state()).json()["action"]) == 2


def test_a_pin_outlives_a_restart_through_the_state_directory(
    make_server, model_dir: Path, tmp_path: Path
) -> None:
    """A pin is recorded in --state-dir: a restarted server serves the pinned checkpoint first,
    and publish() never prunes it."""
    state_dir = tmp_path / "state"
    older = publish(torch_script(seeded(1)), model_dir)
    publish(torch_script(seeded(2)), model_dir)
    first = make_server(model_dir, state_dir=str(state_dir))
    assert first.client.post("/rl/pin", json={"checkpoint": older.name}, headers=ADMIN).is_success
    first.stop()

    for seed in range(3, 15):  # retention keeps 10, never the pinned one
        publish(torch_script(seeded(seed)), model_dir, state_dir=state_dir)
    assert older.exists()
    again = make_server(model_dir, state_dir=str(state_dir))
    body = again.client.post("/rl/predict", json=state()).json()
    assert body["checkpoint"] == older.name, body
    assert again.client.get("/rl/status").json()["pinned"].endswith(older.name)

    assert again.client.delete("/rl/pin", headers=ADMIN).is_success
    wait_for(
        lambda: again.client.post("/rl/predict", json=state()).json()["checkpoint"] != older.name,
        20, "the newest checkpoint after unpinning",
    )  # fmt: skip


def test_a_restart_with_a_bad_newest_checkpoint_is_ready_and_says_it_falls_back(
    make_server, model_dir: Path
) -> None:
    """The newest checkpoint is corrupt: a fresh server is ready on the newest good one, and
    /readyz and /metrics say a fallback is served."""
    good = publish(torch_script(seeded(1)), model_dir)
    bad = publish(torch_script(seeded(2)), model_dir)
    bad.write_bytes(b"PK\x03\x04 torn")
    server = make_server(model_dir)
    body = server.client.post("/rl/predict", json=state()).json()
    assert body["checkpoint"] == good.name, body
    ready = server.client.get("/readyz").json()
    assert ready["fallback"] == {"actor": good.name}, ready
    assert 'ckptserve_fallback{model="actor"} 1.0' in server.client.get("/metrics").text
