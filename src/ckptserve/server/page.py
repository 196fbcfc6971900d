"""The live status page at `/` and the one JSON document it draws itself from, `GET /statusz`.

The page is `static/index.html` with `static/page.css` and `static/page.js` inlined: one response,
no external assets, nothing to build. Its script fetches `/statusz` once a second.
"""

from __future__ import annotations

import os
import time
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import anyio.to_thread

from .state import ModelHandle, Runtime

__all__ = ["page_html", "status_document"]

_VERSIONS_LISTED = 20


@cache
def page_html() -> str:
    """The status page (read from the package once)."""
    static = files("ckptserve.server") / "static"
    html = (static / "index.html").read_text(encoding="utf-8")
    style = (static / "page.css").read_text(encoding="utf-8")
    script = (static / "page.js").read_text(encoding="utf-8")
    return html.replace("{{style}}", style).replace("{{script}}", script)


async def status_document(runtime: Runtime) -> dict[str, Any]:
    """Everything the page shows, for every model, as answered by this worker process.

    The request and action series are read on the event loop (where they are written); the
    directory listings and stats run in a worker thread.
    """
    now = time.time()
    series = {name: runtime.live.snapshot(name, now) for name in runtime.models}
    models = await anyio.to_thread.run_sync(_models, runtime, now)
    for model in models:
        model.update(series[model["name"]])
    settings = runtime.settings
    return {
        "pid": os.getpid(),
        "workers": settings.workers,
        "now": now,
        "started_at": runtime.started_at,
        "not_ready": runtime.not_ready(),
        "prefix": settings.prefix,
        "admin_enabled": settings.admin_token is not None,
        "window_seconds": runtime.live.window,
        "models": models,
    }


def _models(runtime: Runtime, now: float) -> list[dict[str, Any]]:
    return [_model(runtime, handle, now) for handle in list(runtime.models.values())]


def _model(runtime: Runtime, handle: ModelHandle, now: float) -> dict[str, Any]:
    status = handle.registry.status()
    age, lag = handle.staleness(now)
    version = status["version"]
    live = None
    if version is not None:
        live = {
            "checkpoint": version["checkpoint"],
            "sha256": version["sha256"],
            "format": version["format"],
            "step": version["metadata"].get("step"),
            "mtime": version["mtime"],
            "size": version["size"],
            "loaded_at": version["loaded_at"],
            "load_seconds": version["load_seconds"],
            "age_seconds": age,
        }
    base = f"{runtime.settings.prefix}/{handle.name}"
    versions = handle.versions()[:_VERSIONS_LISTED]
    return {
        "name": handle.name,
        "default": handle.name == runtime.default,
        "routes": {"status": f"{base}/status", "reload": f"{base}/reload", "pin": f"{base}/pin"},
        "watching": status["model_path"],
        "source": status["source"],
        "swap": status["swap"],
        "live": live,
        "lag_seconds": lag,
        "pinned": Path(status["pinned"]).name if status["pinned"] else None,
        "file_missing": status["file_missing"],
        "loading": status["loading"],
        "load_count": status["load_count"],
        "last_error": status["last_error"],
        "history": status["history"],
        "versions": [
            {"checkpoint": v["checkpoint"], "mtime": v["mtime"], "live": v["live"]}
            for v in versions
        ],
    }
