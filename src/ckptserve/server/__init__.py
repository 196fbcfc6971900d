"""SERVE: the HTTP server (FastAPI + uvicorn) for hot-reloading models. Needs the `server` extra.

The names are imported on first use (PEP 562): the command line reads the settings without
importing FastAPI or torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_names

if TYPE_CHECKING:
    from .app import app_from_env, create_app
    from .settings import ModelSpec, Settings

__all__ = ["ModelSpec", "Settings", "app_from_env", "create_app"]

_WHERE = {
    "ModelSpec": "settings",
    "Settings": "settings",
    "app_from_env": "app",
    "create_app": "app",
}


__getattr__ = lazy_names(__name__, _WHERE)
