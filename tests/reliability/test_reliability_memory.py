"""Memory: reloading the benchmark actor over and over in one server does not leak. The 1,000-reload
run with its plot is `make soak` (docs/reliability.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from relkit import run_reloads

pytestmark = [pytest.mark.slow, pytest.mark.serial]

RELOADS = 200
#: 50 MB per 1,000 reloads (the soak's requirement), scaled to this run.
BOUND = 50 * 2**20 * RELOADS // 1000


def test_reloads_do_not_grow_rss(tmp_path: Path) -> None:
    """200 reloads of the benchmark actor grow the server's RSS by at most 10 MB."""
    result = run_reloads(tmp_path, RELOADS, timeout=100)
    assert result["reloads_ok"] >= RELOADS
    assert result["growth"] <= BOUND, f"RSS grew {result['growth'] / 2**20:.1f} MB"
