"""`GET {prefix}/fleet`: the replicas this one can see and the version each serves (fleet.py)."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from starlette.requests import Request

from ..fleet import FleetSource, local_fleet
from ..state import Runtime
from .common import runtime_of

__all__ = ["fleet"]


def _view(runtime: Runtime, source: FleetSource | None) -> dict[str, Any]:
    view = source.view(runtime) if source is not None else local_fleet(runtime)
    return view.to_dict()


async def fleet(request: Request) -> dict[str, Any]:
    """Every replica this one can see (`scope`: process, workers or ray), and the checkpoint,
    sha256, step and time live of each model on each; `ckptserve wait` polls it."""
    source: FleetSource | None = getattr(request.app.state, "fleet", None)
    return await anyio.to_thread.run_sync(_view, runtime_of(request), source)
