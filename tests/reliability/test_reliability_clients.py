"""Slow and large clients: 100 connections that send their body a byte at a time and two 50 MiB
bodies (declared and chunked) do not stop normal traffic, and the body limit holds (413)."""

from __future__ import annotations

from pathlib import Path

import pytest
from relkit import rss_bytes, slow_and_large
from serverkit import ServerProcess, seeded, torch_script

from ckptserve import publish

pytestmark = [pytest.mark.slow, pytest.mark.serial]


def test_slow_and_large_clients_do_not_stop_normal_traffic(tmp_path: Path) -> None:
    """Normal requests keep getting 200s; both 50 MiB bodies get 413 long before they are sent."""
    directory = tmp_path / "models"
    publish(torch_script(seeded(0)), directory)
    with ServerProcess([str(directory), "--log-level", "warning"], log=tmp_path / "log") as server:
        server.wait_ready()
        rss_before = rss_bytes(server.proc.pid)
        result = slow_and_large(server.port, slow=100, duration=6.0)
        rss_after = rss_bytes(server.proc.pid)
        assert server.client.get("/healthz").status_code == 200
    load = result["load"]
    assert result["slow"].get("opened") == 100, result["slow"]
    assert result["slow"].get("still_open", 0) >= 95, result["slow"]
    assert load.statuses == {200: load.sent} and load.sent > 500, load.summary()
    assert load.errors == {}
    for kind in ("declared", "chunked"):
        big = result[kind]
        assert big["status"] == 413, (kind, big)
        assert big["sent"] < 8 * 2**20, (kind, big)  # refused while streaming, not after 50 MiB
    assert rss_after - rss_before < 30 * 2**20
