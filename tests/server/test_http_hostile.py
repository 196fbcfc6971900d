"""What someone who can write the model directory but has no key can do to a running server:
never more than a failed load, reported; never a 500, a hang or a model that was not published."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from serverkit import seeded, state, torch_script, wait_for

from ckptserve import publish

KEY = "hostile-test-key"

HOSTILE_MANIFESTS = {
    "non-ascii-signature": lambda m: json.dumps({**m, "signature": "\u00e9" * 64}).encode(),
    "nested-100k": lambda m: b"[" * 100_000 + b"]" * 100_000,
    "5000-digit-size": lambda m: (
        json.dumps(m).encode().replace(b'"size": ', b'"size": ' + b"9" * 5000 + b', "was": ')
    ),
    "not-json": lambda m: b"\xff\xfe\x00 garbage",
}


@pytest.fixture
def signed_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "models"
    publish(torch_script(seeded(0)), directory, signing_key=KEY)
    return directory


@pytest.mark.parametrize("kind", sorted(HOSTILE_MANIFESTS))
def test_a_manifest_that_does_not_parse_is_a_failed_load_never_a_500(
    make_server, signed_dir, monkeypatch, kind
):
    """The live model keeps answering every request; the failure is in status, once."""
    monkeypatch.setenv("CKPTSERVE_SIGNING_KEY", KEY)
    server = make_server(signed_dir, verify_interval=0.05)
    sha = server.client.post("/rl/predict", json=state()).json()["sha256"]
    manifest = signed_dir / "actor_latest.json"
    raw = HOSTILE_MANIFESTS[kind](json.loads(manifest.read_bytes()))
    tmp = manifest.with_name(".hostile")
    tmp.write_bytes(raw)
    os.replace(tmp, manifest)

    def failure_recorded() -> bool:
        r = server.client.post("/rl/predict", json=state())
        assert r.status_code == 200 and r.json()["sha256"] == sha, (r.status_code, r.text)
        return server.client.get("/rl/status").json()["last_error"] is not None

    wait_for(failure_recorded, 20, "the hostile manifest to be looked at")
    error = server.client.get("/rl/status").json()["last_error"]
    assert "\n" not in error["reason"] and error["result"] == "failed", error


def test_dev_zero_as_the_manifest_is_refused_without_reading_it(
    make_server, signed_dir, monkeypatch
):
    """/dev/zero where the manifest was: refused as not a regular file, memory untouched."""
    monkeypatch.setenv("CKPTSERVE_SIGNING_KEY", KEY)
    server = make_server(signed_dir)
    sha = server.client.post("/rl/predict", json=state()).json()["sha256"]
    manifest = signed_dir / "actor_latest.json"
    manifest.unlink()
    manifest.symlink_to("/dev/zero")
    wait_for(lambda: server.client.get("/rl/status").json()["last_error"] is not None, 20, "a look")
    assert "not a regular file" in server.client.get("/rl/status").json()["last_error"]["reason"]
    r = server.client.post("/rl/predict", json=state())
    assert r.status_code == 200 and r.json()["sha256"] == sha


@pytest.mark.parametrize("swap", ["sync", "background"])
def test_a_fifo_named_by_a_signed_manifest_never_hangs_the_server(
    make_server, signed_dir, monkeypatch, swap
):
    """The checkpoint a signed manifest names replaced by a FIFO (and the same manifest written
    again): requests keep being answered, and a later good signed publish loads."""
    monkeypatch.setenv("CKPTSERVE_SIGNING_KEY", KEY)
    server = make_server(signed_dir, swap=swap)
    assert server.client.post("/rl/predict", json=state()).status_code == 200
    manifest = signed_dir / "actor_latest.json"
    named = signed_dir / json.loads(manifest.read_bytes())["checkpoint"]
    named.unlink()
    os.mkfifo(named)
    raw = manifest.read_bytes()
    tmp = manifest.with_name(".again")
    tmp.write_bytes(raw)
    os.replace(tmp, manifest)  # a new inode: the server looks again
    for _ in range(20):
        assert server.client.post("/rl/predict", json=state()).status_code == 200
    new = publish(torch_script(seeded(1)), signed_dir, signing_key=KEY)
    wait_for(
        lambda: server.client.post("/rl/predict", json=state()).json()["checkpoint"] == new.name,
        20,
        "the good publish after the FIFO",
    )
