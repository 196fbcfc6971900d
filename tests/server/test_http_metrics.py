"""GET /metrics: the metric names of the issue, values that move, `promtool check metrics`, one
`ckptserve_model_info` series per live version (with several workers too), and the lag."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from serverkit import ServerProcess, seeded, state, torch_script

from ckptserve import ModelRegistry, publish
from ckptserve.server import ModelSpec, Settings
from ckptserve.server.metrics import Metrics, prune_dead_workers
from ckptserve.server.state import Runtime

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
    _promtool_accepts(text.encode())


def _promtool_accepts(text: bytes) -> None:
    promtool = shutil.which("promtool")
    if promtool is not None:
        result = subprocess.run([promtool, "check", "metrics"], input=text,
                                capture_output=True, timeout=30)  # fmt: skip
        assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def _info_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("ckptserve_model_info{")]


def test_model_info_keeps_only_the_live_version(tmp_path: Path) -> None:
    """One process, five publishes, each served: one `ckptserve_model_info` series, the live one."""
    directory = tmp_path / "models"
    publish(torch_script(seeded(0)), directory)
    metrics = Metrics(list)
    registry = ModelRegistry(directory / "actor_latest.json", name="actor")
    try:
        for seed in range(5):
            publish(torch_script(seeded(seed)), directory)
            registry.check()
            metrics.set_live(registry)
        text = metrics.exposition()[0].decode()
        sha = registry.version.sha256 if registry.version else ""
    finally:
        registry.close()
    assert len(_info_lines(text)) == 1 and f'sha256="{sha}"' in text, _info_lines(text)


_WORKER = """
import sys
from ckptserve.server.metrics import Metrics
metrics = Metrics(list, multiprocess_dir=sys.argv[1])
for line in sys.stdin:
    if line.strip() == "close":
        metrics.close()
        print("closed", flush=True)
        continue
    metrics.info.set("actor", *line.split())
    print("set", flush=True)
"""


class _Worker:
    """Another worker process: its own Metrics over the same multiprocess directory."""

    def __init__(self, directory: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(directory)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def tell(self, line: str) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() in ("set", "closed")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


def test_model_info_across_workers_shows_each_live_version_once(tmp_path: Path) -> None:
    """With several workers (prometheus-client's multiprocess mode, where `Gauge.remove` does
    nothing) a scrape shows the versions live workers serve now, each once: a version no worker
    serves any more is gone, and so is a worker that closed or was killed."""
    here = Metrics(list, multiprocess_dir=str(tmp_path))
    other = _Worker(tmp_path)
    try:
        other.tell("actor_1.pt aaa")
        for n in range(2, 22):  # 20 publishes served here
            here.info.set("actor", f"actor_{n}.pt", f"sha{n}")
        scrape = _info_lines(here.exposition()[0].decode())
        assert scrape == [
            'ckptserve_model_info{checkpoint="actor_21.pt",model="actor",sha256="sha21"} 1.0',
            'ckptserve_model_info{checkpoint="actor_1.pt",model="actor",sha256="aaa"} 1.0',
        ], scrape
        _promtool_accepts(here.exposition()[0])
        other.tell("actor_21.pt sha21")  # the other worker catches up: one series
        assert len(_info_lines(here.exposition()[0].decode())) == 1
        other.tell("actor_1.pt aaa")
        other.tell("close")  # a worker that exits takes its versions with it
        assert len(_info_lines(here.exposition()[0].decode())) == 1
        other.tell("actor_1.pt aaa")
    finally:
        other.kill()  # kill -9: its file stays, but a dead worker's versions are not shown
    assert len(_info_lines(here.exposition()[0].decode())) == 1
    assert any(p.name.startswith("info_") for p in tmp_path.iterdir())
    prune_dead_workers(str(tmp_path))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("info_")] == [
        f"info_{os.getpid()}.json"
    ]
    here.close()


def test_lag_in_manifest_mode_counts_checkpoints_not_the_manifest(tmp_path: Path) -> None:
    """Rewriting or touching the manifest publishes nothing newer: lag stays 0. A newer
    checkpoint on disk does count."""
    directory = tmp_path / "models"
    publish(torch_script(seeded(0)), directory)
    runtime = Runtime(Settings(models=[ModelSpec(name="actor", path=str(directory))]))
    runtime.open_models()
    handle = runtime.models["actor"]
    try:
        live = handle.registry.get()
        manifest = directory / "actor_latest.json"
        later = live.version.mtime + 7
        os.utime(manifest, (later, later))
        assert handle.registry.source.kind == "manifest"
        assert handle.staleness(now=later)[1] == 0.0
        newer = directory / "actor_20991231_235959.pt"
        newer.write_bytes(b"not served")
        os.utime(newer, (later, later))
        age, lag = handle.staleness(now=later)
        assert lag == pytest.approx(7.0), (age, lag)
    finally:
        for registry in [h.registry for h in runtime.models.values()]:
            registry.close()
