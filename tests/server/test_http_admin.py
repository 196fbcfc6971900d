"""Admin actions (reload, pin, unpin, force_reload) over real HTTP: the bearer token, pin
confinement to the model's directory, and 403 when no token is configured."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from serverkit import ADMIN_TOKEN, ServerProcess, seeded, state, torch_script

from ckptserve import publish

pytestmark = pytest.mark.slow

RIGHT = {"authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": ADMIN_TOKEN},
        {"authorization": "Basic x"},
    ],
    ids=["missing", "wrong", "no-scheme", "basic"],
)
def test_admin_without_the_right_token_is_401(
    shared_server: tuple[ServerProcess, Path], headers: dict[str, str]
) -> None:
    server, _ = shared_server
    c = server.client
    assert c.post("/rl/reload", headers=headers).status_code == 401
    assert c.post("/rl/pin", json={"checkpoint": "x.pt"}, headers=headers).status_code == 401
    assert c.delete("/rl/pin", headers=headers).status_code == 401
    r = c.post("/rl/predict?force_reload=true", json=state(), headers=headers)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


def test_reload_and_force_reload_with_the_token(shared_server: tuple[ServerProcess, Path]) -> None:
    server, _ = shared_server
    before = server.client.get("/rl/status").json()["load_count"]
    assert server.client.post("/rl/reload", headers=RIGHT).status_code == 200
    r = server.client.post("/rl/predict?force_reload=true", json=state(), headers=RIGHT)
    assert r.status_code == 200
    assert r.json()["load_count"] == before + 2


@pytest.mark.parametrize(
    "name", ["../secret.pt", "/etc/passwd", "sub/../../x.pt", "escape.pt"], ids=str
)
def test_pin_outside_the_directory_is_400(
    shared_server: tuple[ServerProcess, Path], tmp_path: Path, name: str
) -> None:
    """Names that leave the model's directory (.., absolute, a symlink out) are refused, even
    when nothing exists there: confinement is checked before existence."""
    server, directory = shared_server
    if name == "escape.pt":
        outside = tmp_path / "outside.pt"
        outside.write_bytes(b"x")
        link = directory / name
        if not link.is_symlink():
            os.symlink(outside, link)
    loads = server.client.get("/rl/status").json()["load_count"]
    r = server.client.post("/rl/pin", json={"checkpoint": name}, headers=RIGHT)
    assert r.status_code == 400, r.text
    assert server.client.get("/rl/status").json()["load_count"] == loads


def test_pin_missing_checkpoint_is_404(shared_server: tuple[ServerProcess, Path]) -> None:
    server, _ = shared_server
    r = server.client.post(
        "/rl/pin", json={"checkpoint": "actor_19990101_000000.pt"}, headers=RIGHT
    )
    assert r.status_code == 404


def test_pin_bad_body_is_422(shared_server: tuple[ServerProcess, Path]) -> None:
    server, _ = shared_server
    assert server.client.post("/rl/pin", json={"nope": 1}, headers=RIGHT).status_code == 422
    r = server.client.post("/rl/pin", content=b"{", headers=RIGHT)
    assert r.status_code in (400, 422)


def test_pin_serves_an_older_checkpoint_until_unpinned(
    shared_server: tuple[ServerProcess, Path],
) -> None:
    server, directory = shared_server
    old = publish(torch_script(seeded(11)), directory)
    new = publish(torch_script(seeded(12)), directory)
    assert server.client.post("/rl/predict", json=state()).json()["checkpoint"] == new.name
    r = server.client.post("/rl/pin", json={"checkpoint": old.name}, headers=RIGHT)
    assert r.status_code == 200, r.text
    assert r.json()["pinned"].endswith(old.name)
    assert server.client.post("/rl/predict", json=state()).json()["checkpoint"] == old.name
    assert server.client.delete("/rl/pin", headers=RIGHT).status_code == 200
    assert server.client.post("/rl/predict", json=state()).json()["checkpoint"] == new.name
