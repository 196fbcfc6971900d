"""`ckptserve serve s3://bucket/prefix/`: the server follows a bucket, configured only by the
standard AWS variables, and keeps serving through a new publish."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from serverkit import ServerProcess, seeded, state, torch_script, wait_for

from ckptserve import publish


@pytest.mark.slow
def test_serve_follows_a_bucket_prefix(
    bucket: str, s3env: dict[str, str], tmp_path: Path, s3: Any
) -> None:
    """Ready once the first publish is there, with a 2 s HEAD interval by default; a new
    publish is served without a restart; status names the URL and the store's health."""
    url = f"s3://{bucket}/models/"
    first = publish(torch_script(seeded(1)), url)
    with ServerProcess([url], env=s3env, log=tmp_path / "serve.log") as server:
        server.wait_ready()
        reply = server.client.post("/rl/predict", json=state())
        assert reply.status_code == 200, reply.text
        assert reply.json()["checkpoint"] == first.name
        model = server.client.get("/rl/status").json()
        assert model["model_path"] == f"{url}actor_latest.json", model
        assert model["source"] == "s3"
        assert model["source_health"]["interval"] == 2.0
        second = publish(torch_script(seeded(2)), url)

        def serving_second() -> bool:
            return server.client.post("/rl/predict", json=state()).json()["checkpoint"] == (
                second.name
            )

        wait_for(serving_second, 30, f"{second.name} to be served")
    assert not (tmp_path / "s3:").exists() and not Path("s3:").exists()
