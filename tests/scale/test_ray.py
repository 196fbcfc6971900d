"""ckptserve on Ray Serve: the deployment in Serve's local testing mode (fast), and one real local
cluster for the module (2 CPUs, no dashboard, its own temp dir) where two replicas each watch the
source and both serve a new checkpoint. Skipped where `ckptserve[ray]` is not installed."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serverkit import free_port, seeded, state, torch_script

from ckptserve import publish, wait_live
from ckptserve.server import ModelSpec, Settings

with warnings.catch_warnings():  # Ray 2.60 warns about its own pydantic fields on import
    warnings.simplefilter("ignore")
    ray = pytest.importorskip("ray", reason="the Ray tests need ckptserve[ray]")
    from ray import serve

    from ckptserve.ray import DEFAULT_NUM_CPUS, app_builder, build_app

AUTH_TOKEN = Path.home() / ".ray" / "auth_token"


def sha_of(directory: Path) -> str:
    return str(json.loads((directory / "actor_latest.json").read_text())["sha256"])


def settings_for(directory: Path) -> Settings:
    return Settings(models=[ModelSpec(name="actor", path=str(directory))])


def test_deployment_serves_the_registry_in_local_testing_mode(tmp_path: Path) -> None:
    """The deployment builds the same app (its lifespan loads the model) and reports what it
    serves; a new publish is picked up by the replica's own watcher."""
    directory = tmp_path / "models"
    publish(torch_script(seeded(0)), directory, metadata={"step": 1})
    handle = serve.run(build_app(settings_for(directory)), _local_testing_mode=True)

    def served() -> dict[str, Any] | None:
        return handle.replica.remote().result()["models"]["actor"]  # type: ignore[no-any-return]

    deadline = time.monotonic() + 30
    while (live := served()) is None or live["sha256"] != sha_of(directory):
        assert time.monotonic() < deadline, f"not live: {live}"
        time.sleep(0.05)
    assert live["step"] == 1
    publish(torch_script(seeded(1)), directory, metadata={"step": 2})
    while (live := served()) is None or live["sha256"] != sha_of(directory):
        assert time.monotonic() < deadline, f"not swapped: {live}"
        time.sleep(0.05)
    assert live["step"] == 2


def test_app_builder_takes_the_settings_of_a_config_file(tmp_path: Path) -> None:
    """`import_path: ckptserve.ray:app_builder` with `args:`: the settings plus replica options."""
    app = app_builder({"models": [{"name": "actor", "path": str(tmp_path)}], "replicas": 3,
                       "swap": "background"})  # fmt: skip
    assert app is not None
    with pytest.raises(ValueError):
        build_app(settings_for(tmp_path), replicas=0)
    assert 0 < DEFAULT_NUM_CPUS < 1


def test_the_fleet_expects_replicas_still_starting(monkeypatch: pytest.MonkeyPatch) -> None:
    """`expected` counts a replica that is STARTING (so `ckptserve wait` right after start-up
    waits for it) and not one that is STOPPING or STOPPED; None when Serve cannot say."""
    from types import SimpleNamespace

    from ray.serve._private.common import ReplicaState

    import ckptserve.server.rayserve as on_ray

    states = {ReplicaState.RUNNING: 1, ReplicaState.STARTING: 1, ReplicaState.STOPPING: 1,
              ReplicaState.STOPPED: 2}  # fmt: skip
    deployment = SimpleNamespace(replica_states=states)
    status = SimpleNamespace(applications={
        "ckptserve": SimpleNamespace(deployments={on_ray.DEPLOYMENT: deployment})
    })  # fmt: skip
    monkeypatch.setattr(on_ray.serve, "status", lambda: status)
    assert on_ray._expected_replicas("ckptserve") == 2
    assert on_ray._expected_replicas("another") is None


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray (2 CPUs, no dashboard, its own temp dir, auth off) with Serve on a free
    127.0.0.1 port; the URL of its HTTP proxy. Leaves no ~/.ray/auth_token behind."""
    had_token = AUTH_TOKEN.exists()
    old = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    temp = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must fit 107 bytes
    port = free_port()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, log_to_driver=False,
                     _node_ip_address="127.0.0.1")  # fmt: skip
            serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield f"http://127.0.0.1:{port}"
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            serve.shutdown()
            ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        if old is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = old
        if not had_token:
            assert not AUTH_TOKEN.exists(), "the Ray tests left ~/.ray/auth_token behind"


@pytest.mark.slow
def test_two_replicas_both_serve_a_new_checkpoint(cluster: str, tmp_path: Path) -> None:
    """Two replicas, each watching the directory: after a publish both serve the new sha256
    (wait_live sees both through /rl/fleet), and responses name the replica that answered."""
    directory = tmp_path / "models"
    publish(torch_script(seeded(0)), directory)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        serve.run(build_app(settings_for(directory), replicas=2), name="ckptserve",
                  route_prefix="/")  # fmt: skip
    fleet = wait_live(cluster, sha_of(directory), timeout=120)
    assert fleet["scope"] == "ray" and fleet["expected"] == 2, fleet
    names = {r["replica"] for r in fleet["replicas"]}
    assert len(names) == 2, fleet

    publish(torch_script(seeded(1)), directory)
    started = time.monotonic()
    fleet = wait_live(cluster, sha_of(directory), timeout=60)
    converged = time.monotonic() - started
    assert {r["replica"] for r in fleet["replicas"]} == names, fleet
    # 2 x max(check interval, watch interval = 1 s) + a load, with room for a loaded machine.
    assert converged < 30, f"converged in {converged:.1f} s"

    with httpx.Client(base_url=cluster, timeout=10) as client:
        reply = client.post("/rl/predict", json=state())
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-replica"] in names
        assert reply.json()["replica"] == reply.headers["x-replica"]
        assert reply.json()["sha256"] == sha_of(directory)
        assert client.get("/v2/health/ready").status_code == 200
