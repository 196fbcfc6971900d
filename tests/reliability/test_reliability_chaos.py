"""Chaos: a hostile writer mixes torn, truncated, garbage, wrong-shape, NaN, deleted, same-mtime,
symlinked and rolled-back checkpoints into good publishes while 32 connections send /rl/predict;
in manifest mode, signed publishes with mismatched digests, flipped bits, missing files, broken
JSON, forged or missing signatures, wrong-shape and NaN models, rollbacks, a pinned checkpoint
replaced by an unsigned one, and a rewrite that only --verify-interval finds. The server must
answer every request with a good model. The long run is `make soak`."""

from __future__ import annotations

from pathlib import Path

import pytest
from relkit import CHAOS, MANIFEST_CHAOS, run_chaos, run_manifest_chaos

pytestmark = [pytest.mark.slow, pytest.mark.serial]


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


@pytest.mark.parametrize("swap", ["sync", "background"])
def test_manifest_chaos_serves_only_good_signed_checkpoints(tmp_path: Path, swap: str) -> None:
    """With a signing key and --require-signature, every response is a 200 from a checkpoint a
    valid signed manifest named, and the rewrite that keeps the stat key is still served."""
    result = run_manifest_chaos(tmp_path, swap=swap, duration=5.0, pace=0.1, verify_interval=0.25)
    assert result["non_2xx"] == 0, result["non_2xx_samples"]
    assert result["errors"] == {}
    assert result["bad_sha_responses"] == 0
    assert result["sent"] > 1000
    assert result["alive_after"]
    assert set(result["events"]) >= {"good", *MANIFEST_CHAOS}, result["events"]
    assert result["reloads"].get("ok", 0) >= 3
    # How many bad ones were refused before a newer write superseded them depends on the load.
    assert result["reloads"].get("failed", 0) + result["reloads"].get("rejected", 0) >= 1
    pins = result["pins"]
    assert pins["pinned"] >= 1 and pins["unpinned"] == pins["pinned"], pins
    same = result["same_second"]
    assert same["events"] >= 1
    assert same["key_restored"] == same["events"] == same["served"], same
