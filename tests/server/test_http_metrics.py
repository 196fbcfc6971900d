"""GET /metrics: the metric names of the issue, values that move, and `promtool check metrics`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from serverkit import ServerProcess, state

pytestmark = pytest.mark.slow

NAMES = [
    "ckptserve_requests_total",
    "ckptserve_request_duration_seconds_bucket",
    "ckptserve_reloads_total",
    "ckptserve_load_duration_seconds_bucket",
    "ckptserve_model_info",
    "ckptserve_checkpoint_age_seconds",
    "ckptserve_checkpoint_lag_seconds",
]


def _scrape(server: ServerProcess) -> str:
    server.client.post("/rl/predict", json=state())
    server.client.post("/rl/predict", json={"state": [1]})
    r = server.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return r.text


def test_metric_names(shared_server: tuple[ServerProcess, Path]) -> None:
    server, _ = shared_server
    text = _scrape(server)
    for name in NAMES:
        assert f"\n{name}" in text, name
    assert 'ckptserve_requests_total{code="200",model="actor"}' in text
    assert 'ckptserve_requests_total{code="422",model="actor"}' in text
    assert 'ckptserve_reloads_total{model="actor",result="ok"}' in text
    sha = server.client.get("/rl/status").json()["version"]["sha256"]
    info = [line for line in text.splitlines() if line.startswith("ckptserve_model_info{")]
    live = [line for line in info if line.endswith(" 1.0")]
    assert len(live) == 1 and f'sha256="{sha}"' in live[0]


def test_promtool_check_metrics(shared_server: tuple[ServerProcess, Path]) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`; .ci/run installs it)")
    server, _ = shared_server
    text = _scrape(server)
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
