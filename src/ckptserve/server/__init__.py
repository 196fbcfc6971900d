"""SERVE: the HTTP server (FastAPI + uvicorn) for hot-reloading models. Needs the `server` extra.

The names are imported on first use (PEP 562): the command line reads the settings without
importing FastAPI or torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # looked up once
    return value
