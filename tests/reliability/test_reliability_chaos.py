"""Chaos: a hostile writer mixes torn, truncated, garbage, wrong-shape, NaN, deleted, same-mtime,
symlinked and rolled-back checkpoints into good publishes while 32 connections send /rl/predict.
The server must answer every request with a good model. The long run is `make soak`."""

from __future__ import annotations

from pathlib import Path

import pytest
from relkit import CHAOS, run_chaos

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("swap", "workers"),
    [("sync", 1), ("background", 1), ("sync", 2)],
    ids=["sync", "background", "workers2"],
)
def test_chaos_never_serves_a_bad_model(tmp_path: Path, swap: str, workers: int) -> None:
    """Every response is a 200 from one of the good checkpoints, and the server outlives it all."""
    result = run_chaos(tmp_path, swap=swap, workers=workers, duration=8.0)
    assert result["non_2xx"] == 0, result["non_2xx_samples"]
    assert result["errors"] == {}
    assert result["bad_sha_responses"] == 0
    assert result["sent"] > 1000
    assert result["alive_after"]
    assert set(result["events"]) >= {"good", *CHAOS}, result["events"]
    assert result["reloads"].get("ok", 0) >= 3
    assert result["reloads"].get("failed", 0) + result["reloads"].get("rejected", 0) >= 1
