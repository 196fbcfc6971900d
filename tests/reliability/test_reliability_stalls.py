"""Big models without stalls: a ~100 MB actor replaced every 1.5 s under load (--swap background);
the server's own loop-lag probe (ckptserve_event_loop_lag_seconds) measures the worst stall.
The figures for every format are in docs/reliability.md (`make soak`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from relkit import run_stalls

pytestmark = pytest.mark.slow

#: A regression bound, not the goal (<= 10 ms, met by `make soak` on an idle machine; see
#: docs/reliability.md): CI shares its cores with other jobs, and the bound must hold there too.
BOUND_MS = 50


@pytest.mark.parametrize("fmt", ["safetensors"])
def test_big_weights_reload_keeps_the_loop_responsive(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, fmt: str
) -> None:
    """Every request is answered while the big model reloads; the loop never stalls > 50 ms."""
    cache = tmp_path_factory.getbasetemp() / "bigcache"
    cache.mkdir(exist_ok=True)
    result = run_stalls(tmp_path, fmt, reloads=3, period=1.5, cache=cache)
    assert result["reloads_seen"] == 3, result
    assert result["non_2xx"] == 0 and result["errors"] == {}, result
    assert result["ticks"] > 1000, result  # the probe ran
    assert result["worst_lag_ms"] <= BOUND_MS, result
