"""Big models without stalls: a ~100 MB actor replaced every 1.5 s under load (--swap background);
the server's own loop-lag probe (ckptserve_event_loop_lag_seconds) measures the worst stall,
against the worst lag of the same load without reloads in the same run. The figures for every
format are in docs/reliability.md (`make soak`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from relkit import run_stalls

pytestmark = [pytest.mark.slow, pytest.mark.serial]

#: Regression bounds, not the goal (<= 10 ms, met by `make soak` on an idle machine; see
#: docs/reliability.md). CI shares its cores with other jobs, whose noise moves both windows: the
#: reload window may be at most FACTOR times the quiet window's worst lag, or FLOOR_MS, whichever
#: is larger. Reading a 100 MB model on the loop would stall it for 100s of ms and still fail.
FACTOR = 4
FLOOR_MS = 250


@pytest.mark.parametrize("fmt", ["safetensors"])
def test_big_weights_reload_keeps_the_loop_responsive(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, fmt: str
) -> None:
    """Every request is answered while the big model reloads, and the loop stalls no more than it
    does under the same load without reloads (within FACTOR, or FLOOR_MS)."""
    cache = tmp_path_factory.getbasetemp() / "bigcache"
    cache.mkdir(exist_ok=True)
    result = run_stalls(tmp_path, fmt, reloads=3, period=1.5, cache=cache)
    shown = json.dumps(result)  # whole: pytest shortens a dict in the failure message
    assert result["reloads_seen"] == 3, shown
    assert result["non_2xx"] == 0 and result["errors"] == {}, shown
    assert result["ticks"] > 1000, shown  # the probe ran
    bound = max(FLOOR_MS, FACTOR * result["baseline_lag_ms"])
    assert result["worst_lag_ms"] <= bound, f"bound {bound} ms: {shown}"
